"""Synthetic MedCoDi-M inputs in the formats of the issue-12 contract (``results/medcodi/studies.parquet`` and
``results/medcodi/embeddings.npz``), so the report stages can be tested before the real study table exists. Each study's
report is one of a few impressions; its view embeddings point along that impression's direction (plus noise), so the
condition carries the report's content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.config import deep_merge, validate_config
from cxrgen.labels import LABEL_COLUMNS

IMPRESSIONS = (
    "no acute cardiopulmonary process.",
    "small left pleural effusion.",
    "mild cardiomegaly without pulmonary edema.",
    "right lower lobe pneumonia.",
    "no pneumothorax. stable cardiomediastinal silhouette.",
    "interval placement of a right internal jugular line.",
)
EMBED_DIM = 16

TINY = {
    "text_vae": {"tokenizer": {"min_count": 1}, "max_tokens": 24,
                 "model": {"latent_dim": 768, "embed_dim": 32, "hidden_dim": 64, "encoder_layers": 1,
                           "decoder_layers": 1, "dropout": 0.0},
                 "kl": {"ratio_zero": 0.5, "ratio_increase": 0.25, "free_bits": 0.5},
                 "lr": 3e-3, "batch_size": 4, "max_steps": 4, "checkpoint_every": 2, "log_every": 1,
                 "val_max_items": 8, "examples": 2},
    "report_diffusion": {"model": {"hidden_dim": 32, "blocks": 2, "norm_groups": 8},
                         "schedule": {"timesteps": 100}, "lr": 1e-3, "batch_size": 4, "max_steps": 4,
                         "checkpoint_every": 2, "log_every": 1, "ema_decay": 0.9, "val_max_items": 4,
                         "sample": {"steps": 3, "guidance_scale": 2.0}},
}


def medcodi_cfg(section: str, **overrides) -> dict:
    """A validated ``medcodi.<section>`` with tiny sizes (``overrides`` merged in recursively)."""
    config = {"sources": {"nih": {}}, "medcodi": {section: deep_merge(TINY[section], overrides)}}
    return validate_config(config)["medcodi"][section]


def write_study_table(path: Path | str, n_studies: int = 24, seed: int = 0) -> pd.DataFrame:
    """A study table: splits train/val/test by patient (2:1:1), studies 4, 9, 14, … (i % 5 == 4) without a lateral
    view, studies 2, 9, 16, … (i % 7 == 2) without a frontal one (study 9 has neither), study 11 without a report.
    Train studies: 0-3, 8-11, 16-19."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_studies):
        patient = i // 2
        split = ["train", "train", "val", "test"][patient % 4]
        report = "" if i == 11 else IMPRESSIONS[i % len(IMPRESSIONS)]
        labels = {c: float(rng.integers(0, 2)) if j < 3 else np.nan for j, c in enumerate(LABEL_COLUMNS)}
        rows.append({"study_pid": f"s{i:04d}", "patient_pid": f"p{patient:04d}", "split": split,
                     "source": "mimic" if i % 3 else "iuxray",
                     "frontal_image_id": None if i % 7 == 2 else f"img{i:04d}f",
                     "lateral_image_id": None if i % 5 == 4 else f"img{i:04d}l", "report": report, **labels})
    table = pd.DataFrame(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path, index=False)
    return table


def write_embeddings(path: Path | str, table: pd.DataFrame, dim: int = EMBED_DIM, seed: int = 0) -> Path:
    """``embeddings.npz`` for every study of ``table``: L2-normalised float32, NaN rows where a modality is absent."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(len(IMPRESSIONS), dim))
    n = len(table)
    out = {v: np.full((n, dim), np.nan, np.float32) for v in ("frontal", "lateral", "report")}
    for row, record in enumerate(table.itertuples()):
        topic = directions[IMPRESSIONS.index(record.report)] if record.report else rng.normal(size=dim)
        present = {"frontal": pd.notna(record.frontal_image_id), "lateral": pd.notna(record.lateral_image_id),
                   "report": bool(record.report)}
        for view, has in present.items():
            if has:
                vector = topic + 0.3 * rng.normal(size=dim)
                out[view][row] = (vector / np.linalg.norm(vector)).astype(np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, study_pids=table["study_pid"].to_numpy(dtype=str), **out)
    return path
