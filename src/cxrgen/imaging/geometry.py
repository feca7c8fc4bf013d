"""Geometry of preprocessing: pixel-spacing resampling, squaring (pad or crop) and anti-aliased resizing.

Resizing uses Pillow on mode "F" (float32) images. Pillow widens the filter support by the scale factor when
reducing, so every downsampling is anti-aliased. Measured on 1 core, 2500x2500 -> {1024, 256}: Lanczos 0.14 s,
bicubic 0.10 s, box 0.06 s; torch ``interpolate(antialias=True)`` is faster (0.04 s) but costs a multi-second torch
import in every preprocessing worker, so Pillow Lanczos is used.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from cxrgen.imaging.decode import DecodedImage

SQUARE_POLICIES = ("pad", "crop")  # MedCoDi-M pads to square; Cheff/MaCheX resize the short side + centre crop
SPACING_TOLERANCE_MM = 1e-3
_RESAMPLE_DOWN = Image.Resampling.LANCZOS
_RESAMPLE_UP = Image.Resampling.BICUBIC


def _resize(img: np.ndarray, height: int, width: int, box: tuple[float, float, float, float] | None = None
            ) -> np.ndarray:
    """Resize a float image (or its ``box`` = (left, top, right, bottom) region) to (height, width)."""
    src_h, src_w = (box[3] - box[1], box[2] - box[0]) if box else img.shape
    shrinking = height < src_h or width < src_w
    pil = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32))
    out = pil.resize((int(width), int(height)), _RESAMPLE_DOWN if shrinking else _RESAMPLE_UP, box=box)
    return np.asarray(out, dtype=np.float32)


def resample_to_spacing(img: np.ndarray, spacing_mm: tuple[float, float], target_mm: float) -> np.ndarray:
    """Resample so that one pixel is ``target_mm`` on both axes; no-op when already there (within 1e-3 mm)."""
    row_mm, col_mm = spacing_mm
    if abs(row_mm - target_mm) < SPACING_TOLERANCE_MM and abs(col_mm - target_mm) < SPACING_TOLERANCE_MM:
        return img
    height, width = _resampled_shape(img.shape, spacing_mm, target_mm)
    return _resize(img, height, width)


def _resampled_shape(shape: tuple[int, ...], spacing_mm: tuple[float, float], target_mm: float) -> tuple[int, int]:
    return (max(1, round(shape[0] * spacing_mm[0] / target_mm)), max(1, round(shape[1] * spacing_mm[1] / target_mm)))


def _check_policy(policy: str) -> None:
    if policy not in SQUARE_POLICIES:
        raise ValueError(f"square policy must be one of {SQUARE_POLICIES}, got {policy!r}")


def to_square(img: np.ndarray, policy: str) -> np.ndarray:
    """'pad': zero-pad (black) to the long side, content centred; 'crop': centre crop to the short side."""
    _check_policy(policy)
    h, w = img.shape
    if h == w:
        return img
    if policy == "crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return img[top : top + side, left : left + side]
    side = max(h, w)
    out = np.zeros((side, side), dtype=img.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = img
    return out


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased resize of a square image to ``size`` x ``size``."""
    if img.shape[0] != img.shape[1]:
        raise ValueError(f"resize_square needs a square image, got {img.shape}")
    if img.shape[0] == size:
        return img.astype(np.float32, copy=False)
    return _resize(img, size, size)


def to_uint16(img: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(img, 0.0, 1.0) * 65535.0).astype(np.uint16)


def fixed_canvas(img: np.ndarray, spacing_mm: tuple[float, float], canvas_mm: float, size: int) -> np.ndarray:
    """Centre a square field of view of ``canvas_mm`` on the film and sample it at ``size`` pixels: every output pixel
    is exactly ``canvas_mm / size`` mm whatever the film's spacing and size (the film is cropped where it is larger
    than the canvas and zero-padded where it is smaller)."""
    h, w = img.shape
    out_mm = canvas_mm / size
    out = np.zeros((size, size), dtype=np.float32)
    region = []
    for extent, pitch in ((h, spacing_mm[0]), (w, spacing_mm[1])):
        start = extent / 2 - canvas_mm / 2 / pitch  # canvas edge in source pixels (may be negative)
        lo, hi = max(0.0, start), min(float(extent), extent / 2 + canvas_mm / 2 / pitch)
        out_lo = round((lo - start) * pitch / out_mm)
        out_len = max(1, min(size - out_lo, round((hi - lo) * pitch / out_mm)))
        region.append((lo, hi, out_lo, out_len))
    (top, bottom, out_top, out_h), (left, right, out_left, out_w) = region
    out[out_top : out_top + out_h, out_left : out_left + out_w] = _resize(img, out_h, out_w,
                                                                          box=(left, top, right, bottom))
    return out


def preprocess(decoded: DecodedImage, *, target_spacing_mm: float | None, policy: str,
               resolutions: list[int], canvas_mm: float | None = None) -> dict[int, np.ndarray]:
    """Spacing resampling -> square (pad/crop) -> resize, as uint16 (0..65535) arrays keyed by resolution.

    Equivalent to ``resize_square(to_square(resample_to_spacing(...)))`` but with a single interpolation per
    resolution straight from the decoded pixels (faster and sharper). Note that isotropic resampling does not change
    the square output; it matters only for anisotropic spacing. With ``canvas_mm`` (and a known spacing) the output
    is a fixed physical field of view instead (:func:`fixed_canvas`), which makes pixel size identical across films;
    films without spacing fall back to ``policy``."""
    _check_policy(policy)
    img = decoded.pixels
    if canvas_mm is not None and decoded.spacing_mm is not None:
        return {size: to_uint16(fixed_canvas(img, decoded.spacing_mm, canvas_mm, size)) for size in resolutions}
    h, w = img.shape
    if decoded.spacing_mm is not None and target_spacing_mm is not None:
        rh, rw = _resampled_shape(img.shape, decoded.spacing_mm, target_spacing_mm)
    else:
        rh, rw = h, w
    sy, sx = h / rh, w / rw  # source pixels per resampled pixel
    out: dict[int, np.ndarray] = {}
    for size in resolutions:
        if policy == "crop":
            side = min(rh, rw)
            top, left = (rh - side) // 2, (rw - side) // 2
            box = (left * sx, top * sy, (left + side) * sx, (top + side) * sy)
            square = _resize(img, size, size, box=box)
        else:
            side = max(rh, rw)
            # content keeps its aspect ratio: scale the resampled extent by size / side
            ch, cw = max(1, round(rh * size / side)), max(1, round(rw * size / side))
            square = np.zeros((size, size), dtype=np.float32)
            top, left = (size - ch) // 2, (size - cw) // 2
            square[top : top + ch, left : left + cw] = _resize(img, ch, cw)
        out[size] = to_uint16(square)
    return out
