"""Deliberately bad files of the demo corpora: which items become bad and of which kind, the kind-specific file
operations shared by the writers, and an inspector telling which defect a DICOM on disk shows.

Kinds (one vocabulary for all writers):

- ``truncated``: the file is cut to about half its bytes;
- ``missing_file``: listed in the metadata, absent on disk;
- ``orphan_file``: on disk, absent from the metadata;
- ``no_pixels`` / ``multi_frame`` / ``non_chest``: DICOM-only defects (no PixelData, two frames, a non-chest image);
- ``rgb``: a PNG/JPEG stored as a colour image instead of a grayscale radiograph.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pydicom

K = TypeVar("K")


@dataclass(frozen=True)
class BadFileMix:
    """Which bad-file kinds a writer family produces and how many items get one.

    ``at_least_one_rounded``: ``max(1, round(fraction * n))`` bad items (else ``ceil(fraction * n)``);
    ``random_first_kind``: kinds cycle from a seed-dependent start (else from the first kind), so small corpora of
    different sources cover different kinds. Both variants are kept so every writer's output stays as it was."""

    kinds: tuple[str, ...]
    at_least_one_rounded: bool
    random_first_kind: bool


#: DICOM film writers (MIMIC, BRAX, VinDr, IU-Xray)
DICOM_FILM_MIX = BadFileMix(
    kinds=("truncated", "no_pixels", "multi_frame", "non_chest", "orphan_file", "missing_file"),
    at_least_one_rounded=True, random_first_kind=True)
#: PNG/JPEG release writers (NIH, CheXpert, PadChest)
IMAGE_FILE_MIX = BadFileMix(kinds=("truncated", "missing_file", "orphan_file", "rgb"),
                            at_least_one_rounded=False, random_first_kind=False)
BAD_KINDS = tuple(dict.fromkeys(DICOM_FILM_MIX.kinds + IMAGE_FILE_MIX.kinds))


def plan_bad_files(keys: Sequence[K], fraction: float, rng: np.random.Generator, mix: BadFileMix) -> dict[K, str]:
    """Deterministic choice of the ``keys`` that become bad files -> their kind (kinds cycle through ``mix.kinds``
    in key order). No draw is made from ``rng`` when nothing is bad."""
    n = len(keys)
    if fraction <= 0 or n == 0:
        return {}
    n_bad = min(n, max(1, int(round(fraction * n))) if mix.at_least_one_rounded else math.ceil(fraction * n))
    chosen = np.sort(rng.choice(n, size=n_bad, replace=False))
    start = int(rng.integers(len(mix.kinds))) if mix.random_first_kind else 0
    return {keys[int(i)]: mix.kinds[(start + k) % len(mix.kinds)] for k, i in enumerate(chosen)}


def truncate_file(path: Path, keep: float = 0.5, min_bytes: int = 16) -> None:
    """Cut ``path`` to ``keep`` of its bytes (at least ``min_bytes``)."""
    data = path.read_bytes()
    path.write_bytes(data[: max(min_bytes, int(len(data) * keep))])


def remove_missing(path: Path) -> None:
    """A ``missing_file`` item of the DICOM writers: written like any other to keep RNG streams aligned, then
    deleted."""
    path.unlink(missing_ok=True)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def tinted_rgb(image: np.ndarray) -> np.ndarray:
    """The ``rgb`` kind: an RGB rendering whose channels differ (a colour screenshot instead of a radiograph)."""
    gray = np.clip(image, 0, 1)
    return to_uint8(np.stack([gray, gray * 0.8, 0.2 + 0.6 * gray], axis=-1))


def bad_kind_of(path: Path) -> str | None:
    """Which defect a DICOM file on disk shows (None for a sound chest radiograph); for tests and QA."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pydicom only warns when a file ends inside an element
            ds = pydicom.dcmread(path)
    except Exception:
        return "truncated"
    if "PixelData" not in ds:
        return "no_pixels"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return "multi_frame"
    if ds.get("Modality") not in ("CR", "DX") or str(ds.get("BodyPartExamined", "")).upper() != "CHEST":
        return "non_chest"
    try:
        ds.pixel_array  # noqa: B018  (decodes: a cut-off pixel stream fails here)
    except Exception:
        return "truncated"
    return None
