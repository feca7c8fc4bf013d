"""Rule ``unify_store``: merge the shard index parts of every source into one MaCheX-style index with patient-wise
splits, label policy and duplicate detection, and reconcile file counts per source.

Outputs next to the index are shareable (pseudonymised ids, no source paths); the full rejection manifest, whose
``rel_path``/``detail`` can carry dataset ids, is written to an ingestion-private path instead."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.ingest import SHAREABLE_REJECTION_COLUMNS
from cxrgen.labels import LABEL_COLUMNS, apply_label_policy
from cxrgen.text.labeler import label_reports
from cxrgen.unify import assign_splits, find_duplicates, summarise, write_split_manifests

log = logging.getLogger(__name__)


def unify_store(index_parts: list[Path | str], rejection_parts: list[Path | str], *, label_policy: dict,
                val_fraction: float, test_fraction: float, source_priority: list[str], seed: int,
                labeler_sources: list[str] | tuple[str, ...], index_path: Path | str, rejections_path: Path | str,
                rejection_manifest_path: Path | str, summary_path: Path | str, splits_dir: Path | str) -> dict:
    """Write the unified index, the count summary, the split manifests and the rejections: ``rejections_path`` gets
    the shareable list (:data:`~cxrgen.ingest.SHAREABLE_REJECTION_COLUMNS`: pseudonymised image id, source, shard,
    reason), ``rejection_manifest_path`` (under ``results/ingest/``) the full manifest with source paths and decoder
    details. Returns the summary."""
    index, rejections, summary = unify(
        [Path(p) for p in index_parts], [Path(p) for p in rejection_parts], label_policy=label_policy,
        val_fraction=val_fraction, test_fraction=test_fraction, source_priority=source_priority, seed=seed,
        labeler_sources=labeler_sources)
    index.to_parquet(index_path, index=False)
    rejections[list(SHAREABLE_REJECTION_COLUMNS)].to_parquet(rejections_path, index=False)
    Path(rejection_manifest_path).parent.mkdir(parents=True, exist_ok=True)
    rejections.to_parquet(rejection_manifest_path, index=False)
    Path(summary_path).write_text(json.dumps(summary, indent=1))
    write_split_manifests(index, Path(splits_dir))
    log.info("%d images ingested, %d rejected", summary["total_ingested"], summary["total_rejected"])
    return summary


def unify(index_parts: list[Path], rejection_parts: list[Path], *, label_policy: dict, val_fraction: float,
          test_fraction: float, source_priority: list[str], seed: int,
          labeler_sources: list[str] | tuple[str, ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Returns (index, rejections, summary).

    ``labeler_sources``: sources whose raw labels are replaced by the rule-based report labeler's output
    (:mod:`cxrgen.text.labeler`) from their FINDINGS/IMPRESSION text — IU-Xray ships no CheXpert labels, only MeSH
    indexing (positives only). Column ``label_source`` says where each row's labels come from: ``dataset`` or
    ``labeler`` (machine labels, not human annotations)."""
    parts = [pd.read_parquet(p) for p in index_parts]
    index = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else parts[0]
    rejections = pd.concat([pd.read_parquet(p) for p in rejection_parts], ignore_index=True)

    duplicates = find_duplicates(index, source_priority) if len(index) else pd.DataFrame(
        columns=["image_id", "source", "duplicate_of", "duplicate_of_source", "content_sha256"])
    if len(duplicates):
        dropped = index[index["image_id"].isin(duplicates["image_id"])]
        rejections = pd.concat([rejections, pd.DataFrame({
            "image_id": dropped["image_id"], "source": dropped["source"], "rel_path": None,
            "shard": dropped["shard"], "reason": "duplicate",
            "detail": "pixel-identical to " + dropped["image_id"].map(
                dict(zip(duplicates["image_id"], duplicates["duplicate_of"], strict=True))),
        })], ignore_index=True)
        index = index[~index["image_id"].isin(duplicates["image_id"])]

    index = index.sort_values(["source", "image_id"]).reset_index(drop=True)
    index["split"] = assign_splits(index, val_fraction, test_fraction, seed) if len(index) else []
    index["label_source"] = "dataset"
    machine = index["source"].isin(list(labeler_sources)).to_numpy()
    if machine.any():
        labels = label_reports(index.loc[machine, "report_findings"].tolist(),
                               index.loc[machine, "report_impression"].tolist())
        for j, col in enumerate(LABEL_COLUMNS):
            index.loc[machine, "raw_" + col] = labels[:, j]
        index.loc[machine, "label_source"] = "labeler"
    raw = index[["raw_" + c for c in LABEL_COLUMNS]].to_numpy(dtype=np.float32)
    applied = apply_label_policy(raw, label_policy["uncertain"], label_policy["blank"])
    for j, col in enumerate(LABEL_COLUMNS):
        index[col] = applied[:, j]

    summary = summarise(index, rejections, duplicates)
    return index, rejections.reset_index(drop=True), summary | {"duplicates": duplicates.to_dict("records")}
