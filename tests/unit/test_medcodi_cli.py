"""``cxrgen generate`` MedCoDi-M (XGeM) any-to-any directions on a tiny results layout (untrained tiny prompt encoders,
view LDMs and autoencoder; a report VAE + report diffusion model trained for a few steps): inputs read like the
store's films, the combined condition, the files written, determinism, and the errors."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from medcodi_ldm_helpers import DIM, medcodi_ldm_cfg, write_medcodi_inputs
from medcodi_text_helpers import EMBED_DIM, medcodi_cfg, write_embeddings, write_study_table
from PIL import Image
from test_ldm import make_autoencoder, make_clip

from cxrgen.cli import main
from cxrgen.data.latents import load_latents
from cxrgen.medcodi import prompting
from cxrgen.medcodi.anytoany import MODALITIES, PROMPTINGS, Sampling, condition, generate_any, read_prompt_image
from cxrgen.medcodi.ldm import load_embeddings, manifest, save_view_ldm, view_trainer, view_training_data
from cxrgen.medcodi.prompt_encoders import PAIRS, load_prompt_encoders, save_manifest
from cxrgen.stages.train_report_diffusion import train_report_diffusion
from cxrgen.stages.train_text_vae import train_text_vae
from cxrgen.train.loop import seed_everything

RES = 32
ROOT = Path(__file__).resolve().parents[2]
assert DIM == EMBED_DIM  # one embedding width for the view LDMs and the report model


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """``results/`` with medcodi/prompt_encoders, medcodi/ldm/{frontal,lateral}-multi (no single-prompt LDMs),
    medcodi/text_vae and medcodi/report_diffusion/multi, and the autoencoder the LDM manifests point at."""
    root = tmp_path_factory.mktemp("anytoany")
    results, medcodi = root / "results", root / "results" / "medcodi"
    ae_dir = make_autoencoder(results / "models" / "autoencoder", resolution=RES)
    make_clip(medcodi / "prompt_encoders", resolution=RES)
    save_manifest(medcodi / "prompt_encoders", resolution=RES, embed_dim=DIM, pairs=PAIRS)
    inputs = write_medcodi_inputs(root / "ldm_inputs")
    for view in ("frontal", "lateral"):
        data = view_training_data(pd.read_parquet(inputs["studies"]), load_embeddings(inputs["embeddings"]),
                                  load_latents(inputs["latents"]), view=view, prompting="multi", splits=["train"],
                                  with_std=False)
        seed_everything(0)
        out = medcodi / "ldm" / f"{view}-multi"
        out.mkdir(parents=True)
        info = manifest(view=view, prompting="multi", dim=DIM, latent_shape=[3, 8, 8], scaling_factor=0.9,
                        ae_dir=ae_dir, out_dir=out)
        save_view_ldm(view_trainer(medcodi_ldm_cfg(), data, view=view, prompting="multi"), out, info)
    table = write_study_table(root / "text" / "studies.parquet")
    write_embeddings(root / "text" / "embeddings.npz", table)
    train_text_vae(studies=root / "text" / "studies.parquet", cfg=medcodi_cfg("text_vae", max_steps=2), seed=0,
                   out_dir=medcodi / "text_vae", state_dir=root / "state" / "vae")
    train_report_diffusion(studies=root / "text" / "studies.parquet", embeddings=root / "text" / "embeddings.npz",
                           vae_dir=medcodi / "text_vae", cfg=medcodi_cfg("report_diffusion", max_steps=2),
                           prompting="multi", seed=0, out_dir=medcodi / "report_diffusion" / "multi",
                           state_dir=root / "state" / "report")
    rng = np.random.default_rng(0)
    film = (rng.random((48, 40)) * 65535).astype(np.uint16)  # portrait: padded to a square like the store's
    Image.fromarray(film).save(root / "frontal.png")
    return results, root / "frontal.png"


def test_input_films_are_read_like_the_store(tmp_path):
    square = (np.random.default_rng(1).random((RES, RES)) * 65535).astype(np.uint16)
    Image.fromarray(square).save(tmp_path / "square.png")
    image = read_prompt_image(tmp_path / "square.png", RES)
    assert image.shape == (1, RES, RES)
    assert torch.allclose(image[0], torch.from_numpy(square / 65535.0 * 2 - 1).float(), atol=1e-4)
    wide = np.full((32, 64), 40000, np.uint16)
    wide[:, :32] = 20000
    Image.fromarray(wide).save(tmp_path / "wide.png")
    padded = read_prompt_image(tmp_path / "wide.png", RES, "pad")[0]
    assert torch.all(padded[:8] == -1) and torch.all(padded[-8:] == -1)  # black bars above and below (pad)
    assert read_prompt_image(tmp_path / "wide.png", RES, "crop")[0].min() > -1  # crop keeps only content


def test_condition_is_the_mean_of_the_normalised_input_embeddings(results):
    root, film = results
    encoders = load_prompt_encoders(root / "medcodi" / "prompt_encoders")
    image = read_prompt_image(film, encoders.resolution)
    report = "small left pleural effusion."
    both = condition(encoders, {"frontal": image, "report": report})
    expected = (encoders.encode_images(image[None]) + encoders.encode_texts([report])) / 2
    assert both.shape == (1, DIM) and torch.allclose(both, expected, atol=1e-6)
    only_image = condition(encoders, {"frontal": image})
    assert torch.allclose(only_image.norm(), torch.tensor(1.0), atol=1e-5)


def test_generate_lateral_and_report_from_a_frontal_film(results, tmp_path):
    root, film = results
    argv = ["generate", "--from-frontal", str(film), "--to", "lateral,report", "--results", str(root), "-n", "2",
            "--seed", "3", "--steps", "2", "--out"]
    assert main([*argv, str(tmp_path / "a")]) == 0
    written = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert written == ["lateral_seed3.png", "lateral_seed4.png", "report_seed3.txt", "report_seed4.txt"]
    lateral = np.asarray(Image.open(tmp_path / "a" / "lateral_seed3.png"))
    assert lateral.shape == (RES, RES) and lateral.dtype == np.uint16
    assert not np.array_equal(lateral, np.asarray(Image.open(tmp_path / "a" / "lateral_seed4.png")))
    assert main([*argv, str(tmp_path / "b")]) == 0  # same seeds, same files
    for name in written:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    text = generate_any(root, "multi", frontal=film, outputs=["report"], seeds=[3], sampling=Sampling(steps=2))
    assert text["report"] == [(tmp_path / "a" / "report_seed3.txt").read_text().rstrip("\n")]


def test_a_report_file_is_the_same_prompt_as_its_text(results, tmp_path):
    root, film = results
    report_file = tmp_path / "impression.txt"
    report_file.write_text("small left pleural effusion.\n")
    run = {"outputs": ["lateral"], "seeds": [5], "sampling": Sampling(steps=2)}
    from_file = generate_any(root, "multi", frontal=film, report=str(report_file), **run)["lateral"][0]
    from_text = generate_any(root, "multi", frontal=film, report="small left pleural effusion.", **run)["lateral"][0]
    frontal_only = generate_any(root, "multi", frontal=film, **run)["lateral"][0]
    assert from_file.shape == (1, RES, RES) and torch.equal(from_file, from_text)
    assert not torch.allclose(from_file, frontal_only, atol=1e-3)  # the report changes the condition


def test_errors_name_the_missing_rule_and_refuse_an_input_as_output(results, tmp_path):
    root, film = results
    assert MODALITIES == prompting.MODALITIES and PROMPTINGS == prompting.PROMPTINGS
    with pytest.raises(SystemExit, match="give --model"):
        main(["generate", "--out", str(tmp_path / "grid.png")])
    with pytest.raises(SystemExit, match=r"ldm/lateral-single is missing.*rule train_medcodi_ldm"):
        main(["generate", "--from-frontal", str(film), "--to", "lateral", "--prompting", "single",
              "--results", str(root), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="rule train_prompt_encoders"):
        main(["generate", "--from-report", "x", "--to", "frontal", "--results", str(tmp_path), "--out",
              str(tmp_path)])
    with pytest.raises(SystemExit, match="frontal is both an input and a requested output"):
        main(["generate", "--from-frontal", str(film), "--to", "frontal,report", "--results", str(root),
              "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="choose one or more of frontal, lateral, report"):
        main(["generate", "--from-frontal", str(film), "--to", "ct", "--out", str(tmp_path)])
    assert not any((tmp_path / n).exists() for n in ("frontal_seed0.png", "report_seed0.txt"))


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "cxrgen.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_cli_help_and_error_in_a_subprocess(tmp_path):
    helped = _cli("generate", "--help")
    assert helped.returncode == 0
    for flag in ("--from-frontal", "--from-lateral", "--from-report", "--to", "--results", "--prompting"):
        assert flag in helped.stdout
    refused = _cli("generate", "--from-report", "effusion", "--to", "report", "--out", str(tmp_path))
    assert refused.returncode != 0 and "report is both an input and a requested output" in refused.stderr
