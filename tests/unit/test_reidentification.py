"""Patient re-identification: pair sampling, the Siamese verifier's training (resume, learning), the train_reid stage
and the audit of generated images (hand-made stores whose images of one patient share a pattern)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from evaluate_helpers import narrowed

from cxrgen.config import validate_config
from cxrgen.evaluate import reidentification as reid
from cxrgen.evaluate.classifier import with_store_root
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.store import ShardWriter, shard_path
from cxrgen.train.loop import Interrupted, latest_checkpoint

RES = 32


def tiny_cfg(**overrides) -> dict:
    section = {"model": {"block": "basic", "layers": [1, 1], "base_width": 8}, "batch_size": 16, "lr": 3e-3,
               "max_steps": 3, "eval_every": 0, "eval_pairs": 40, "checkpoint_every": 1, "log_every": 1,
               "augment": {"rotation_deg": 0.0, "translate": 0.0, "scale": 0.0, "brightness": 0.0,
                           "contrast": 0.0}, **overrides}
    return validate_config({"sources": {"nih": {}}, "reid": section})["reid"]


def _pattern(patient: int) -> np.ndarray:
    """A patient's 'anatomy': a smooth random field of its own (upsampled 4×4 noise)."""
    coarse = np.random.default_rng(1000 + patient).random((4, 4))
    return np.kron(coarse, np.ones((RES // 4, RES // 4)))


def write_images(root: Path, records: list[dict], images: list[np.ndarray], source: str) -> pd.DataFrame:
    """``records`` (index columns) with their images in one shard; writes and returns ``index.parquet``."""
    rows = []
    with ShardWriter(shard_path(root, RES, source, 0)) as writer:
        for record, image in zip(records, images, strict=True):
            offset, nbytes, digest = writer.append((np.clip(image, 0, 1) * 65535).astype(np.uint16))
            rows.append({**record, "source": source, "shard": 0, "view": "PA", f"offset_{RES}": offset,
                         f"nbytes_{RES}": nbytes, f"sha256_{RES}": digest})
    index = pd.DataFrame(rows)
    for column in LABEL_COLUMNS:
        index[column] = np.nan
    index.to_parquet(root / "index.parquet", index=False)
    return index


def patient_store(root: Path, patients: dict[str, list[int]], seed: int = 0) -> pd.DataFrame:
    """Images ``pattern(patient) + noise`` for split -> patient numbers, two or three images per patient (ids
    ``<split>-p<patient>-<k>``)."""
    rng = np.random.default_rng(seed)
    records, images = [], []
    for split, numbers in patients.items():
        for p in numbers:
            for k in range(2 + p % 2):
                records.append({"image_id": f"{split}-p{p:03d}-{k}", "patient_pid": f"pid{p:03d}", "split": split})
                images.append(0.2 + 0.6 * _pattern(p) + rng.normal(0, 0.05, (RES, RES)))
    return write_images(root, records, images, "real")


SPLITS = {"train": list(range(0, 24)), "val": list(range(100, 108)), "test": list(range(200, 208))}


# --------------------------------------------------------------------------------------------------- pairs
def test_pairs_are_balanced_valid_and_deterministic():
    patients = np.array(["a", "a", "b", "c", "c", "c", "d"])
    pairs = reid.patient_pairs(patients, 101, seed=3)
    same = pairs[:, 2] == 1
    assert same.sum() == 50 and (~same).sum() == 51
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert (patients[pairs[same, 0]] == patients[pairs[same, 1]]).all()
    assert (patients[pairs[~same, 0]] != patients[pairs[~same, 1]]).all()
    assert {patients[i] for i in pairs[same, 0]} == {"a", "c"}  # "b" and "d" have one image
    assert np.array_equal(pairs, reid.patient_pairs(patients, 101, seed=3))
    assert not np.array_equal(pairs, reid.patient_pairs(patients, 101, seed=4))
    with pytest.raises(ValueError, match="two or more images"):
        reid.patient_pairs(np.array(["a", "b"]), 4, 0)


def test_stage_pairs_never_cross_splits(tmp_path):
    from cxrgen.stages.train_reid import split_rows

    index = patient_store(tmp_path, SPLITS)
    for split in ("train", "val", "test"):
        rows = split_rows(index, split, tiny_cfg(), tmp_path)
        pairs = reid.patient_pairs(rows["patient_pid"], 200, 0)
        assert set(rows.iloc[pairs[:, :2].ravel()]["split"]) == {split}
    train_patients = set(split_rows(index, "train", tiny_cfg(), tmp_path)["patient_pid"])
    assert not train_patients & set(split_rows(index, "val", tiny_cfg(), tmp_path)["patient_pid"])


def test_operating_threshold_eer_and_fixed_fpr():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.8, 0.9, 0.95])
    eer = reid.operating_threshold(labels, scores, "eer", 0.0)
    assert eer["fpr"] == pytest.approx(0.25) and eer["tpr"] == pytest.approx(0.75)
    strict = reid.operating_threshold(labels, scores, "fpr", 0.0)
    assert strict["fpr"] == 0.0 and strict["threshold"] > 0.7
    assert reid.rates_at(labels, scores, strict["threshold"]) == {"fpr": 0.0, "tpr": 0.75}


# --------------------------------------------------------------------------------------------------- training
def _train(tmp_path, name, cfg=None, stop=None, seed=0):
    index = patient_store(tmp_path / "store", SPLITS) if not (tmp_path / "store/index.parquet").exists() else \
        pd.read_parquet(tmp_path / "store/index.parquet")
    train = with_store_root(index[index["split"] == "train"].reset_index(drop=True), tmp_path / "store")
    val = with_store_root(index[index["split"] == "val"].reset_index(drop=True), tmp_path / "store")
    return reid.train_verifier(train, cfg=cfg or tiny_cfg(eval_every=2), resolution=RES, seed=seed,
                               state_dir=tmp_path / f"state_{name}", val_rows=val, stop_after_steps=stop)


def test_interrupted_and_resumed_training_equals_uninterrupted(tmp_path):
    straight, _ = _train(tmp_path, "a")
    assert straight.steps == 3 and [e["step"] for e in straight.evals] == [2, 3]
    with pytest.raises(Interrupted):
        _train(tmp_path, "b", stop=2)
    assert latest_checkpoint(tmp_path / "state_b").name == "ckpt-00000002.pt"
    resumed, result = _train(tmp_path, "b")
    assert result.resumed_from == 2 and resumed.selected_step == straight.selected_step
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]


def test_verifier_learns_patient_identity_above_chance(tmp_path):
    cfg = tiny_cfg(max_steps=30, eval_every=0, checkpoint_every=100, log_every=10)
    trained, _ = _train(tmp_path, "learn", cfg=cfg)
    index = pd.read_parquet(tmp_path / "store/index.parquet")
    test = with_store_root(index[index["split"] == "test"].reset_index(drop=True), tmp_path / "store")
    pairs = reid.patient_pairs(test["patient_pid"], 200, 7)
    scores = reid.score_pairs(trained.model, reid.PairImages(test, RES), pairs)
    from cxrgen.evaluate.metrics import auroc

    assert auroc(pairs[:, 2], scores) > 0.75  # unseen patients: chance is 0.5


def test_train_reid_stage_publishes_model_and_metrics(tmp_path, monkeypatch):
    from cxrgen.stages.init_tracking import init_tracking
    from cxrgen.stages.train_reid import train_reid

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    patient_store(tmp_path / "store", SPLITS)
    tracking = tmp_path / "run.json"
    init_tracking(tracking, "test", tmp_path)  # MLflow run of the job in a local file store
    metrics = train_reid(index_path=tmp_path / "store/index.parquet", store_root=tmp_path / "store", resolution=RES,
                         cfg=narrowed(tiny_cfg(), "train_reid"), seed=0, state_dir=tmp_path / "state",
                         out_dir=tmp_path / "out", tracking_json=tracking)
    assert (tmp_path / "out/metrics.json").is_file() and (tmp_path / "out/loss.png").is_file()
    model = reid.load_verifier(tmp_path / "out/verifier")
    assert model.config.resolution == RES and model.embedding_dim == 16
    assert metrics["pair_counts"]["train"] == {"images": 60, "patients": 24, "patients_with_2plus_images": 24}
    assert metrics["verification"]["test"]["pairs"] == 40 and 0 <= metrics["threshold"]["threshold"] <= 1


# --------------------------------------------------------------------------------------------------- audit
def generated_store(root: Path, prompts: list[tuple[str, int]], seeds: list[int]) -> pd.DataFrame:
    """One generated image per (prompt, seed): prompt = (source image id, patient whose pattern it shows) with noise
    drawn from the seed."""
    records, images = [], []
    for k, (source_id, patient) in enumerate(prompts):
        for s in seeds:
            rng = np.random.default_rng([s, k])
            records.append({"image_id": f"syn-{k}-s{s}", "prompt_id": f"p{k}", "set": "train_twins",
                            "source_image_id": source_id, "seed": s, "split": "synthetic"})
            images.append(0.2 + 0.6 * _pattern(patient) + rng.normal(0, 0.05, (RES, RES)))
    return write_images(root, records, images, "synthetic")


def test_audit_scores_copies_above_novel_images_and_nn_per_seed(tmp_path):
    trained, _ = _train(tmp_path, "audit", cfg=tiny_cfg(max_steps=60, eval_every=0, checkpoint_every=100))
    index = pd.read_parquet(tmp_path / "store/index.parquet")
    train = with_store_root(index[index["split"] == "train"].reset_index(drop=True), tmp_path / "store")
    # prompts 0-3 reproduce their source patient's anatomy, prompts 4-7 show patients the verifier never saw
    prompts = [(f"train-p{p:03d}-0", p) for p in range(4)] + [(f"train-p{p:03d}-0", 300 + p) for p in range(4, 8)]
    prompts.append(("", 400))  # a template prompt: no source image, still gets nearest neighbours
    gen = with_store_root(generated_store(tmp_path / "gen", prompts, seeds=[0, 1, 2]), tmp_path / "gen")
    audit = reid.audit_generated(trained.model, gen, train, pixel_resolution=16)
    assert len(audit) == 27 and audit["score"].isna().sum() == 3
    copies = audit["image_id"].str.match(r"syn-[0-3]-")
    from cxrgen.evaluate.metrics import auroc

    scored = audit[audit["score"].notna()]
    assert auroc(scored["image_id"].str.match(r"syn-[0-3]-"), scored["score"]) > 0.8
    assert audit.loc[copies, "nn_pixel_same_patient"].all() and not audit.loc[~copies, "nn_pixel_same_patient"].any()
    # nearest neighbours are computed per generated image: the seeds of one prompt get different distances
    for _, group in audit.groupby("source_image_id"):
        assert group["nn_pixel"].nunique() == len(group) and group["nn_feature"].nunique() == len(group)

    from cxrgen.stages.evaluate_reidentification import summarise_audit

    summary = summarise_audit(audit, threshold=0.5, resamples=20, confidence=0.9, seed=0)
    assert summary["generated"]["n_scored"] == 24 and summary["prompts"]["n"] == 8
    assert summary["prompts"]["seeds_per_prompt"] == 3
    per_prompt = reid.prompt_summary(audit[audit["score"].notna()], 0.5)
    first = per_prompt[per_prompt["source_image_id"] == "train-p000-0"].iloc[0]
    scores = audit.loc[audit["source_image_id"] == "train-p000-0", "score"]
    assert first["mean"] == pytest.approx(scores.mean()) and first["max"] == pytest.approx(scores.max())
    assert first["above_threshold"] == int((scores >= 0.5).sum())
    assert summary["generated"]["count_above_threshold"] == int((audit["score"] >= 0.5).sum())


def test_evaluate_reidentification_stage_writes_outputs(tmp_path, monkeypatch):
    from cxrgen.stages.evaluate_reidentification import evaluate_reidentification
    from cxrgen.stages.train_reid import train_reid

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    patient_store(tmp_path / "store", SPLITS)
    train_reid(index_path=tmp_path / "store/index.parquet", store_root=tmp_path / "store", resolution=RES,
               cfg=narrowed(tiny_cfg(), "train_reid"), seed=0, state_dir=tmp_path / "state", out_dir=tmp_path / "out",
               tracking_json=None)
    generated_store(tmp_path / "gen", [("train-p000-0", 0), ("train-p001-1", 301)], seeds=[0, 1])
    out = tmp_path / "eval"
    payload = evaluate_reidentification(
        index_path=tmp_path / "store/index.parquet", store_root=tmp_path / "store", generated_dir=tmp_path / "gen",
        model_dir=tmp_path / "out", cfg=narrowed(tiny_cfg(audit={"max_train": 10, "resamples": 10}),
                                                 "evaluate_reidentification"),
        seed=0, variant="cheff", out_json=out / "reid.json", out_table=out / "reid.parquet",
        out_html=out / "reid.html", out_histogram=out / "reid.png", out_markdown=out / "md/reid.md")
    for name in ("reid.json", "reid.parquet", "reid.html", "reid.png", "md/reid.md"):
        assert (out / name).is_file(), name
    table = pd.read_parquet(out / "reid.parquet")
    assert len(table) == 4 and table["score"].notna().all()
    assert payload["generated"]["n_scored"] == 4 and "Re-identification audit" in (out / "md/reid.md").read_text()


def audit_table(with_probe: bool = True) -> pd.DataFrame:
    """A hand-made audit table: 3 reid_probe prompts x 4 seeds, 5 train twins (one seed each), 2 template images
    (no source image, NaN score)."""
    probe_scores = {"a": [0.1, 0.2, 0.3, 0.9], "b": [0.2, 0.2, 0.4, 0.3], "c": [0.6, 0.1, 0.1, 0.1]}
    rows = [{"image_id": f"syn-probe-{p}-s{s}", "set": "reid_probe", "source_image_id": p, "seed": s, "score": v}
            for p, values in probe_scores.items() for s, v in enumerate(values)] if with_probe else []
    rows += [{"image_id": f"syn-twin-{k}", "set": "train_twins", "source_image_id": f"t{k}", "seed": 7,
              "score": [0.8, 0.1, 0.2, 0.3, 0.1][k]} for k in range(5)]
    rows += [{"image_id": f"syn-tpl-{k}", "set": "class_balanced", "source_image_id": "", "seed": k,
              "score": np.nan} for k in range(2)]
    table = pd.DataFrame(rows)
    for space in ("pixel", "feature"):
        table[f"nn_{space}"] = np.linspace(0.1, 0.5, len(table))
        table[f"nn_{space}_same_patient"] = False
    return table


def test_per_prompt_summary_uses_the_probe_set_over_its_seeds_and_shares_are_reported_per_set():
    from cxrgen.stages.evaluate_reidentification import _per_prompt_protocol, summarise_audit

    summary = summarise_audit(audit_table(), threshold=0.5, resamples=20, confidence=0.9, seed=0)
    prompts = summary["prompts"]
    assert prompts["set"] == "reid_probe" and prompts["n"] == 3 and prompts["seeds_per_prompt"] == 4
    assert prompts["mean_of_mean"] == pytest.approx(np.mean([0.375, 0.275, 0.225]))
    assert prompts["mean_of_max"] == pytest.approx(np.mean([0.9, 0.4, 0.6]))
    assert prompts["mean_of_mean"] < prompts["mean_of_max"]  # several seeds: the worst seed is not the average one
    assert prompts["max_of_max"] == pytest.approx(0.9)
    assert prompts["share_any_seed_above"] == pytest.approx(2 / 3)  # a and c have a seed >= 0.5, b none
    # per image: every scored image, and per set
    assert summary["generated"]["n_scored"] == 17 and summary["generated"]["count_above_threshold"] == 3
    assert set(summary["by_set"]) == {"reid_probe", "train_twins"}
    assert summary["by_set"]["reid_probe"]["n_scored"] == 12
    assert summary["by_set"]["reid_probe"]["share_above_threshold"]["value"] == pytest.approx(2 / 12)
    assert summary["by_set"]["train_twins"]["share_above_threshold"]["value"] == pytest.approx(1 / 5)
    assert "3 training prompts x 4 seeds" in _per_prompt_protocol(prompts)

    without = summarise_audit(audit_table(with_probe=False), threshold=0.5, resamples=20, confidence=0.9, seed=0)
    assert without["prompts"]["set"] == "all" and without["prompts"]["n"] == 5
    assert without["prompts"]["seeds_per_prompt"] == 1
    assert without["prompts"]["mean_of_mean"] == pytest.approx(without["prompts"]["mean_of_max"])
    assert "no reid_probe set" in _per_prompt_protocol(without["prompts"])
