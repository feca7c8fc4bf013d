"""LNFS (rule filter_noise) on toy latent sets with known outliers: detection quality, determinism, completeness."""

import copy
import json

import numpy as np
import pandas as pd
import pytest

from cxrgen.config import load_schema, validate_config
from cxrgen.data.latents import INDEX_FILE, MEAN_FILE, META_FILE, STD_FILE
from cxrgen.data.lnfs import kept_image_ids
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.stages.filter_noise import INDEX_COLUMNS, evaluate, filter_noise, lnfs_scores, noise_truth


def lnfs_cfg(**overrides) -> dict:
    # toy-sized settings: the toy normal data span a 4-d linear manifold per mode, so a 6-component PCA covers it
    cfg = validate_config({"sources": {"nih": {}}, "lnfs": {"features": {"pca_dims": 16}, "kmeans": {"clusters": 4},
                                                             "manifold": {"components": 6}}})["lnfs"]
    for key, value in overrides.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    return cfg


def toy_latents(n_normal=400, n_noisy=24, shape=(3, 6, 6), seed=0):
    """Normal latents: two modes (think PA and lateral) on a 4-d linear manifold plus small noise; noisy latents:
    several kinds off that manifold (negated, a foreign structure, near-constant, saturated blocks)."""
    rng = np.random.default_rng(seed)
    dim = int(np.prod(shape))
    basis = rng.normal(size=(4, dim))
    centres = rng.normal(size=(2, dim)) * 2.0
    mode = rng.integers(0, 2, n_normal)
    normal = centres[mode] + rng.normal(size=(n_normal, 4)) @ basis + 0.1 * rng.normal(size=(n_normal, dim))
    foreign = rng.normal(size=(4, dim))
    q = n_noisy // 4
    spikes = normal[:q].copy()
    spikes[:, rng.choice(dim, size=dim // 8, replace=False)] += 6.0
    noisy = np.concatenate([
        -normal[q:2 * q] * 1.5,  # "inverted"
        rng.normal(size=(q, 4)) @ foreign * 2.0,  # "other anatomy"
        np.full((q, dim), 3.0) + 0.05 * rng.normal(size=(q, dim)),  # "blank"
        spikes,  # "burned-in text": a block of latent positions saturated
        rng.normal(size=(n_noisy - 4 * q, dim)) * 3.0,  # unstructured
    ])
    x = np.concatenate([normal, noisy]).astype(np.float32)
    is_noisy = np.r_[np.zeros(n_normal, bool), np.ones(len(noisy), bool)]
    order = rng.permutation(len(x))
    return x[order].reshape(len(x), *shape), is_noisy[order]


def write_cache(path, latents, splits=None):
    """A latent cache in the layout of rule cache_latents (rows in a shuffled order, as a real index may be)."""
    path.mkdir(parents=True)
    n = len(latents)
    np.save(path / MEAN_FILE, latents.astype(np.float32))
    np.save(path / STD_FILE, np.full_like(latents, 0.1, dtype=np.float32))
    rows = pd.DataFrame({"image_id": [f"img-{i:04d}" for i in range(n)],
                         "split": splits if splits is not None else ["train"] * n, "row": np.arange(n),
                         "source": np.where(np.arange(n) % 2, "nih", "mimic"), "view": "PA",
                         "report_findings": None, "report_impression": None, "text": ""})
    for col in LABEL_COLUMNS:
        rows[col] = np.nan
    rows.sample(frac=1, random_state=1).to_parquet(path / INDEX_FILE, index=False)
    (path / META_FILE).write_text(json.dumps({"autoencoder_sha256": "x", "scaling_factor": 1.0,
                                              "shape": list(latents.shape), "resolution": 32}))
    return rows


def test_finds_known_outliers_with_high_precision_and_recall():
    x, truth = toy_latents()
    out = lnfs_scores(x.reshape(len(x), -1), np.ones(len(x), bool), lnfs_cfg(), seed=0)
    removed = out["removed"].to_numpy()
    precision = (removed & truth).sum() / removed.sum()
    recall = (removed & truth).sum() / truth.sum()
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    assert set(out["decided_by"]) <= {"kmeans", "manifold", "discriminator"}
    assert out.loc[out["confident"] == "noisy", "removed"].all()
    assert not out.loc[out["confident"] == "normal", "removed"].any()
    # the manifold error alone separates the toy noise (AUROC near 1)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(truth, out["manifold_error"]) > 0.95


def test_clean_data_loses_few_images_and_no_discriminator_without_noise():
    x, truth = toy_latents(n_noisy=0)
    out = lnfs_scores(x.reshape(len(x), -1), np.ones(len(x), bool), lnfs_cfg(), seed=0)
    assert out["removed"].mean() < 0.03
    cfg = lnfs_cfg(manifold={"noisy_z": 1e9, "normal_z": 1e9})  # nothing can be confidently noisy
    out = lnfs_scores(x.reshape(len(x), -1), np.ones(len(x), bool), cfg, seed=0)
    assert out["discriminator_score"].isna().all() and not out["removed"].any()


def test_deterministic_and_seeded():
    x, _ = toy_latents()
    flat = x.reshape(len(x), -1)
    fit = np.ones(len(x), bool)
    a = lnfs_scores(flat, fit, lnfs_cfg(), seed=3)
    b = lnfs_scores(flat.copy(), fit, lnfs_cfg(), seed=3)
    pd.testing.assert_frame_equal(a, b)


def test_mlp_discriminator_also_works():
    x, truth = toy_latents()
    out = lnfs_scores(x.reshape(len(x), -1), np.ones(len(x), bool), lnfs_cfg(discriminator={"kind": "mlp"}), seed=0)
    removed = out["removed"].to_numpy()
    assert (removed & truth).sum() / truth.sum() >= 0.9


def test_fit_splits_only_fit_but_every_row_is_scored():
    x, truth = toy_latents()
    flat = x.reshape(len(x), -1)
    fit = np.arange(len(x)) % 5 != 0  # 80 % fit, 20 % held out
    out = lnfs_scores(flat, fit, lnfs_cfg(), seed=0)
    assert len(out) == len(x) and out["manifold_error"].notna().all()
    held = ~fit
    assert (out["removed"].to_numpy() & truth & held).sum() >= 0.8 * (truth & held).sum()


def test_filter_noise_rule_output_is_complete(tmp_path):
    x, truth = toy_latents()
    rows = write_cache(tmp_path / "latents", x, splits=np.where(np.arange(len(x)) % 7 == 0, "test", "train"))
    noisy_ids = rows.loc[truth, "image_id"]
    # ground truth as the demo writes it, joined through a manifest (rel_path -> image_id)
    manifest = pd.DataFrame({"source": rows["source"], "rel_path": "files/" + rows["image_id"] + ".dcm",
                             "image_id": rows["image_id"]})
    manifest.to_parquet(tmp_path / "manifest.parquet")
    truth_frame = manifest[manifest["image_id"].isin(noisy_ids)].assign(kind="blank")[["source", "rel_path", "kind"]]
    truth_frame.to_parquet(tmp_path / "truth.parquet")
    out = tmp_path / "out"
    summary = filter_noise(latents_dir=tmp_path / "latents", out_index=out / "filtered_index.parquet",
                           out_markdown=out / "lnfs.md", out_figure=out / "lnfs.png", cfg=lnfs_cfg(), seed=0,
                           truth_paths=[tmp_path / "truth.parquet"], manifest_paths=[tmp_path / "manifest.parquet"])
    filtered = pd.read_parquet(out / "filtered_index.parquet")
    assert list(filtered.columns) == list(INDEX_COLUMNS)
    assert sorted(filtered["image_id"]) == sorted(rows["image_id"]) and filtered["image_id"].is_unique
    assert (filtered["kept"] == ~filtered["removed"]).all()
    assert kept_image_ids(out / "filtered_index.parquet") == set(filtered.loc[filtered["kept"], "image_id"])
    assert summary["evaluation"]["noisy"] == truth.sum()
    assert summary["evaluation"]["recall"] >= 0.9 and summary["evaluation"]["precision"] >= 0.9
    assert (out / "lnfs.png").stat().st_size > 1000
    text = (out / "lnfs.md").read_text()
    assert "precision" in text and "lnfs.png" in text
    # the scores follow the images, not the row order of the cache index
    by_id = filtered.set_index("image_id")
    assert by_id.loc[noisy_ids, "removed"].mean() >= 0.9


def test_noise_truth_join_and_evaluate():
    manifest = pd.DataFrame({"source": ["nih"] * 4, "rel_path": ["a", "b", "c", "d"], "image_id": list("ABCD")})
    truth = pd.DataFrame({"source": ["nih", "nih", "nih"], "rel_path": ["b", "d", "zz"], "kind": ["blank", "rotated",
                                                                                                 "blank"]})
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        manifest.to_parquet(Path(tmp) / "m.parquet")
        truth.to_parquet(Path(tmp) / "t.parquet")
        joined = noise_truth([Path(tmp) / "t.parquet"], [Path(tmp) / "m.parquet"])
    assert sorted(joined["image_id"]) == ["B", "D"]  # "zz" never reached the manifest
    filtered = pd.DataFrame({"image_id": list("ABCD"), "removed": [True, True, False, False],
                             "decided_by": ["manifold", "discriminator", "kmeans", "kmeans"],
                             "kmeans_distance": [1, 2, 0, 3.0], "manifold_error": [5, 4, 1, 2.0],
                             "manifold_z": [5, 4, 1, 2.0],
                             "discriminator_score": [0.9, 0.8, 0.1, 0.2]})
    ev = evaluate(filtered, joined)
    assert ev["precision"] == 0.5 and ev["recall"] == 0.5
    assert ev["recall_by_kind"] == {"blank": {"noisy": 1, "removed": 1}, "rotated": {"noisy": 1, "removed": 0}}
    assert ev["by_stage"]["discriminator"] == {"removed": 1, "removed_noisy": 1}


def test_schema_defaults_and_errors_name_the_key():
    schema = load_schema()
    assert "lnfs" in schema["properties"] and "labeler" in schema["properties"]
    bad = copy.deepcopy({"sources": {"nih": {}}, "lnfs": {"discriminator": {"kind": "svm"}}})
    with pytest.raises(ValueError, match="lnfs.discriminator.kind"):
        validate_config(bad)
