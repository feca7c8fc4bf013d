"""The latent cache that rule ``cache_latents`` writes, as its readers see it.

``out_dir`` holds ``latents.npy`` (posterior means, [N, C, h, w], unscaled), ``latents_std.npy`` (same shape),
``latents_index.parquet`` (image_id, split, row, source, view, text, report_findings, report_impression, lbl_*) and
``meta.json`` (autoencoder content hash, scaling factor, resolution, shapes). Multiply by ``meta["scaling_factor"]``
before the diffusion model and divide before ``vae.decode``, as diffusers pipelines do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrgen.hashing import dir_digest
from cxrgen.labels import LABEL_COLUMNS

MEAN_FILE, STD_FILE, INDEX_FILE, META_FILE = "latents.npy", "latents_std.npy", "latents_index.parquet", "meta.json"


class StaleLatentsError(RuntimeError):
    """The cached latents were made by a different autoencoder than the one given."""


@dataclass
class LatentCache:
    """Cached latents (memory-mapped, unscaled) with their index and metadata."""

    mean: np.ndarray
    std: np.ndarray
    index: pd.DataFrame
    meta: dict

    @property
    def scaling_factor(self) -> float:
        return float(self.meta["scaling_factor"])

    def rows(self, splits: list[str], views: list[str] | None = None, require_report: bool = False) -> pd.DataFrame:
        """Index rows of the given splits (and views), in cache order; ``row`` addresses the arrays."""
        keep = self.index["split"].isin(splits)
        if views:
            keep &= self.index["view"].isin(views)
        if require_report:
            keep &= self.index["text"].str.len() > 0
        return self.index[keep].reset_index(drop=True)


def load_latents(out_dir: Path | str, ae_dir: Path | str | None = None) -> LatentCache:
    """Open a latent cache. With ``ae_dir``, refuse latents made by another autoencoder (content hash mismatch)."""
    out_dir = Path(out_dir)
    meta_path = out_dir / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{out_dir} is not a latent cache (no {META_FILE}); run rule cache_latents")
    meta = json.loads(meta_path.read_text())
    if ae_dir is not None:
        current = dir_digest(ae_dir)
        if current != meta["autoencoder_sha256"]:
            raise StaleLatentsError(
                f"stale latents: {out_dir} was encoded by autoencoder {meta['autoencoder_sha256'][:12]}, but "
                f"{ae_dir} is {current[:12]}; re-run rule cache_latents for this autoencoder")
    mean = np.load(out_dir / MEAN_FILE, mmap_mode="r")
    std = np.load(out_dir / STD_FILE, mmap_mode="r")
    index = pd.read_parquet(out_dir / INDEX_FILE)
    if list(mean.shape) != meta["shape"] or std.shape != mean.shape or len(index) != mean.shape[0]:
        raise ValueError(f"latent cache {out_dir} is inconsistent: arrays {mean.shape}/{std.shape}, "
                         f"{len(index)} index rows, meta shape {meta['shape']}")
    return LatentCache(mean=mean, std=std, index=index, meta=meta)


class LatentDataset(torch.utils.data.Dataset):
    """Items like :class:`cxrgen.train.data.StoreImages` but with **scaled** latents: ``latent`` = mean·s and
    ``latent_std`` = std·s (draw z = latent + latent_std·ε in the train step with the loop's generator to sample the
    posterior as LDM does), ``text``, ``labels`` (14, NaN = ignore), ``image_id``."""

    def __init__(self, cache: LatentCache, rows: pd.DataFrame):
        self.cache, self.rows = cache, rows.reset_index(drop=True)
        self.positions = self.rows["row"].to_numpy()
        self.texts = self.rows["text"].fillna("").astype(str).tolist()
        self.labels = torch.from_numpy(self.rows[list(LABEL_COLUMNS)].to_numpy(dtype=np.float32, copy=True))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row, scale = int(self.positions[i]), self.cache.scaling_factor
        return {"latent": torch.from_numpy(np.array(self.cache.mean[row], dtype=np.float32)) * scale,
                "latent_std": torch.from_numpy(np.array(self.cache.std[row], dtype=np.float32)) * scale,
                "text": self.texts[i], "labels": self.labels[i], "image_id": self.rows.at[i, "image_id"]}
