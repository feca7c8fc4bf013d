"""Rule ``cache_latents``: encode the store once with the trained autoencoder, so the LDM never re-encodes images.

What is stored, and why: the posterior **mean and std** of every image, **unscaled** (multiply by
``meta["scaling_factor"]`` before the diffusion model, divide before ``vae.decode``, as diffusers pipelines do).
LDM training samples z ~ N(mean, std²) afresh each time it encodes an image; keeping both moments lets the LDM do
exactly that per step with its own seeded generator (z = mean + std·ε), or use the mean, at no encoding cost. A
single sample frozen at caching time would add one fixed noise draw and nothing else.

Layout of ``out_dir``: ``latents.npy`` (posterior means, [N, C, h, w]), ``latents_std.npy`` (same shape),
``latents_index.parquet`` (image_id, split, row, source, view, text, report_findings, report_impression, lbl_*) and
``meta.json`` (autoencoder content hash, scaling factor, resolution, shapes). Readers: :func:`cxrgen.data.latents.load_latents`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cxrgen.data.latents import INDEX_FILE, MEAN_FILE, META_FILE, STD_FILE
from cxrgen.hashing import dir_digest
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.models.autoencoder import load_autoencoder
from cxrgen.train.data import StoreImages, report_texts, select_rows
from cxrgen.train.outputs import publish_dir

INDEX_COLUMNS = ("image_id", "split", "source", "view", "report_findings", "report_impression")


def cache_latents(*, index_path: Path | str, store_root: Path | str, resolution: int, ae_dir: Path | str,
                  out_dir: Path | str, splits: tuple[str, ...] | list[str] = ("train", "val", "test"),
                  batch_size: int = 64, dtype: str = "float32") -> dict:
    """Encode every image of ``splits`` (all views; filter on the index's ``view`` column downstream) at
    ``resolution`` px with the autoencoder in ``ae_dir`` (rule train_autoencoder's output) into ``out_dir``
    (written atomically via ``<out_dir>.tmp``; layout in the module docstring). Rows follow the unified index
    sorted by image id. ``dtype`` float32 or float16 (halves the disk, ~1e-3 relative error). Returns a small
    metrics dict (n, latent shape, scaling factor, hash)."""
    out_dir = Path(out_dir)
    rows = select_rows(pd.read_parquet(index_path), splits=list(splits))
    if rows.empty:
        raise ValueError(f"no images in splits {list(splits)} of {index_path}")
    vae = load_autoencoder(ae_dir)
    images = StoreImages(store_root, rows, resolution)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    shape = (len(rows), int(vae.config.latent_channels), resolution // factor, resolution // factor)

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    means = np.lib.format.open_memmap(tmp / MEAN_FILE, mode="w+", dtype=np.dtype(dtype), shape=shape)
    stds = np.lib.format.open_memmap(tmp / STD_FILE, mode="w+", dtype=np.dtype(dtype), shape=shape)
    with torch.no_grad():
        for start in tqdm(range(0, len(rows), batch_size), desc="cache_latents", mininterval=5.0):
            stop = min(len(rows), start + batch_size)
            posterior = vae.encode(torch.stack([images.image(i) for i in range(start, stop)])).latent_dist
            means[start:stop] = posterior.mean.numpy()
            stds[start:stop] = posterior.std.numpy()
    means.flush()
    stds.flush()
    del means, stds

    index = rows[list(INDEX_COLUMNS)].copy()
    index.insert(2, "row", np.arange(len(rows), dtype=np.int64))
    index["text"] = report_texts(rows).to_numpy()
    for column in LABEL_COLUMNS:
        index[column] = rows[column].to_numpy(dtype=np.float32)
    index.to_parquet(tmp / INDEX_FILE, index=False)
    meta = {
        "autoencoder_sha256": dir_digest(ae_dir), "scaling_factor": float(vae.config.scaling_factor),
        "stored": "unscaled posterior mean (latents.npy) and std (latents_std.npy)",
        "resolution": int(resolution), "shape": list(shape), "dtype": dtype, "splits": list(splits),
        "index_sha256": _file_sha256(index_path),
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    publish_dir(tmp, out_dir)
    return {"n": len(rows), "shape": list(shape), "scaling_factor": meta["scaling_factor"],
            "autoencoder_sha256": meta["autoencoder_sha256"]}


def _file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
