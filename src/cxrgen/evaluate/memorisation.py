"""Memorisation and diversity.

* Nearest training image of every query image (generated, and real held-out as the reference) in two spaces, both
  with the distance 1 − cosine similarity: the evaluator's feature space, and pixel space (images at a fixed
  resolution, each image mean-centred, so the pixel distance is 1 − Pearson correlation of the pixels).
* Re-identification risk: the share of generated images closer to their nearest training image than a threshold,
  the ``q``-quantile of the training images' distances to their nearest *other* training image (how close two
  distinct training radiographs, e.g. follow-ups of one patient, get). Real held-out images (other patients) give
  the reference share.
* Diversity: SSIM / MS-SSIM between repeated generations of one prompt (different seeds), compared with random
  pairs of generated images of different prompts and random pairs of real images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def unit_rows(vectors: np.ndarray, centre: bool = False) -> np.ndarray:
    """Rows scaled to unit L2 norm (after subtracting each row's mean when ``centre``); zero rows stay zero."""
    x = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    if centre:
        x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def pixel_vectors(images: torch.Tensor, resolution: int) -> np.ndarray:
    """Images ``[B, 1, H, W]`` in [0, 1] → unit, mean-centred pixel vectors at ``resolution`` (area resize)."""
    if tuple(images.shape[-2:]) != (resolution, resolution):
        images = F.interpolate(images.float(), size=(resolution, resolution), mode="area")
    return unit_rows(images.flatten(1).numpy(), centre=True)


class NearestNeighbours:
    """Running nearest neighbour (cosine distance) of fixed query vectors over a database streamed in chunks.

    ``query_ids`` / chunk ids let a query skip itself (train → other train)."""

    def __init__(self, queries: np.ndarray, query_ids: Sequence[str] | None = None):
        self.queries = unit_rows(queries) if queries.size else np.zeros((0, 1), np.float32)
        self.query_ids = np.asarray(query_ids) if query_ids is not None else None
        self.distance = np.full(len(self.queries), np.inf)
        self.index = np.full(len(self.queries), -1, dtype=np.int64)
        self._seen = 0

    def update(self, database: np.ndarray, ids: Sequence[str] | None = None) -> None:
        """Add a chunk of (unit) database vectors; their global positions continue from the previous chunks."""
        if len(database) == 0 or len(self.queries) == 0:
            self._seen += len(database)
            return
        distance = 1.0 - self.queries @ np.asarray(database, dtype=np.float32).T
        if self.query_ids is not None and ids is not None:
            distance[self.query_ids[:, None] == np.asarray(ids)[None, :]] = np.inf
        best = distance.argmin(axis=1)
        best_distance = distance[np.arange(len(distance)), best]
        better = best_distance < self.distance
        self.distance[better] = best_distance[better]
        self.index[better] = best[better] + self._seen
        self._seen += len(database)


def nearest(queries: np.ndarray, database: np.ndarray, query_ids=None, database_ids=None,
            chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(distance, index) of every query's nearest database row (1 − cosine similarity)."""
    search = NearestNeighbours(queries, query_ids)
    database = unit_rows(database)
    for start in range(0, len(database), chunk):
        search.update(database[start : start + chunk],
                      None if database_ids is None else np.asarray(database_ids)[start : start + chunk])
    return search.distance, search.index


def share_below(distances: np.ndarray, threshold: float) -> float:
    return float(np.mean(np.asarray(distances) < threshold)) if len(distances) else float("nan")


def prompt_groups(rows, min_size: int = 2) -> list[np.ndarray]:
    """Positions of generated images that share one prompt (same prompt text within a prompt set), groups of at
    least ``min_size`` images: the repeated generations whose diversity is measured."""
    groups = rows.groupby(["set", "prompt"], sort=True).indices
    return [np.sort(np.asarray(v)) for v in groups.values() if len(v) >= min_size]


def pair_similarities(images: torch.Tensor, pairs: Iterable[tuple[int, int]], metric) -> np.ndarray:
    """``metric(a, b)`` (a per-image similarity such as :func:`cxrgen.evaluate.metrics.ssim`) for index pairs of
    ``images``, batched."""
    pairs = list(pairs)
    if not pairs:
        return np.zeros(0)
    left = torch.stack([images[i] for i, _ in pairs])
    right = torch.stack([images[j] for _, j in pairs])
    return np.asarray(metric(left, right), dtype=np.float64)


def within_group_pairs(groups: list[np.ndarray], max_pairs_per_group: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for group in groups:
        pairs = [(int(group[i]), int(group[j])) for i in range(len(group)) for j in range(i + 1, len(group))]
        if len(pairs) > max_pairs_per_group:
            pairs = [pairs[k] for k in np.sort(rng.choice(len(pairs), max_pairs_per_group, replace=False))]
        out += pairs
    return out


def random_pairs(n: int, count: int, seed: int, different: np.ndarray | None = None) -> list[tuple[int, int]]:
    """``count`` random pairs i != j of ``range(n)``; with ``different`` (a label per item) only pairs whose labels
    differ (e.g. generated images of different prompts)."""
    rng = np.random.default_rng(seed)
    out: list[tuple[int, int]] = []
    tries = 0
    while len(out) < count and tries < 50 * count and n > 1:
        i, j = (int(v) for v in rng.choice(n, 2, replace=False))
        tries += 1
        if different is not None and different[i] == different[j]:
            continue
        out.append((i, j))
    return out
