"""The MedCoDi-M report diffusion model (rule train_report_diffusion): multi-prompt subset draws and condition
combination (paper §2.2), the stage (checkpoint, resume, multi/single prompting) and per-seed deterministic sampling."""

import numpy as np
import pytest
import torch
from medcodi_text_helpers import EMBED_DIM, medcodi_cfg, write_embeddings, write_study_table
from safetensors.torch import load_file

from cxrgen.medcodi.text_diffusion import (
    ReportDenoiser,
    combine_prompt_embeddings,
    condition_options,
    draw_view_subset,
    pick_conditions,
    read_manifest,
    sample_reports,
    view_subsets,
)
from cxrgen.stages.train_report_diffusion import train_report_diffusion
from cxrgen.stages.train_text_vae import train_text_vae
from cxrgen.train.loop import Interrupted


def test_subset_draw_covers_every_non_empty_subset_uniformly():
    assert view_subsets(("frontal", "lateral")) == [("frontal",), ("lateral",), ("frontal", "lateral")]
    assert view_subsets(("a", "b", "c"))[-1] == ("a", "b", "c") and len(view_subsets(("a", "b", "c"))) == 7
    draws = [draw_view_subset(("frontal", "lateral"), u) for u in torch.rand(30000, generator=torch.Generator()
                                                                                     .manual_seed(0)).tolist()]
    frequencies = {s: draws.count(s) / len(draws) for s in view_subsets(("frontal", "lateral"))}
    assert set(draws) == set(frequencies)
    assert all(abs(f - 1 / 3) < 0.015 for f in frequencies.values()), frequencies
    assert draw_view_subset(("lateral",), 0.99) == ("lateral",)
    with pytest.raises(ValueError):
        draw_view_subset((), 0.5)


def test_condition_is_the_mean_of_the_normalised_present_views():
    frontal, lateral = np.array([3.0, 0.0, 4.0]), np.array([0.0, 2.0, 0.0])
    combined = combine_prompt_embeddings(np.stack([frontal, lateral]))
    assert torch.allclose(combined, torch.tensor([0.3, 0.5, 0.4]))
    with pytest.raises(ValueError):
        combine_prompt_embeddings(np.stack([frontal, np.full(3, np.nan)]))
    nan = np.full(3, np.nan)
    embeddings = {"frontal": np.stack([frontal, nan, frontal, nan]), "lateral": np.stack([lateral, lateral, nan, nan])}
    options, counts = condition_options(embeddings, "multi")
    assert counts.tolist() == [3, 1, 1, 0]
    assert torch.allclose(options[0], torch.tensor([[0.6, 0.0, 0.8], [0.0, 1.0, 0.0], [0.3, 0.5, 0.4]]))
    assert torch.allclose(options[1, 0], torch.tensor([0.0, 1.0, 0.0]))  # lateral alone where frontal is missing
    # single prompting (the MedCoDi ablation): frontal only; a study without it cannot be prompted
    single, single_counts = condition_options(embeddings, "single")
    assert single_counts.tolist() == [1, 0, 1, 0] and torch.allclose(single[0, 0], torch.tensor([0.6, 0.0, 0.8]))
    # the batched pick follows the uniform draw; rows without options get the null (zero) condition
    picked = pick_conditions(options, counts, torch.tensor([0.7, 0.1, 0.5, 0.5]))
    assert torch.allclose(picked[0], options[0, 2]) and torch.allclose(picked[1], options[1, 0])
    assert torch.equal(picked[3], torch.zeros(3))
    with pytest.raises(ValueError, match="prompting"):
        condition_options(embeddings, "both")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_diffusion")
    table = write_study_table(root / "studies.parquet")
    write_embeddings(root / "embeddings.npz", table)
    train_text_vae(studies=root / "studies.parquet", cfg=medcodi_cfg("text_vae", max_steps=2), seed=0,
                   out_dir=root / "vae", state_dir=root / "vae_state")
    return {"studies": root / "studies.parquet", "embeddings": root / "embeddings.npz", "vae_dir": root / "vae"}, root


def _weights(directory):
    return load_file(directory / "denoiser" / "diffusion_pytorch_model.safetensors")


def test_stage_resume_equals_uninterrupted(inputs, tmp_path):
    kwargs, _ = inputs
    cfg = medcodi_cfg("report_diffusion", cfg_dropout=0.5)
    whole = train_report_diffusion(**kwargs, cfg=cfg, prompting="multi", seed=1, out_dir=tmp_path / "whole",
                                   state_dir=tmp_path / "s1")
    with pytest.raises(Interrupted):
        train_report_diffusion(**kwargs, cfg=cfg, prompting="multi", seed=1, out_dir=tmp_path / "split",
                               state_dir=tmp_path / "s2", stop_after_steps=2)
    resumed = train_report_diffusion(**kwargs, cfg=cfg, prompting="multi", seed=1, out_dir=tmp_path / "split",
                                     state_dir=tmp_path / "s2")
    assert resumed["resumed_from"] == 2 and whole["steps"] == resumed["steps"] == 4
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # 12 train studies minus the report-less study 11 and study 9, which has no view to prompt with
    assert whole["n_train"] == 10 and whole["val"]["n"] == 4 and set(whole["val"]) >= {"bleu1", "bleu4"}
    manifest = read_manifest(tmp_path / "whole")
    assert manifest["prompting"] == "multi" and manifest["cond_dim"] == EMBED_DIM and manifest["latent_scale"] > 0
    assert (tmp_path / "whole" / manifest["vae_dir"]).resolve() == kwargs["vae_dir"].resolve()


@pytest.fixture(scope="module")
def single_model(inputs):
    kwargs, root = inputs
    cfg = medcodi_cfg("report_diffusion", schedule={"timesteps": 100, "prediction_type": "v_prediction"})
    metrics = train_report_diffusion(**kwargs, cfg=cfg, prompting="single", seed=0,
                                     out_dir=root / "single", state_dir=root / "single_state")
    return root / "single", metrics


def test_single_prompting_trains_on_studies_with_a_frontal_view(single_model):
    model_dir, metrics = single_model
    # train studies 2, 9 and 16 lack a frontal view and study 11 a report: 8 of the 12
    assert metrics["n_train"] == 8 and read_manifest(model_dir)["prompt_views"] == ["frontal"]
    assert isinstance(ReportDenoiser.from_pretrained(model_dir / "denoiser"), ReportDenoiser)
    assert metrics["val"]["n"] == 4 and 0.0 <= metrics["val"]["bleu1"] <= 1.0


def test_sampling_is_deterministic_per_seed(single_model, inputs):
    model_dir, _ = single_model
    kwargs, _ = inputs
    conditions = torch.randn(3, EMBED_DIM, generator=torch.Generator().manual_seed(0))
    conditions[2] = float("nan")  # unconditional row
    first = sample_reports(model_dir, kwargs["vae_dir"], conditions, seeds=[5, 6, 7], steps=3, guidance=3.0)
    again = sample_reports(model_dir, None, conditions, seeds=[5, 6, 7], steps=3, guidance=3.0)
    assert first == again and len(first) == 3 and all(isinstance(r, str) for r in first)
    # a sample depends on its own seed and condition, not on its batch neighbours or the batch size
    reordered = sample_reports(model_dir, None, conditions[[1, 0]], seeds=[6, 5], steps=3, guidance=3.0,
                               batch_size=1)
    assert reordered == [first[1], first[0]]


def test_sampled_latents_follow_the_seed(single_model):
    from cxrgen.medcodi.text_diffusion import load_report_diffusion, sample_latents

    model_dir, _ = single_model
    denoiser, scheduler_config, _ = load_report_diffusion(model_dir)
    conditions = torch.ones(2, EMBED_DIM) / EMBED_DIM**0.5
    a = sample_latents(denoiser, scheduler_config, conditions, [1, 1], steps=3, guidance=2.0)
    b = sample_latents(denoiser, scheduler_config, conditions, [1, 2], steps=3, guidance=2.0, eta=1.0)
    c = sample_latents(denoiser, scheduler_config, conditions, [1, 2], steps=3, guidance=2.0, eta=1.0)
    assert torch.equal(a[0], a[1]) and torch.equal(b, c) and not torch.equal(b[0], b[1])
    with pytest.raises(ValueError, match="seeds"):
        sample_latents(denoiser, scheduler_config, conditions, [1], steps=3, guidance=2.0)
