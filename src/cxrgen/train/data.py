"""Torch datasets over the unified store (and its cached latents)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrgen.labels import LABEL_COLUMNS
from cxrgen.store import ShardStore


def select_rows(index: pd.DataFrame, *, splits: list[str], views: list[str] | None = None,
                sources: list[str] | None = None, require_report: bool = False) -> pd.DataFrame:
    """Rows of the unified index used by a stage, in a deterministic order (by image id)."""
    keep = index["split"].isin(splits)
    if views:
        keep &= index["view"].isin(views)
    if sources:
        keep &= index["source"].isin(sources)
    if require_report:
        keep &= report_texts(index).str.len() > 0
    return index[keep].sort_values("image_id").reset_index(drop=True)


def report_texts(index: pd.DataFrame) -> pd.Series:
    """Conditioning text: FINDINGS then IMPRESSION (what MIMIC/IU reports carry; Cheff conditions on the report,
    MedCoDi-M on the impression); empty string when the source has no report."""
    findings = index["report_findings"].fillna("").astype(str).str.strip()
    impression = index["report_impression"].fillna("").astype(str).str.strip()
    return (findings + " " + impression).str.strip()


def conditioning_texts(rows: pd.DataFrame, unreported_text: str) -> pd.Series:
    """The text each image is trained with (CLIP and the LDM alike): its report; for report-less images,
    ``unreported_text`` = ``empty`` (Cheff: such images only teach the unconditional model; CLIP skips them) or
    ``label_template`` (a side-free report built from the image's labels, :func:`cxrgen.prompts.label_template_report`,
    so label-only sources such as ChestX-ray14/CheXpert/PadChest get text too)."""
    texts = report_texts(rows) if "text" not in rows else rows["text"].fillna("").astype(str).str.strip()
    if unreported_text == "empty":
        return texts
    if unreported_text != "label_template":
        raise ValueError(f"unreported_text = {unreported_text!r}; allowed: empty, label_template")
    from cxrgen.prompts import label_template_report

    missing = texts.str.len() == 0
    records = rows.loc[missing, list(LABEL_COLUMNS) + ["image_id"]].to_dict("records")
    texts.loc[missing] = [label_template_report(r, str(r["image_id"])) for r in records]
    return texts


class StoreImages(torch.utils.data.Dataset):
    """Images in [-1, 1] as (1, H, W) float tensors, with report text and the 14 labels (NaN = ignore)."""

    def __init__(self, store_root: Path | str, rows: pd.DataFrame, resolution: int, texts: list[str] | None = None):
        self.rows = rows.reset_index(drop=True)
        self.store = ShardStore(store_root, self.rows)
        self.resolution = resolution
        self.texts = report_texts(self.rows).tolist() if texts is None else list(texts)
        if len(self.texts) != len(self.rows):
            raise ValueError(f"StoreImages: {len(self.texts)} texts for {len(self.rows)} rows")
        self.labels = torch.from_numpy(self.rows[list(LABEL_COLUMNS)].to_numpy(dtype=np.float32, copy=True))

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, i: int) -> torch.Tensor:
        pixels = self.store.read(i, self.resolution).astype(np.float32) / 65535.0
        return torch.from_numpy(pixels * 2.0 - 1.0)[None]

    def __getitem__(self, i: int) -> dict:
        return {"image": self.image(i), "text": self.texts[i], "labels": self.labels[i],
                "image_id": self.rows.at[i, "image_id"]}
