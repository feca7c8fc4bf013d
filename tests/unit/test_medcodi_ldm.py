"""MedCoDi-M / XGeM view LDMs (issue 12): multi-prompt subset sampling, condition combination, CFG dropout, the
training stage (checkpoint + resume, multi vs single) and ``sample_view``, on the synthetic contract inputs of
:mod:`medcodi_ldm_helpers`."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from medcodi_ldm_helpers import DIM, medcodi_ldm_cfg, write_medcodi_inputs
from safetensors.torch import load_file

from cxrgen.data.latents import load_latents
from cxrgen.medcodi.ldm import load_embeddings, sample_view, save_view_ldm, view_trainer, view_training_data
from cxrgen.medcodi.prompting import (
    MultiPromptConditioner,
    combine,
    nonempty_subsets,
    prompt_modalities,
)
from cxrgen.stages.train_medcodi_ldm import train_medcodi_ldm
from cxrgen.train.loop import Interrupted, seed_everything


def _unit(rng, n, dim=DIM):
    v = rng.normal(size=(n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _draw_all(conditioner, rows, draws, seed=0, batch=500):
    """Subset masks and drops of ``draws`` global batches of the items ``rows``."""
    generator = torch.Generator().manual_seed(seed)
    subsets, drops = [], []
    for _ in range(draws):
        drawn = conditioner.draw(rows, len(rows), generator)
        subsets.append(drawn.subsets)
        drops.append(drawn.drop)
    return torch.cat(subsets), torch.cat(drops)


def test_prompt_modalities_and_subsets():
    assert prompt_modalities("frontal", "multi") == ("lateral", "report")
    assert prompt_modalities("lateral", "multi") == ("frontal", "report")
    assert prompt_modalities("lateral", "single") == ("report",)
    assert nonempty_subsets(2) == [(0,), (1,), (0, 1)]
    assert len(nonempty_subsets(3)) == 7
    with pytest.raises(ValueError, match="allowed"):
        prompt_modalities("oblique", "multi")


def test_uniform_subsets_of_the_available_modalities_only():
    rng = np.random.default_rng(0)
    emb = np.stack([_unit(rng, 3), _unit(rng, 3)], axis=1)  # [3 items, 2 modalities (lateral, report), D]
    emb[1, 0] = np.nan  # item 1: no lateral -> report only
    emb[2, 1] = np.nan  # item 2: no report -> lateral only
    conditioner = MultiPromptConditioner(emb, ("lateral", "report"), "multi", cfg_dropout=0.0)
    rows = [0, 1, 2] * 1000
    subsets, _ = _draw_all(conditioner, rows, 10)  # 10,000 draws per item
    per_item = subsets.view(10, 1000, 3, 2).permute(2, 0, 1, 3).reshape(3, -1, 2)
    n = per_item.shape[1]
    codes = per_item[..., 0].long() + 2 * per_item[..., 1].long()  # 1 lateral, 2 report, 3 both
    share = {c: float((codes[0] == c).float().mean()) for c in (1, 2, 3)}
    tolerance = 4 * math.sqrt(1 / 3 * 2 / 3 / n)  # 4 binomial standard deviations
    assert all(abs(s - 1 / 3) < tolerance for s in share.values()), share
    assert bool((codes[0] > 0).all())  # never the empty subset
    assert bool((codes[1] == 2).all()) and bool((codes[2] == 1).all())  # fall back to what the study has


def test_three_modalities_cover_all_seven_subsets_uniformly():
    rng = np.random.default_rng(1)
    emb = np.stack([_unit(rng, 1) for _ in range(3)], axis=1)
    conditioner = MultiPromptConditioner(emb, ("frontal", "lateral", "report"), "multi", cfg_dropout=0.0)
    subsets, _ = _draw_all(conditioner, [0] * 7000, 3)
    codes = (subsets.long() * torch.tensor([1, 2, 4])).sum(1)
    counts = torch.bincount(codes, minlength=8).float() / len(codes)
    assert counts[0] == 0
    assert torch.allclose(counts[1:], torch.full((7,), 1 / 7), atol=4 * math.sqrt(1 / 7 * 6 / 7 / len(codes)))


def test_combination_is_the_mean_of_normalised_embeddings_not_renormalised():
    e = torch.zeros(1, 2, 4)
    e[0, 0, 0], e[0, 1, 1] = 3.0, 0.5  # not unit length: normalised first
    both = combine(e, torch.tensor([[True, True]]))
    assert torch.allclose(both, torch.tensor([[0.5, 0.5, 0.0, 0.0]]))
    assert float(both.norm()) == pytest.approx(math.sqrt(0.5))  # shorter than 1: no re-normalisation
    assert torch.allclose(combine(e, torch.tensor([[False, True]])), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    e[0, 0] = float("nan")  # an absent modality's NaN never leaks into the condition
    assert torch.allclose(combine(e, torch.tensor([[False, True]])), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))


def test_cfg_dropout_share_and_zero_null_condition():
    rng = np.random.default_rng(2)
    emb = np.stack([_unit(rng, 4), _unit(rng, 4)], axis=1)
    conditioner = MultiPromptConditioner(emb, ("lateral", "report"), "multi", cfg_dropout=0.1)
    generator = torch.Generator().manual_seed(3)
    drops, dropped_rows, kept_rows = [], [], []
    for _ in range(50):
        drawn = conditioner.draw([0, 1, 2, 3] * 100, 400, generator)
        drops.append(drawn.drop)
        dropped_rows.append(drawn.conditions[drawn.drop])
        kept_rows.append(drawn.conditions[~drawn.drop])
    share = float(torch.cat(drops).float().mean())
    assert abs(share - 0.1) < 4 * math.sqrt(0.09 / 20000)
    assert bool((torch.cat(dropped_rows) == 0).all())
    assert bool((torch.cat(kept_rows).norm(dim=1) > 0.5).all())  # a real condition is never the null one


def test_multi_and_single_differ_only_in_the_conditions_drawn():
    rng = np.random.default_rng(4)
    emb = np.stack([_unit(rng, 8), _unit(rng, 8)], axis=1)
    multi = MultiPromptConditioner(emb, ("lateral", "report"), "multi", cfg_dropout=0.3)
    single = MultiPromptConditioner(emb, ("lateral", "report"), "single", cfg_dropout=0.3)
    g_multi, g_single = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    rows = list(range(8)) * 4
    a, b = multi.draw(rows, len(rows), g_multi), single.draw(rows, len(rows), g_single)
    assert torch.equal(a.drop, b.drop)  # same CFG drops
    assert bool(b.subsets[:, 1].all()) and not bool(b.subsets[:, 0].any())  # single: the report only
    report_only = a.subsets[:, 1] & ~a.subsets[:, 0]
    assert 0 < int(report_only.sum()) < len(rows)
    assert torch.equal(a.conditions[report_only], b.conditions[report_only])
    assert not torch.equal(a.conditions[~report_only & ~a.drop], b.conditions[~report_only & ~a.drop])
    # the generators advanced identically: t, noise and every later draw of the trainer are the same
    assert torch.equal(g_multi.get_state(), g_single.get_state())


def test_global_batch_draws_split_over_ranks():
    """Two ranks, each keeping its half of draws made for the global batch, get the single-process conditions."""
    rng = np.random.default_rng(6)
    emb = np.stack([_unit(rng, 8), _unit(rng, 8)], axis=1)
    emb[3, 0] = np.nan
    conditioner = MultiPromptConditioner(emb, ("lateral", "report"), "multi", cfg_dropout=0.5)
    rows = [5, 3, 0, 7, 1, 2, 6, 4]
    whole = conditioner.draw(rows, 8, torch.Generator().manual_seed(7))
    parts = []
    for rank in range(2):
        def mine(drawn, rank=rank):
            return drawn[rank * 4:(rank + 1) * 4]
        parts.append(conditioner.draw(rows[rank * 4:(rank + 1) * 4], 8, torch.Generator().manual_seed(7), mine))
    assert torch.equal(torch.cat([p.conditions for p in parts]), whole.conditions)
    assert torch.equal(torch.cat([p.subsets for p in parts]), whole.subsets)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_medcodi_inputs(tmp_path_factory.mktemp("medcodi_ldm"))


def _data(inputs, view="frontal", prompting="multi", splits=("train",)):
    return view_training_data(pd.read_parquet(inputs["studies"]), load_embeddings(inputs["embeddings"]),
                              load_latents(inputs["latents"]), view=view, prompting=prompting, splits=list(splits),
                              with_std=True)


def test_study_selection_and_fallback(inputs):
    frontal = _data(inputs)
    # train studies with a frontal image: 0 1 4 8 9 12 13 16 20 21; study 21 has no other modality -> skipped
    assert frontal.study_pids == [f"mimic-s{i:03d}" for i in (0, 1, 4, 8, 9, 12, 13, 16, 20)]
    assert frontal.skipped_no_prompt == 1
    lateral_missing = [frontal.study_pids.index(f"mimic-s{i:03d}") for i in (8, 20)]
    assert np.isnan(frontal.embeddings[lateral_missing, 0]).all()  # no lateral view: report only
    conditioner = MultiPromptConditioner(frontal.embeddings, ("lateral", "report"), "multi", 0.0)
    subsets, _ = _draw_all(conditioner, lateral_missing * 50, 4)
    assert bool(subsets[:, 1].all()) and not bool(subsets[:, 0].any())
    lateral = _data(inputs, view="lateral", prompting="single")
    assert all(np.isfinite(lateral.embeddings[:, 0]).all(axis=1))  # single: every item has a report


def _train(inputs, root, name, prompting="multi", **kwargs):
    return train_medcodi_ldm(studies=inputs["studies"], embeddings=inputs["embeddings"], latents_dir=inputs["latents"],
                             ae_dir=inputs["ae"], cfg=medcodi_ldm_cfg(cfg_dropout=0.5), view="frontal",
                             prompting=prompting, seed=0, out_dir=root / name, state_dir=root / f"{name}_state",
                             **kwargs)


def _weights(model_dir):
    return load_file(model_dir / "unet" / "diffusion_pytorch_model.safetensors")


def test_two_steps_checkpoint_resume_equals_uninterrupted(inputs, tmp_path):
    with pytest.raises(Interrupted):
        _train(inputs, tmp_path, "resumed", stop_after_steps=1)
    assert (tmp_path / "resumed_state" / "ckpt-00000001.pt").is_file() and not (tmp_path / "resumed").exists()
    resumed = _train(inputs, tmp_path, "resumed")
    whole = _train(inputs, tmp_path, "whole")
    assert resumed["resumed_from"] == 1 and whole["resumed_from"] is None and whole["steps"] == 2
    a, b = _weights(tmp_path / "resumed"), _weights(tmp_path / "whole")
    assert all(torch.equal(a[k], b[k]) for k in b)
    info = json.loads((tmp_path / "whole" / "medcodi_ldm.json").read_text())
    assert info["embedding_dim"] == DIM and info["prompt_modalities"] == ["lateral", "report"]
    assert info["latent_shape"] == [3, 8, 8] and info["null_condition"] == "zero"
    metrics = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert metrics["n_train"] == 9 and math.isfinite(metrics["val_loss_ema"])
    single = _train(inputs, tmp_path, "single", prompting="single")
    assert single["n_train"] == 9  # same images; only the conditions differ
    c = _weights(tmp_path / "single")
    assert any(not torch.equal(b[k], c[k]) for k in b)


def test_sample_view_is_deterministic_per_seed_and_batch_independent(inputs, tmp_path):
    data = _data(inputs)
    seed_everything(0)
    trainer = view_trainer(medcodi_ldm_cfg(), data, view="frontal", prompting="multi")
    save_view_ldm(trainer, tmp_path, {"embedding_dim": DIM})
    conditions = torch.from_numpy(np.nan_to_num(data.embeddings[:3, 1]))
    run = dict(steps=4, guidance=7.5)
    first = sample_view(tmp_path, conditions, [11, 12, 13], **run)
    again = sample_view(tmp_path, conditions, [11, 12, 13], **run)
    one_by_one = sample_view(tmp_path, conditions, [11, 12, 13], batch_size=1, **run)
    assert first.shape == (3, 3, 8, 8) and torch.equal(first, again)
    # batch size only changes float summation order; guidance 7.5 amplifies it (measured max 3e-5 on latents ~15)
    assert torch.allclose(first, one_by_one, atol=2e-4)
    reordered = sample_view(tmp_path, conditions[[2, 0]], [13, 11], **run)
    assert torch.allclose(reordered, first[[2, 0]], atol=2e-4)
    assert not torch.allclose(sample_view(tmp_path, conditions, [21, 22, 23], **run), first, atol=1e-1)
    assert not torch.allclose(sample_view(tmp_path, conditions, [11, 12, 13], steps=4, guidance=1.0), first,
                              atol=1e-2)
