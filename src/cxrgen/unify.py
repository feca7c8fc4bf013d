"""MaCheX unification helpers (rule ``unify_store``, :mod:`cxrgen.stages.unify_store`): patient-wise splits,
duplicate detection, count reconciliation per source and the published split manifests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.sources.base import SPLITS

_SPLIT_RANK = {"train": 0, "val": 1, "test": 2}


def _unit_hash(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:13], 16) / float(1 << 52)


def assign_splits(index: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> pd.Series:
    """Patient-wise, deterministic splits that honour official splits.

    Per source: if it has an official test (val) split, exactly those patients form test (val) — a patient with any
    officially held-out image is held out entirely, at the strictest level (test > val). Patients without an official
    assignment are split by a seeded hash of their pseudonymised id, into only the roles the source does not define
    officially. A patient never appears in two splits.
    """
    if val_fraction + test_fraction >= 1:
        raise ValueError("unify.splits: val_fraction + test_fraction must be < 1")
    split = pd.Series(index=index.index, dtype="object")
    for _, rows in index.groupby("source"):
        official = rows["official_split"]
        has_test, has_val = bool((official == "test").any()), bool((official == "val").any())
        patients = rows["patient_pid"].unique()
        level = official.map(_SPLIT_RANK).groupby(rows["patient_pid"]).max().reindex(patients).to_numpy()
        u = np.array([_unit_hash(f"{seed}:{p}") for p in patients])
        test_p = 0.0 if has_test else test_fraction
        val_p = 0.0 if has_val else val_fraction
        result = np.where(u < test_p, "test", np.where(u < test_p + val_p, "val", "train")).astype(object)
        result[(level == _SPLIT_RANK["train"]) & (result == "test")] = "train"  # officially train: never held out
        result[level == _SPLIT_RANK["val"]] = "val"
        result[level == _SPLIT_RANK["test"]] = "test"
        split.loc[rows.index] = rows["patient_pid"].map(dict(zip(patients, result, strict=True))).to_numpy()
    return split


def find_duplicates(index: pd.DataFrame, source_priority: list[str]) -> pd.DataFrame:
    """Pixel-identical images (same decoded content hash). The copy kept is the one from the source listed first in
    ``source_priority``, then the smallest image id; returns one row per dropped copy."""
    priority = {name: i for i, name in enumerate(source_priority)}
    ordered = index.assign(_prio=index["source"].map(priority).fillna(len(priority))).sort_values(
        ["content_sha256", "_prio", "image_id"])
    dup_mask = ordered["content_sha256"].duplicated(keep="first")
    kept = ordered.drop_duplicates("content_sha256", keep="first").set_index("content_sha256")
    dups = ordered[dup_mask]
    return pd.DataFrame({
        "image_id": dups["image_id"].to_numpy(), "source": dups["source"].to_numpy(),
        "duplicate_of": kept.loc[dups["content_sha256"], "image_id"].to_numpy(),
        "duplicate_of_source": kept.loc[dups["content_sha256"], "source"].to_numpy(),
        "content_sha256": dups["content_sha256"].to_numpy(),
    })


def summarise(index: pd.DataFrame, rejections: pd.DataFrame, duplicates: pd.DataFrame) -> dict:
    """Count reconciliation per source: files seen on disk = ingested + rejected (missing_file rows are metadata
    entries without a file and are reported apart)."""
    per_source = {}
    for source in sorted(set(index["source"]) | set(rejections["source"])):
        rej = rejections[rejections["source"] == source]
        missing = int((rej["reason"] == "missing_file").sum())
        ingested = int((index["source"] == source).sum())
        rejected = int(len(rej) - missing)
        per_source[source] = {
            "files_seen": ingested + rejected, "ingested": ingested, "rejected": rejected,
            "metadata_rows_without_file": missing,
            "rejected_by_reason": {k: int(v) for k, v in rej["reason"].value_counts().sort_index().items()},
            "patients": int(index.loc[index["source"] == source, "patient_pid"].nunique()),
            "splits": {s: int(((index["source"] == source) & (index["split"] == s)).sum()) for s in SPLITS},
        }
    leaks = index.groupby("patient_pid")["split"].nunique()
    return {
        "sources": per_source,
        "total_ingested": int(len(index)),
        "total_rejected": int(sum(v["rejected"] for v in per_source.values())),
        "duplicate_images_dropped": int(len(duplicates)),
        "patients_in_more_than_one_split": int((leaks > 1).sum()),
    }


def write_split_manifests(index: pd.DataFrame, out_dir: Path) -> None:
    """Published split manifests: sorted pseudonymised image ids per split, with a sha256 of each list."""
    out_dir.mkdir(parents=True, exist_ok=True)
    digests = {}
    for split in SPLITS:
        ids = sorted(index.loc[index["split"] == split, "image_id"])
        text = "\n".join(ids) + ("\n" if ids else "")
        (out_dir / f"{split}.txt").write_text(text)
        digests[split] = {"images": len(ids), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    (out_dir / "manifest_digests.json").write_text(json.dumps(digests, indent=1))
