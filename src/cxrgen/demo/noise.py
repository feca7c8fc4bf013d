"""Realistic *noisy* films for the demo corpora: files that ingestion accepts (sound DICOM/PNG/JPEG, chest headers,
grey, not constant) but whose pixels are not a usable chest radiograph — the kind of training noise Diff-CXR's latent
noise filter (LNFS, :mod:`cxrgen.stages.filter_noise`) must find. Unlike the bad files of
:mod:`cxrgen.demo.badfiles`, which ingestion rejects, noisy films reach the store, so only an image-level filter can
remove them.

Kinds (cycled so every kind appears; each a transform of the rendered phantom in display sense, values in [0, 1]):

- ``inverted``: negative film (wrong photometric interpretation / inverted export);
- ``rotated``: turned by 90, 180 or 270 degrees, or flipped upside down;
- ``burned_text``: heavy burned-in annotations: large text blocks, markers, rulers and a dose box;
- ``collimated``: severe collimation — only a small off-centre field exposed, the rest shuttered white or black;
- ``cropped``: a small part of the film blown up to the whole frame (wrong field of view / zoomed export);
- ``other_anatomy``: a non-chest image (pydicom-data's real extremity CR, CT slice or MR slice) stored with a chest
  radiograph's header and name (mislabelled study);
- ``blank``: an unexposed or saturated frame: flat grey with detector noise and a faint gradient.

Which items become noisy: :func:`plan_noise`, a seeded choice of ``round(fraction · n)`` of the sound (not bad)
items. The truth (source, path relative to the source root, kind) is collected on the :class:`NoiseLog` and written
by the demo builder to ``results/sources/_meta/<source>.noise.parquet`` — outside the native layout, so nothing the
pipeline reads can see it.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

K = TypeVar("K")

NOISE_KINDS: tuple[str, ...] = ("inverted", "rotated", "burned_text", "collimated", "cropped", "other_anatomy",
                                "blank")
TRUTH_COLUMNS = ("source", "rel_path", "kind")
_OTHER_ANATOMY = ("RG3_UNCR.dcm", "693_UNCR.dcm", "MR2_UNCR.dcm")  # extremity CR, CT slice, MR slice


@dataclass
class NoiseLog:
    """The noisy files written by one demo build (the ground truth of the LNFS evaluation)."""

    rows: list[dict] = field(default_factory=list)

    def add(self, source: str, rel_path: str, kind: str) -> None:
        self.rows.append({"source": source, "rel_path": rel_path, "kind": kind})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(TRUTH_COLUMNS)).sort_values("rel_path").reset_index(drop=True)


def plan_noise(keys: Sequence[K], fraction: float, rng: np.random.Generator, exclude: set | dict = frozenset()
               ) -> dict[K, str]:
    """Deterministic choice of ``round(fraction · n)`` of the ``keys`` not in ``exclude`` (the bad files) -> noise
    kind, kinds cycling through :data:`NOISE_KINDS` from a seeded start. No draw from ``rng`` when nothing is noisy."""
    eligible = [k for k in keys if k not in exclude]
    n = int(round(fraction * len(eligible)))
    if fraction <= 0 or n == 0:
        return {}
    chosen = np.sort(rng.choice(len(eligible), size=n, replace=False))
    start = int(rng.integers(len(NOISE_KINDS)))
    return {eligible[int(i)]: NOISE_KINDS[(start + j) % len(NOISE_KINDS)] for j, i in enumerate(chosen)}


def apply_noise(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The noisy version of a display-sense film in [0, 1] (float32; ``rotated`` by 90/270 degrees swaps the
    shape, every other kind keeps it)."""
    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if kind not in _TRANSFORMS:
        raise ValueError(f"noise kind {kind!r}; allowed: {', '.join(NOISE_KINDS)}")
    out = _TRANSFORMS[kind](image, rng)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _inverted(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 1.0 - image


def _rotated(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    choice = int(rng.integers(4))
    return np.flipud(image).copy() if choice == 3 else np.rot90(image, k=choice + 1).copy()


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=max(6, size))
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _burned_text(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape
    canvas = Image.fromarray(np.round(image * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    size = max(8, int(min(h, w) * rng.uniform(0.09, 0.14)))
    font = _font(size)
    words = ("PORTABLE", "SUPINE", "AP", "L", "R", "UPRIGHT", "STAT", "ICU", "BEDSIDE", "12:40", "9 cm", "x-table")
    for _ in range(int(rng.integers(5, 9))):  # text blocks over the lungs, many of them
        text = " ".join(rng.choice(words, size=int(rng.integers(1, 3))))
        x, y = int(rng.integers(0, max(1, w - size * 2))), int(rng.integers(0, max(1, h - size)))
        if rng.random() < 0.5:  # a filled label box behind the text, as burned-in dose/ID boxes are
            draw.rectangle((x - 2, y - 2, x + size * len(text) * 0.6, y + size * 1.2), fill=int(rng.integers(0, 40)))
        draw.text((x, y), text, fill=255, font=font)
    for _ in range(int(rng.integers(2, 4))):  # lead side markers: big bright squares
        s = int(min(h, w) * rng.uniform(0.08, 0.15))
        x, y = int(rng.integers(0, max(1, w - s))), int(rng.integers(0, max(1, h - s)))
        draw.rectangle((x, y, x + s, y + s), fill=255)
    y = int(rng.integers(h // 4, 3 * h // 4))  # a ruler across the film
    draw.line((0, y, w, y), fill=255, width=max(2, h // 40))
    for x in range(0, w, max(3, w // 16)):
        draw.line((x, y - h // 30, x, y + h // 30), fill=255, width=max(1, h // 80))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _collimated(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape
    fh, fw = int(h * rng.uniform(0.25, 0.45)), int(w * rng.uniform(0.25, 0.45))
    y0, x0 = int(rng.integers(0, h - fh + 1)), int(rng.integers(0, w - fw + 1))
    shutter = 0.97 if rng.random() < 0.6 else 0.03  # unexposed film is white; an electronic shutter paints black
    out = np.full_like(image, shutter)
    out += rng.normal(0.0, 0.01, size=image.shape).astype(np.float32)
    out[y0:y0 + fh, x0:x0 + fw] = image[y0:y0 + fh, x0:x0 + fw]
    return out


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    pil = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((shape[1], shape[0]), Image.Resampling.BILINEAR), dtype=np.float32)


def _cropped(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape
    frac = rng.uniform(0.25, 0.4)
    ch, cw = max(4, int(h * frac)), max(4, int(w * frac))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return _resize(image[y0:y0 + ch, x0:x0 + cw], (h, w))


@functools.cache
def _other_anatomy_images() -> tuple[np.ndarray, ...]:
    """pydicom-data's extremity CR (MONOCHROME1, inverted to display sense), CT and MR slices, scaled to [0, 1] by
    their 1st/99th percentiles and reduced to at most 512 px (cached)."""
    import pydicom

    spec = importlib.util.find_spec("data_store")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pydicom-data is not installed; noisy demo films use its non-chest images")
    data_dir = Path(list(spec.submodule_search_locations)[0]) / "data"
    out = []
    for name in _OTHER_ANATOMY:
        ds = pydicom.dcmread(data_dir / name)
        pixels = ds.pixel_array.astype(np.float32)
        lo, hi = np.percentile(pixels, [1, 99])
        pixels = np.clip((pixels - lo) / max(hi - lo, 1e-6), 0, 1)
        if str(ds.PhotometricInterpretation) == "MONOCHROME1":
            pixels = 1.0 - pixels
        step = max(1, int(np.ceil(max(pixels.shape) / 512)))
        out.append(pixels[::step, ::step].copy())
    return tuple(out)


def _other_anatomy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape
    source = _other_anatomy_images()[int(rng.integers(len(_OTHER_ANATOMY)))]
    sh, sw = source.shape
    frac = rng.uniform(0.55, 1.0)  # a random window, so no two noisy files share pixels
    ch, cw = max(8, int(sh * frac)), max(8, int(sw * frac))
    y0, x0 = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    crop = np.rot90(source[y0:y0 + ch, x0:x0 + cw], k=int(rng.integers(4)))
    out = _resize(crop, (h, w)) * rng.uniform(0.8, 1.0) + rng.uniform(0.0, 0.1)
    return out + rng.normal(0.0, 0.01, size=out.shape).astype(np.float32)


def _blank(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape
    level = rng.uniform(0.02, 0.12) if rng.random() < 0.5 else rng.uniform(0.88, 0.98)  # unexposed or saturated
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = ((np.cos(angle) * xx / w + np.sin(angle) * yy / h) - 0.5) * rng.uniform(0.02, 0.06)
    return level + gradient + rng.normal(0.0, 0.015, size=(h, w)).astype(np.float32)


_TRANSFORMS = {"inverted": _inverted, "rotated": _rotated, "burned_text": _burned_text, "collimated": _collimated,
               "cropped": _cropped, "other_anatomy": _other_anatomy, "blank": _blank}


def plan_for(ctx, source: str, keys: Sequence[K], bad: set | dict) -> dict[K, str]:
    """:func:`plan_noise` with the context's ``noise_fraction`` and the source's own seeded stream."""
    if ctx.noise_fraction <= 0:
        return {}
    return plan_noise(list(keys), ctx.noise_fraction, ctx.rng(source, "noise_plan"), exclude=bad)


def inject(ctx, source: str, key: object, kind: str | None, image: np.ndarray, rel_path: str) -> np.ndarray:
    """``image`` unchanged when ``kind`` is None; else its noisy version, recorded on ``ctx.noise`` under
    ``rel_path`` (the file's path relative to the source root, as the adapters list it)."""
    if kind is None:
        return image
    ctx.noise.add(source, rel_path, kind)
    return apply_noise(image, kind, ctx.rng(source, "noise", str(key)))
