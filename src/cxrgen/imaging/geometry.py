"""Geometry of preprocessing: pixel-spacing resampling, squaring (pad or crop) and anti-aliased resizing.

Resizing uses Pillow on mode "F" (float32) images. Pillow widens the filter support by the scale factor when
reducing, so every downsampling is anti-aliased. Measured on 1 core, 2500x2500 -> {1024, 256}: Lanczos 0.14 s,
bicubic 0.10 s, box 0.06 s; torch ``interpolate(antialias=True)`` is faster (0.04 s) but costs a multi-second torch
import in every preprocessing worker, so Pillow Lanczos is used. Since issue 16 :func:`preprocess` resamples only the
largest resolution from the film and the smaller ones from it (``chain``; benchmarks/README.md has the time saved and
the pixel difference).
"""

from __future__ import annotations

import math

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


def _canvas_placement(shape: tuple[int, int], spacing_mm: tuple[float, float], canvas_mm: float, size: int
                      ) -> tuple[tuple[float, float, float, float], int, int, int, int]:
    """Source box (left, top, right, bottom) and its place (top, left, height, width) on the ``size`` canvas."""
    h, w = shape
    out_mm = canvas_mm / size
    region = []
    for extent, pitch in ((h, spacing_mm[0]), (w, spacing_mm[1])):
        start = extent / 2 - canvas_mm / 2 / pitch  # canvas edge in source pixels (may be negative)
        lo, hi = max(0.0, start), min(float(extent), extent / 2 + canvas_mm / 2 / pitch)
        out_lo = round((lo - start) * pitch / out_mm)
        out_len = max(1, min(size - out_lo, round((hi - lo) * pitch / out_mm)))
        region.append((lo, hi, out_lo, out_len))
    (top, bottom, out_top, out_h), (left, right, out_left, out_w) = region
    return (left, top, right, bottom), out_top, out_left, out_h, out_w


def fixed_canvas(img: np.ndarray, spacing_mm: tuple[float, float], canvas_mm: float, size: int) -> np.ndarray:
    """Centre a square field of view of ``canvas_mm`` on the film and sample it at ``size`` pixels: every output pixel
    is exactly ``canvas_mm / size`` mm whatever the film's spacing and size (the film is cropped where it is larger
    than the canvas and zero-padded where it is smaller)."""
    box, top, left, height, width = _canvas_placement(img.shape, spacing_mm, canvas_mm, size)
    out = np.zeros((size, size), dtype=np.float32)
    out[top : top + height, left : left + width] = _resize(img, height, width, box=box)
    return out


#: a smaller output is resampled from a larger one (instead of from the film) when the larger one has at least this
#: many pixels per output pixel on both axes and is itself a reduction of the film (issue 16: one Lanczos pass over
#: the full film instead of one per resolution; max abs error vs the per-resolution pass in benchmarks/README.md)
CHAIN_MIN_FACTOR = 2


def _film_placement(shape: tuple[int, int], spacing_mm: tuple[float, float] | None, *,
                    target_spacing_mm: float | None, policy: str, canvas_mm: float | None, size: int
                    ) -> tuple[tuple[float, float, float, float], int, int, int, int]:
    """Source box (left, top, right, bottom) in film pixels and where its resampled content goes on the ``size``
    square: (top, left, height, width). The rest of the square is black."""
    if canvas_mm is not None and spacing_mm is not None:
        return _canvas_placement(shape, spacing_mm, canvas_mm, size)
    h, w = shape
    if spacing_mm is not None and target_spacing_mm is not None:
        rh, rw = _resampled_shape(shape, spacing_mm, target_spacing_mm)
    else:
        rh, rw = h, w
    sy, sx = h / rh, w / rw  # source pixels per resampled pixel
    if policy == "crop":
        side = min(rh, rw)
        top, left = (rh - side) // 2, (rw - side) // 2
        return (left * sx, top * sy, (left + side) * sx, (top + side) * sy), 0, 0, size, size
    side = max(rh, rw)
    # content keeps its aspect ratio: scale the resampled extent by size / side
    ch, cw = max(1, round(rh * size / side)), max(1, round(rw * size / side))
    return (0.0, 0.0, float(w), float(h)), (size - ch) // 2, (size - cw) // 2, ch, cw


def film_reduction_room(shape: tuple[int, int], spacing_mm: tuple[float, float] | None, *,
                        target_spacing_mm: float | None, policy: str, canvas_mm: float | None,
                        resolutions: list[int]) -> float:
    """Film pixels per output pixel of the largest resolution (the smaller of the two axes): how far the film could
    be reduced before :func:`preprocess` without any output being upsampled from it (issue 16, JPEG 2000 decoded at
    a reduced resolution level; :func:`cxrgen.imaging.decode.decode_image`'s ``reduction_room``)."""
    box, _, _, height, width = _film_placement(shape, spacing_mm, target_spacing_mm=target_spacing_mm, policy=policy,
                                               canvas_mm=canvas_mm, size=max(resolutions))
    return min((box[3] - box[1]) / height, (box[2] - box[0]) / width)


def _placement(decoded: DecodedImage, *, target_spacing_mm: float | None, policy: str, canvas_mm: float | None,
               size: int) -> tuple[tuple[float, float, float, float], int, int, int, int]:
    """:func:`_film_placement` of the decoded film with the box in the coordinates of ``_pixels_of(decoded)``: the
    film's own pixels, or those of a reduced decode with one pixel of edge padding (:mod:`cxrgen.imaging.j2k`)."""
    box, top, left, height, width = _film_placement(decoded.film_shape, decoded.spacing_mm,
                                                    target_spacing_mm=target_spacing_mm, policy=policy,
                                                    canvas_mm=canvas_mm, size=size)
    if decoded.reduction != 1:
        from cxrgen.imaging.j2k import film_to_level

        box = tuple(film_to_level(v, decoded.reduction) + _REDUCED_PAD for v in box)
    return box, top, left, height, width


#: edge pixels added around a reduced decode: its samples sit half a film pixel in from the box edges of the film
#: (:func:`cxrgen.imaging.j2k.film_to_level`), so the film's box reaches up to a quarter pixel past the reduced image
_REDUCED_PAD = 1


def _pixels_of(decoded: DecodedImage) -> np.ndarray:
    if decoded.reduction == 1:
        return decoded.pixels
    return np.pad(decoded.pixels, _REDUCED_PAD, mode="edge")


def _with_margin(img: np.ndarray, box: tuple[float, float, float, float], height: int, width: int, margin: int
                 ) -> tuple[np.ndarray, tuple[int, int]]:
    """``box`` resampled to (height, width) plus up to ``margin`` output pixels of the film around it on each side
    (fewer where the film ends); returns (array, (top, left) of the box's content in it). The content is the plain
    resampling of ``box`` (the output pixel centres are the same); the margin lets a smaller output resampled from
    it see past the box edge as a resampling from the film would."""
    left, top, right, bottom = box
    sy, sx = (bottom - top) / height, (right - left) / width
    h, w = img.shape
    mt, mb = min(margin, int(top / sy + 1e-9)), min(margin, int((h - bottom) / sy + 1e-9))
    ml, mr = min(margin, int(left / sx + 1e-9)), min(margin, int((w - right) / sx + 1e-9))
    if mt == mb == ml == mr == 0:
        full = box == (0.0, 0.0, float(w), float(h))
        return _resize(img, height, width, None if full else box), (0, 0)
    wide = (left - ml * sx, top - mt * sy, right + mr * sx, bottom + mb * sy)
    return _resize(img, height + mt + mb, width + ml + mr, box=wide), (mt, ml)


def preprocess(decoded: DecodedImage, *, target_spacing_mm: float | None, policy: str,
               resolutions: list[int], canvas_mm: float | None = None, chain: bool = True) -> dict[int, np.ndarray]:
    """Spacing resampling -> square (pad/crop) -> resize, as uint16 (0..65535) arrays keyed by resolution.

    Equivalent to ``resize_square(to_square(resample_to_spacing(...)))`` but with a single interpolation per
    resolution (faster and sharper). Note that isotropic resampling does not change the square output; it matters
    only for anisotropic spacing. With ``canvas_mm`` (and a known spacing) the output is a fixed physical field of
    view instead (:func:`fixed_canvas`), which makes pixel size identical across films; films without spacing fall
    back to ``policy``.

    With ``chain`` (issue 16) the largest resolution is resampled from the film and each smaller one from it when it
    has at least :data:`CHAIN_MIN_FACTOR` times the pixels on both axes and is itself a reduction of the film: the
    same film region (with a margin of film around it, so edges see what a resampling from the film sees), one
    Lanczos pass over the full film instead of one per resolution. ``chain=False`` resamples every resolution from
    the film (the behaviour before issue 16)."""
    _check_policy(policy)
    img = _pixels_of(decoded)
    smallest = min(resolutions)
    parents: list[tuple[np.ndarray, tuple, tuple[int, int], tuple[int, int]]] = []  # (array, box, origin, shape)
    out: dict[int, np.ndarray] = {}
    for size in sorted(set(resolutions), reverse=True):
        box, top, left, height, width = _placement(decoded, target_spacing_mm=target_spacing_mm, policy=policy,
                                                   canvas_mm=canvas_mm, size=size)
        parent = None
        for candidate in parents if chain else ():  # largest first: keep the smallest that qualifies
            _, parent_box, _, (ph, pw) = candidate
            if parent_box == box and ph >= CHAIN_MIN_FACTOR * height and pw >= CHAIN_MIN_FACTOR * width:
                parent = candidate
        if parent is not None:
            array, _, (pt, pl), (ph, pw) = parent
            content = _resize(array, height, width, box=(pl, pt, pl + pw, pt + ph))
        else:
            box_h, box_w = box[3] - box[1], box[2] - box[0]
            reduces = height <= box_h and width <= box_w
            margin = math.ceil(3 * max(height, width) / smallest) + 2 if chain and reduces and size > smallest else 0
            array, (pt, pl) = _with_margin(img, box, height, width, margin)
            content = array[pt : pt + height, pl : pl + width]
            if reduces:
                parents.append((array, box, (pt, pl), (height, width)))
        if (height, width) == (size, size):
            out[size] = to_uint16(content)
        else:
            square = np.zeros((size, size), dtype=np.float32)
            square[top : top + height, left : left + width] = content
            out[size] = to_uint16(square)
    return {size: out[size] for size in resolutions}
