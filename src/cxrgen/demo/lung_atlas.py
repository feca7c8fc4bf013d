"""Real frontal lung-field shapes for the phantom renderer, from the v7labs lung masks shipped in torchxrayvision.

The zip holds 517 8-bit masks (PNG bytes whatever the extension, lung = 255); 82 are empty and 435 show two lungs
(offline-data.md §2). Each usable mask is cropped to the bounding box of its two largest components, split into the
image-left lung (patient right on PA/AP) and the image-right lung, resampled to ``ATLAS_PX`` and stored as distance
maps, which the renderer samples with bilinear interpolation (smooth edges, depth profile, pleural rim).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from cxrgen.demo.common import txrv_data_dir

ATLAS_PX = 128
ATLAS_ZIP = "semantic_masks_v7labs_lungs.zip"
_DECODE_PX = 384  # masks are reduced to about this size before labelling (4757 px originals take seconds)
_DIST_SCALE = 4.0  # distances are stored as uint8 quarter pixels ...
DIST_OFFSET = 8.0  # ... shifted by 8 px, so signed distances from -8 (outside) to +55.75 px fit
_CACHE_VERSION = 5


@dataclass(frozen=True)
class LungAtlas:
    """``inner[i, side]``: signed distance (atlas px) to the lung border, positive inside, with the medial border
    moved to the midline above the cardiophrenic angle (see ``_extend_medially``); side 0 = image-left lung
    (patient right on PA/AP), 1 = image-right lung. ``outer[i, side]``: the same but measured to the lateral, apical
    and basal pleura only (the medial border is ignored), for pneumothorax and pleural rims. Bilinear interpolation
    of signed distances gives smooth, sub-pixel lung borders at any output size. ``aspect[i]``: crop height / width."""

    inner: np.ndarray  # uint8 (n, 2, ATLAS_PX, ATLAS_PX): (distance + DIST_OFFSET) * 4
    outer: np.ndarray  # uint8 (n, 2, ATLAS_PX, ATLAS_PX): (distance + DIST_OFFSET) * 4
    aspect: np.ndarray  # float32 (n,)
    names: tuple[str, ...]
    raw: np.ndarray  # uint8 like ``inner`` but of the mask as drawn (no medial extension), for lateral views

    def __len__(self) -> int:
        return len(self.names)

    def distances(self, index: int, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Float32 (2, ATLAS_PX, ATLAS_PX) signed inner (``raw``: unextended) and outer distance maps of one mask,
        in atlas pixels."""
        inner = self.raw[index] if raw else self.inner[index]
        return (inner.astype(np.float32) / _DIST_SCALE - DIST_OFFSET,
                self.outer[index].astype(np.float32) / _DIST_SCALE - DIST_OFFSET)


def _decode_mask(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("L")
    factor = max(1, max(image.size) // _DECODE_PX)
    if factor > 1:
        image = image.reduce(factor)
    return np.asarray(image) > 127


def _resample(mask: np.ndarray) -> np.ndarray:
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize((ATLAS_PX, ATLAS_PX), Image.Resampling.BILINEAR)
    # some source masks are small (156 px) and blocky: smooth the outline before thresholding
    return ndimage.gaussian_filter(np.asarray(image, np.float32), 1.5) > 127.5


def _outer_distance(lung: np.ndarray, medial_to_right: bool) -> np.ndarray:
    """Distance to the pleura ignoring the medial border: the lung is extended medially to the crop edge, row by row,
    before the distance transform."""
    extended = lung.copy()
    rows = np.flatnonzero(lung.any(axis=1))
    for row in rows:
        cols = np.flatnonzero(lung[row])
        if medial_to_right:
            extended[row, cols[0]:] = True
        else:
            extended[row, : cols[-1] + 1] = True
    padded = np.pad(extended, ((1, 1), (1, 1)), constant_values=False)
    # the medial crop edge must not count as pleura: pad that side with lung
    if medial_to_right:
        padded[1:-1, -1] = extended[:, -1]
    else:
        padded[1:-1, 0] = extended[:, 0]
    inside = ndimage.distance_transform_edt(padded)[1:-1, 1:-1] - 0.5
    outside = ndimage.distance_transform_edt(~lung) - 0.5
    return np.where(lung, inside, -outside)


def _extend_medially(lung: np.ndarray, medial_to_right: bool) -> np.ndarray:
    """Fill each row from the lung's medial edge to the crop midline, from the hilum down to the cardiophrenic angle.

    The source masks carry their own patients' heart and mediastinum shapes; the renderer draws its own heart
    (whose size is a finding), so the medial lung border must come from that heart, not from the mask."""
    size = lung.shape[1]
    mid = size // 2
    cols = np.arange(size)
    present = lung.any(axis=1)
    rows = np.flatnonzero(present)
    if medial_to_right:
        medial = np.where(present, np.where(lung, cols, -1).max(axis=1), -1)
        lower = rows[len(rows) // 2:]
        cut = lower[len(lower) - 1 - int(np.argmax(medial[lower][::-1]))]
    else:
        medial = np.where(present, np.where(lung, cols, size).min(axis=1), size)
        lower = rows[len(rows) // 2:]
        cut = lower[len(lower) - 1 - int(np.argmin(medial[lower][::-1]))]
    out = lung.copy()
    hilum = rows[0] + int(0.4 * (rows[-1] - rows[0]))  # the apices and upper mediastinal borders stay as drawn
    for row in rows[(rows <= cut) & (rows >= hilum)]:
        if medial_to_right and medial[row] < mid:
            out[row, medial[row]:mid] = True
        elif not medial_to_right and medial[row] >= mid:
            out[row, mid:medial[row] + 1] = True
    return out


def _signed_distance(lung: np.ndarray) -> np.ndarray:
    inside = ndimage.distance_transform_edt(np.pad(lung, 1))[1:-1, 1:-1] - 0.5
    return np.where(lung, inside, -(ndimage.distance_transform_edt(~lung) - 0.5))


def _process(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
    """Two-lung mask -> (inner, outer, raw inner (each (2,P,P)), aspect) or None unless it shows two lungs."""
    labels, count = ndimage.label(mask)
    if count < 2:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:2]
    if sizes[order[1]] < 0.25 * sizes[order[0]]:
        return None
    comps = [labels == (k + 1) for k in order]
    centres = [np.nonzero(c)[1].mean() for c in comps]
    comps = [comps[i] for i in np.argsort(centres)]  # image-left lung first
    union = comps[0] | comps[1]
    rows, cols = np.nonzero(union)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    height, width = r1 - r0, c1 - c0
    aspect = height / width
    if not 0.55 <= aspect <= 1.5:
        return None
    # the two lungs must sit side by side: the image-left lung's centre left of the crop centre and vice versa
    left_cols = np.nonzero(comps[0])[1]
    right_cols = np.nonzero(comps[1])[1]
    mid = (c0 + c1) / 2
    if not (left_cols.mean() < mid < right_cols.mean()):
        return None
    inner = np.zeros((2, ATLAS_PX, ATLAS_PX), np.float32)
    outer = np.zeros_like(inner)
    raw = np.zeros_like(inner)
    for side, comp in enumerate(comps):
        lung = _resample(comp[r0:r1, c0:c1])
        if lung.sum() < 0.05 * ATLAS_PX**2:
            return None
        raw[side] = _signed_distance(lung)
        lung = _extend_medially(lung, medial_to_right=(side == 0))
        inner[side] = _signed_distance(lung)
        outer[side] = _outer_distance(lung, medial_to_right=(side == 0))
    return inner, outer, raw, float(aspect)


def build_atlas(zip_path: Path) -> LungAtlas:
    """Decode and process every mask of the zip (about 5 s)."""
    inners, outers, raws, aspects, names = [], [], [], [], []
    with zipfile.ZipFile(zip_path) as archive:
        for name in sorted(archive.namelist()):
            if name.endswith("/"):
                continue
            try:
                mask = _decode_mask(archive.read(name))
            except OSError:
                continue
            if not mask.any():
                continue
            processed = _process(mask)
            if processed is None:
                continue
            inners.append(processed[0])
            outers.append(processed[1])
            raws.append(processed[2])
            aspects.append(processed[3])
            names.append(name.rsplit("/", 1)[-1])
    if not names:
        raise RuntimeError(f"no usable two-lung masks in {zip_path}")

    def quantise(maps: list[np.ndarray]) -> np.ndarray:
        return np.clip(np.rint((np.stack(maps) + DIST_OFFSET) * _DIST_SCALE), 0, 255).astype(np.uint8)

    return LungAtlas(quantise(inners), quantise(outers), np.asarray(aspects, np.float32), tuple(names),
                     quantise(raws))


def _cache_path(zip_path: Path) -> Path | None:
    root = os.environ.get("CXRGEN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "cxrgen")
    stat = zip_path.stat()
    key = hashlib.sha256(f"{_CACHE_VERSION}|{ATLAS_PX}|{stat.st_size}|{zip_path}".encode()).hexdigest()[:16]
    return Path(root) / f"lung_atlas_{key}.npz"


def _read_cache(path: Path) -> LungAtlas | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return LungAtlas(data["inner"], data["outer"], data["aspect"], tuple(str(n) for n in data["names"]),
                             data["raw"])
    except (OSError, KeyError, ValueError):
        return None


def _write_cache(path: Path, atlas: LungAtlas) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, inner=atlas.inner, outer=atlas.outer, raw=atlas.raw, aspect=atlas.aspect,
                            names=np.asarray(atlas.names))
        os.replace(tmp, path)  # atomic: parallel workers may build the same cache
    except OSError:
        pass  # a read-only home only costs the 5 s rebuild next time


_lock = threading.Lock()
_atlas: LungAtlas | None = None


def load_lung_atlas(use_disk_cache: bool = True) -> LungAtlas:
    """The atlas, built once per process (and cached on disk under ``$CXRGEN_CACHE_DIR`` or ``~/.cache/cxrgen``)."""
    global _atlas
    with _lock:
        if _atlas is None:
            zip_path = txrv_data_dir() / ATLAS_ZIP
            if not zip_path.is_file():
                raise RuntimeError(f"lung mask atlas not found at {zip_path}")
            cache = _cache_path(zip_path) if use_disk_cache else None
            atlas = _read_cache(cache) if cache is not None and cache.is_file() else None
            if atlas is None:
                atlas = build_atlas(zip_path)
                if cache is not None:
                    _write_cache(cache, atlas)
            _atlas = atlas
        return _atlas
