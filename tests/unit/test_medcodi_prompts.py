"""MedCoDi-M's study table (pairing from study_pid only) and prompt encoders (pairwise InfoNCE rounds, checkpoint
and resume, study embeddings, retrieval recall@k by pair)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from cxrgen.config import validate_config
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.medcodi.prompt_encoders import (
    PairRounds,
    cross_modal_recall,
    load_prompt_encoders,
    pair_members,
    retrieval_by_pair,
)
from cxrgen.medcodi.studies import study_counts, study_table
from cxrgen.models.clip import WEIGHTS_FILE
from cxrgen.stages.build_study_table import build_study_table
from cxrgen.stages.embed_prompts import embed_prompts
from cxrgen.stages.train_prompt_encoders import train_prompt_encoders
from cxrgen.store import ShardWriter, shard_path
from cxrgen.train.loop import Interrupted

RES = 32
REPORTS = ["Large right pleural effusion.", "No acute cardiopulmonary abnormality.", "Cardiomegaly.",
           "Left lower lobe consolidation."]


def _row(image_id, study, patient, view, split="train", source="mimic", impression=None, findings=None, **labels):
    row = {"image_id": image_id, "source": source, "study_pid": study, "patient_pid": patient, "view": view,
           "split": split, "report_impression": impression, "report_findings": findings}
    row.update({c: labels.get(c, np.nan) for c in LABEL_COLUMNS})
    return row


def test_study_table_pairs_by_study_pid_only():
    cardiomegaly = LABEL_COLUMNS[2]
    index = pd.DataFrame([
        # image ids suggest s1's lateral belongs with s2: only study_pid counts
        _row("s2-lateral", "s1", "p1", "LATERAL", impression="Cardiomegaly.", **{cardiomegaly: 0.0}),
        _row("s1-ap", "s1", "p1", "AP", impression="Cardiomegaly.", **{cardiomegaly: 1.0}),
        _row("s1-pa", "s1", "p1", "PA", impression="Cardiomegaly.", **{cardiomegaly: 1.0}),
        _row("a-lat", "s2", "p1", "LATERAL", findings="Clear lungs.", **{cardiomegaly: 0.0}),  # lateral only
        _row("b-ap", "s3", "p2", "AP", split="test"),  # frontal, no report
        _row("c-unk", "s4", "p2", "UNKNOWN", split="test", impression="Effusion."),  # UNKNOWN pairs with nothing
        _row("d-pa", "s5", "p3", "PA", source="nih", impression="ignored"),  # not a MedCoDi source
    ])
    studies = study_table(index).set_index("study_pid")
    assert list(studies.index) == ["s1", "s2", "s3", "s4"]
    assert studies.loc["s1", "frontal_image_id"] == "s1-pa"  # PA preferred over AP
    assert studies.loc["s1", "lateral_image_id"] == "s2-lateral"
    assert studies.loc["s1", cardiomegaly] == 1.0  # labels of the frontal row
    assert pd.isna(studies.loc["s2", "frontal_image_id"]) and studies.loc["s2", "lateral_image_id"] == "a-lat"
    assert studies.loc["s2", "report"] == "Clear lungs." and studies.loc["s2", cardiomegaly] == 0.0
    assert studies.loc["s3", "report"] == "" and pd.isna(studies.loc["s3", "lateral_image_id"])
    assert pd.isna(studies.loc["s4", "frontal_image_id"]) and pd.isna(studies.loc["s4", "lateral_image_id"])
    counts = study_counts(studies.reset_index())
    assert counts["per_combination"] == {"frontal": 1, "frontal+lateral+report": 1, "lateral+report": 1, "report": 1}
    assert counts["per_split"] == {"test": 2, "train": 2}
    assert list(study_table(index, sources=["nih"])["study_pid"]) == ["s5"]


def tiny_store(root, n_studies=24) -> pd.DataFrame:
    """Studies whose frontal and lateral films both show a blob whose position follows the report; every 6th study
    lacks its lateral, every 8th its report."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:RES, :RES] / RES
    rows = []
    with ShardWriter(shard_path(root, RES, "mimic", 0)) as writer:
        for s in range(n_studies):
            kind = s % 4
            report = REPORTS[kind] if s % 8 != 7 else None
            views = ["PA"] if s % 6 == 5 else ["PA", "LATERAL"]
            for view in views:
                image = np.full((RES, RES), 0.3 if view == "PA" else 0.5) + rng.normal(0, 0.02, (RES, RES))
                image[((xx - 0.2 - 0.2 * kind) / 0.1) ** 2 + ((yy - 0.5) / 0.2) ** 2 < 1] = 0.9
                offset, nbytes, digest = writer.append((np.clip(image, 0, 1) * 65535).astype(np.uint16))
                row = _row(f"mimic-{s:03d}-{view}", f"st{s:03d}", f"pt{s // 2:03d}", view,
                           split=["train", "train", "train", "test"][(s // 2) % 4], impression=report)
                row.update({"shard": 0, f"offset_{RES}": offset, f"nbytes_{RES}": nbytes, f"sha256_{RES}": digest})
                rows.append(row)
    index = pd.DataFrame(rows)
    index.to_parquet(root / "index.parquet")
    return index


def tiny_cfg(**overrides) -> dict:
    section = {"embed_dim": 16, "vision": {"width": 32, "layers": 1, "head_width": 16, "patch_size": 8},
               "text": {"width": 32, "heads": 2, "layers": 1, "context_length": 16}, "batch_size": 4,
               "max_steps": 4, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1, "lr": 1e-3, **overrides}
    return validate_config({"sources": {"nih": {}}, "medcodi": {"prompt_encoders": section}})["medcodi"][
        "prompt_encoders"]


@pytest.fixture
def study_store(tmp_path):
    tiny_store(tmp_path)
    counts = build_study_table(index_path=tmp_path / "index.parquet", sources=["mimic"],
                               out_parquet=tmp_path / "studies.parquet", out_json=tmp_path / "studies.json")
    assert counts["per_combination"]["frontal+lateral+report"] > 0
    return tmp_path


def _train(root, name, **kwargs):
    return train_prompt_encoders(studies_path=root / "studies.parquet", index_path=root / "index.parquet",
                                 store_root=root, resolution=RES, cfg=tiny_cfg(), seed=0,
                                 state_dir=root / f"state-{name}", out_dir=root / name, tracking_json=None,
                                 job_name="train_prompt_encoders", **kwargs)


def test_round_schedule_alternates_pairs_deterministically():
    studies = pd.DataFrame({"study_pid": list("abcde"), "frontal_image_id": ["f"] * 4 + [None],
                            "lateral_image_id": ["l", "l", None, None, "l"], "report": ["r", "", "r", "r", "r"]})
    members = pair_members(studies)
    assert {k: list(v) for k, v in members.items()} == {("frontal", "report"): [0, 2, 3],
                                                        ("lateral", "report"): [0, 4], ("frontal", "lateral"): [0, 1]}
    rounds = PairRounds(members, batch_size=2, seed=3, max_steps=9)
    schedule = list(rounds.iterate(0, 9))
    assert [p for p, _ in schedule] == [("frontal", "report"), ("lateral", "report"), ("frontal", "lateral")] * 3
    for pair, rows in schedule:
        assert set(rows) <= set(members[pair]) and len(rows) == 2
    resumed = list(PairRounds(members, batch_size=2, seed=3, max_steps=9).iterate(5, 9))
    assert all(p == q and np.array_equal(r, s) for (p, r), (q, s) in zip(resumed, schedule[5:], strict=True))
    halves = [PairRounds(members, 2, 3, 9, rank=r, world_size=2).batch(4)[1] for r in (0, 1)]
    assert np.array_equal(np.concatenate(halves), schedule[4][1])  # ranks split the step's global batch


def test_cross_modal_recall_on_a_hand_made_case():
    queries = torch.eye(3)
    gallery = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    recall = cross_modal_recall(queries, gallery, ["a", "b", "c"], ks=(1, 2, 3))
    # queries 1 and 2 rank the other one's item first and their own last (ties keep gallery order)
    assert recall["recall_at_1"] == recall["recall_at_2"] == pytest.approx(1 / 3) and recall["recall_at_3"] == 1.0
    assert recall["recall_at_1_chance"] == pytest.approx(1 / 3)
    # identical report texts (identical embeddings) are one candidate, so chance is 1/2, not 1/3
    same_text = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0]])
    recall = cross_modal_recall(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0.9, 0.1]]), same_text, ["a", "b", "b"],
                                ks=(1,))
    assert recall["candidates"] == 2 and recall["recall_at_1"] == 1.0
    assert recall["recall_at_1_chance"] == pytest.approx(1 / 2)
    # by pair: only studies with both modalities count, in both directions
    studies = pd.DataFrame({"study_pid": ["s1", "s2", "s3"], "frontal_image_id": ["f1", "f2", None],
                            "lateral_image_id": [None, None, "l3"], "report": ["x", "y", "z"]})
    emb = {"frontal": np.array([[1, 0], [0, 1], [np.nan, np.nan]], np.float32),
           "report": np.array([[0, 1], [1, 0], [1, 0]], np.float32),
           "lateral": np.array([[np.nan, np.nan], [np.nan, np.nan], [1, 0]], np.float32)}
    found = retrieval_by_pair(emb, studies, ks=(1,))
    assert set(found) == {"frontal->report", "report->frontal"}
    assert found["frontal->report"]["recall_at_1"] == 0.0 and found["frontal->report"]["queries"] == 2


def test_smoke_train_checkpoint_resume_and_embeddings(study_store):
    root = study_store
    full = _train(root, "full")
    with pytest.raises(Interrupted):
        _train(root, "resumed", stop_after_steps=2)
    resumed = _train(root, "resumed")
    assert resumed["resumed_from"] == 2 and full["steps"] == resumed["steps"] == 4
    a, b = load_file(str(root / "full" / WEIGHTS_FILE)), load_file(str(root / "resumed" / WEIGHTS_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full["round_schedule"] == ["frontal-report", "lateral-report", "frontal-lateral"]
    assert {"frontal->lateral", "lateral->frontal", "report->lateral"} <= set(full["retrieval"]["test"])
    assert full["seconds_per_step_this_run"] > 0
    metrics = json.loads((root / "full" / "metrics.json").read_text())
    assert metrics["retrieval"]["test"]["frontal->report"]["recall_at_10"] >= 0.0
    assert "| frontal->report |" in (root / "full" / "retrieval.md").read_text()

    encoders = load_prompt_encoders(root / "full")
    out = embed_prompts(studies_path=root / "studies.parquet", index_path=root / "index.parquet", store_root=root,
                        encoders_dir=root / "full", out_npz=root / "embeddings.npz", batch_size=5)
    studies = pd.read_parquet(root / "studies.parquet")
    with np.load(root / "embeddings.npz") as npz:
        assert list(npz["study_pids"]) == studies["study_pid"].tolist()
        for modality, present in (("frontal", studies["frontal_image_id"].notna()),
                                  ("lateral", studies["lateral_image_id"].notna()),
                                  ("report", studies["report"].str.len() > 0)):
            emb = npz[modality]
            assert emb.shape == (len(studies), encoders.dim) and emb.dtype == np.float32
            assert np.isnan(emb[~present.to_numpy()]).all() and np.isfinite(emb[present.to_numpy()]).all()
            assert np.allclose(np.linalg.norm(emb[present.to_numpy()], axis=1), 1.0, atol=1e-5)
            assert out[modality] == int(present.sum())
        assert out["lateral"] < len(studies) and out["report"] < len(studies)  # the fixture has absent modalities
        # the same film through the loaded encoders gives the stored embedding (one tower for both views)
        first = studies["lateral_image_id"].notna().to_numpy().argmax()
        from cxrgen.medcodi.prompt_encoders import StudyImages

        image = StudyImages(pd.read_parquet(root / "index.parquet"), studies, root, RES)(
            studies["lateral_image_id"].iloc[first])
        assert np.allclose(encoders.encode_images(image[None]).numpy()[0], npz["lateral"][first], atol=1e-5)
