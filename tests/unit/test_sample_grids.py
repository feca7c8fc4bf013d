"""The diffusion models' sample grids (rules sample_ldm_grid, sample_dkim_grid), drawn from the saved model
directories: the template reports of GRID_FINDINGS with seeds seed, seed + 1, …; the DKIM grid's base rows are the
LDM grid's rows, its "+ DKIM" rows differ once the adapter learned something; each grid is one tracked job."""

import json

import pytest
import torch
from PIL import Image
from test_dkim import _train, make_base_ldm
from test_ldm import ldm_cfg, shared_tracking_json

from cxrgen.models.diffusion import LatentSampler, SamplerSettings, decode_latents, load_unet, make_train_scheduler
from cxrgen.pipeline import CxrPipeline
from cxrgen.prompts import GRID_FINDINGS, finding_prompt
from cxrgen.stages.sample_dkim_grid import dkim_grid_images, sample_dkim_grid
from cxrgen.stages.sample_ldm_grid import ldm_grid_images, sample_ldm_grid

GRID = {"columns": 2, "steps": 2, "eta": 1.0, "guidance_scale": 4.0}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A saved text-conditioned LDM and a DKIM adapter trained 3 steps on it."""
    root = tmp_path_factory.mktemp("grids")
    ldm, latents, clip_dir = make_base_ldm(root)
    _train(root, ldm, latents, "grid", clip_dir=clip_dir)
    return ldm, root / "dkim_grid", root


def test_ldm_grid_is_the_template_reports_times_the_seeds(trained, tmp_path_factory):
    ldm, _, root = trained
    tracking = shared_tracking_json(tmp_path_factory)
    png, meta = root / "grids" / "ldm" / "cheff.png", root / "grids" / "ldm" / "cheff.json"
    payload = sample_ldm_grid(ldm_dir=ldm, grid_cfg=GRID, seed=5, out_png=png, out_json=meta,
                              tracking_json=tracking, job_name="sample_ldm_grid:cheff")
    assert json.loads(meta.read_text()) == payload and not png.with_suffix(".png.tmp").exists()
    assert payload["seeds"] == [5, 6] and payload["sample_grid"] == GRID and payload["seconds"] > 0
    assert list(payload["rows"]) == list(GRID_FINDINGS) and payload["conditioning"] == "text"
    assert Image.open(png).size[1] > Image.open(png).size[0] * 0.8  # 4 rows of 2 columns (+ row labels)

    # what the trainer drew at the end of training, in one batch as it did (batch composition moves the float
    # rounding): the saved (EMA) UNet, row i = finding i's template report, column c = seed 5 + c
    from cxrgen.models.autoencoder import load_autoencoder
    from cxrgen.models.clip import load_text_encoder
    from cxrgen.pipeline import read_pipeline_json

    info = read_pipeline_json(ldm)
    sampler = LatentSampler(load_unet(ldm / "unet"), make_train_scheduler(ldm_cfg()["schedule"]).config,
                            load_text_encoder(info["text_encoder"]).encode)
    settings = SamplerSettings(steps=2, eta=1.0, guidance_scale=4.0)
    prompts = [finding_prompt(finding, 0) for finding in GRID_FINDINGS for _ in range(2)]
    expected = decode_latents(load_autoencoder(info["autoencoder"]), sampler.sample(prompts, [5, 6] * 4, settings))
    images, names, _ = ldm_grid_images(CxrPipeline.from_dir(ldm, use_sr=False), GRID, 5)
    assert names == list(GRID_FINDINGS) and torch.equal(images, expected)
    other = ldm_grid_images(CxrPipeline.from_dir(ldm, use_sr=False), {**GRID, "steps": 3}, 5)[0]
    assert not torch.equal(other, images)  # the settings reach the sampler

    from mlflow.tracking import MlflowClient

    info = json.loads(tracking.read_text())
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    [run] = client.search_runs([info["experiment_id"]], filter_string="tags.`snakemake.job` = 'sample_ldm_grid:cheff'")
    assert run.info.status == "FINISHED" and run.info.run_id == payload["mlflow_run_id"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"cheff.png", "cheff.json"}


def test_dkim_grid_pairs_the_base_rows_with_the_adapter_rows(trained, tmp_path):
    ldm, dkim, _ = trained
    payload = sample_dkim_grid(dkim_dir=dkim, ldm_dir=ldm, grid_cfg=GRID, seed=5, out_png=tmp_path / "g.png",
                               out_json=tmp_path / "g.json")
    assert payload["rows"] == [name for f in GRID_FINDINGS for name in (f, f"{f} + DKIM")]
    assert (tmp_path / "g.png").is_file() and json.loads((tmp_path / "g.json").read_text())["seeds"] == [5, 6]
    images, names = dkim_grid_images(CxrPipeline.from_dir(ldm, dkim_dir=dkim, use_sr=False), GRID, 5)
    base, _, _ = ldm_grid_images(CxrPipeline.from_dir(ldm, use_sr=False), GRID, 5)
    for k, finding in enumerate(GRID_FINDINGS):
        without, with_dkim = images[4 * k:4 * k + 2], images[4 * k + 2:4 * k + 4]
        assert names[2 * k] == finding and torch.equal(without, base[2 * k:2 * k + 2])  # the LDM grid's row
        assert not torch.equal(with_dkim, without), finding  # the trained adapter changes the picture
