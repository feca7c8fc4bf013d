"""Image sets of the evaluation and their features, extracted once and shared by the metric stages.

A *feature set* is a directory::

    meta.json                 resolution, backbones used (name → protocol description), skipped backbones, set sizes
    <set>.parquet             the store rows of each image set (with a ``store_root`` column), in feature order
    features.npz              ``<set>__<backbone>`` [N, D] float32 features; ``<set>__probs`` [N, 14] evaluator
                              probabilities (columns in CheXpert order); ``<set>__clip_score`` [N] cosine similarity of
                              each image with its text in the project's CLIP (generated: its prompt; real: its report;
                              NaN without text), when a CLIP model is given

Real sets (``reference`` = the held-out split(s) the generated images are compared with, ``train`` for the
memorisation search, ``val`` for decision thresholds) come from the unified store; the generated set
(``generated``) from a synthetic store. Every set is read at the same store resolution; each backbone then resizes to
its own input size.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cxrgen.evaluate.backbones import Backbone, Skipped
from cxrgen.labels import LABEL_COLUMNS

log = logging.getLogger(__name__)

META, FEATURES = "meta.json", "features.npz"


@dataclass
class FeatureSet:
    name: str
    rows: pd.DataFrame
    features: dict[str, np.ndarray] = field(default_factory=dict)
    probs: np.ndarray | None = None
    clip_scores: np.ndarray | None = None

    @property
    def labels(self) -> np.ndarray:
        return self.rows[list(LABEL_COLUMNS)].to_numpy(dtype=np.float64)


def sample_rows(rows: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most ``n`` rows (a seeded sample, kept in image-id order); all rows when ``n`` is None."""
    rows = rows.sort_values("image_id").reset_index(drop=True)
    if n is None or len(rows) <= n:
        return rows
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), int(n), replace=False))
    return rows.iloc[keep].reset_index(drop=True)


def with_root(rows: pd.DataFrame, store_root: str | Path) -> pd.DataFrame:
    out = rows.copy()
    out["store_root"] = str(store_root)
    return out


def real_sets(index: pd.DataFrame, store_root: str | Path, cfg: dict, seed: int) -> dict[str, pd.DataFrame]:
    """The real image sets from the unified index and section ``evaluation``: ``reference`` (splits
    ``reference_splits``), ``train`` (capped at ``memorisation.max_train``) and ``val`` (split val), each filtered to
    ``views`` and capped at ``n`` images by a seeded sample."""
    views = cfg["views"]
    frontal = index[index["view"].isin(views)] if views else index
    sets = {
        "reference": sample_rows(frontal[frontal["split"].isin(cfg["reference_splits"])], cfg["n"], seed),
        "train": sample_rows(frontal[frontal["split"] == "train"], cfg["memorisation"]["max_train"], seed + 1),
        "val": sample_rows(frontal[frontal["split"] == "val"], cfg["n"], seed + 2),
    }
    for name, rows in sets.items():
        if rows.empty:
            raise ValueError(f"evaluation: the real '{name}' set is empty (views {views}, reference_splits "
                             f"{cfg['reference_splits']})")
    return {name: with_root(rows, store_root) for name, rows in sets.items()}


def iter_images(rows: pd.DataFrame, resolution: int, batch_size: int, desc: str = "") -> Iterator[torch.Tensor]:
    """Batches ``[B, 1, R, R]`` in [0, 1] of store rows (with ``store_root``) at ``resolution`` (stores that lack it are
    read at the nearest stored resolution and resized)."""
    from cxrgen.evaluate.classifier import LabelledImages

    data = LabelledImages(rows, resolution)
    for start in tqdm(range(0, len(data), batch_size), desc=desc or "images", mininterval=5.0, disable=not desc):
        yield torch.stack([data.image(i) for i in range(start, min(len(data), start + batch_size))])


def images_at(rows: pd.DataFrame, positions, resolution: int) -> np.ndarray:
    """Images ``[K, R, R]`` in [0, 1] of the rows at ``positions``, in that order."""
    positions = np.asarray(positions, dtype=int)
    if len(positions) == 0:
        return np.zeros((0, resolution, resolution), np.float32)
    images = torch.cat(list(iter_images(rows.iloc[positions].reset_index(drop=True), resolution, 64)))
    return images[:, 0].numpy()


def extract(rows: pd.DataFrame, *, backbones: list[Backbone], evaluator, resolution: int, batch_size: int,
            name: str, with_features: bool = True, clip=None, texts: pd.Series | None = None) -> FeatureSet:
    """Features of every backbone (when ``with_features``) and the evaluator's probabilities for ``rows``; with a
    CLIP bundle (:func:`cxrgen.models.clip.load_clip`) and one text per row, each image's CLIP score."""
    feats: dict[str, list[np.ndarray]] = {b.name: [] for b in backbones} if with_features else {}
    probs: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for k, images in enumerate(iter_images(rows, resolution, batch_size, desc=f"features {name}")):
        for backbone in backbones if with_features else []:
            feats[backbone.name].append(backbone.features(images))
        if evaluator is not None:
            probs.append(np.asarray(evaluator.predict_proba(images), dtype=np.float32))
        if clip is not None and texts is not None:
            scores.append(clip_scores(clip, images, list(texts.iloc[k * batch_size: k * batch_size + len(images)])))
    return FeatureSet(name, rows.reset_index(drop=True),
                      {k: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for k, v in feats.items()},
                      np.concatenate(probs) if probs else None, np.concatenate(scores) if scores else None)


def clip_scores(clip, images: torch.Tensor, texts: list[str]) -> np.ndarray:
    """Cosine similarity of each image (``[B, 1, H, W]`` in [0, 1]) with its text in a CLIP's joint space (the image
    preprocessing is the CLIP's own, :func:`cxrgen.models.clip.prepare_images`); NaN where the text is empty."""
    from cxrgen.models.clip import encode_images, encode_texts

    with torch.no_grad():
        image_emb = encode_images(clip, images * 2.0 - 1.0)  # the store-wide model convention: [-1, 1]
        text_emb = encode_texts(clip, [t if t else " " for t in texts])
    score = (image_emb * text_emb).sum(-1).numpy().astype(np.float32)
    return np.where([bool(t) for t in texts], score, np.nan).astype(np.float32)


def save_feature_sets(out_dir: str | Path, sets: list[FeatureSet], *, resolution: int, backbones: list[Backbone],
                      skipped: list[Skipped], extra: dict | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for s in sets:
        s.rows.to_parquet(out_dir / f"{s.name}.parquet", index=False)
        for backbone, values in s.features.items():
            arrays[f"{s.name}__{backbone}"] = values
        if s.probs is not None:
            arrays[f"{s.name}__probs"] = s.probs
        if s.clip_scores is not None:
            arrays[f"{s.name}__clip_score"] = s.clip_scores
    np.savez(out_dir / FEATURES, **arrays)
    meta = {"resolution": int(resolution), "backbones": {b.name: b.description for b in backbones},
            "skipped": [s.as_dict() for s in skipped], "sets": {s.name: len(s.rows) for s in sets}, **(extra or {})}
    (out_dir / META).write_text(json.dumps(meta, indent=1))
    return out_dir


def load_feature_sets(directory: str | Path) -> tuple[dict[str, FeatureSet], dict]:
    directory = Path(directory)
    meta = json.loads((directory / META).read_text())
    arrays = np.load(directory / FEATURES)
    sets = {}
    for name in meta["sets"]:
        rows = pd.read_parquet(directory / f"{name}.parquet")
        features = {b: arrays[f"{name}__{b}"] for b in meta["backbones"] if f"{name}__{b}" in arrays.files}
        probs = arrays[f"{name}__probs"] if f"{name}__probs" in arrays.files else None
        scores = arrays[f"{name}__clip_score"] if f"{name}__clip_score" in arrays.files else None
        sets[name] = FeatureSet(name, rows, features, probs, scores)
    return sets, meta
