"""Decode one source image (DICOM, PNG or JPEG) to a float32 [0, 1] array in MONOCHROME2 display sense.

DICOM pipeline (MedCoDi-M §3.1, Cheff §4; see the project notes on the seeds' public code (seed-implementations) for what their public code
skips): validity checks -> stored values -> Modality LUT (rescale or LUT sequence) -> VOI (LUT sequence or the first
window, honouring VOILUTFunction) or a bit-depth / min-max mapping -> inversion for MONOCHROME1 / INVERSE.
Every problem with the file itself raises :class:`RejectedImage`; nothing else escapes for a bad file.

Every intensity step maps each stored value on its own, so for 8- and 16-bit integer data the steps run once on a
table of all possible codes and the image is one lookup (:class:`_Domain`); the pixels are bit-identical to running
the steps on the whole image (``lookup=False``, tested) at a fraction of the cost (issue 16).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrgen.imaging.errors import RejectedImage, RejectReason

INTENSITY_MODES = ("voi", "bit_depth", "minmax")
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR")
MIN_SIDE_PX = 32
MAX_ASPECT_RATIO = 3.0
# Words in BodyPartExamined that mean a chest film ("TORAX": Spanish/Portuguese sites, e.g. PadChest, BRAX).
_CHEST_WORDS = frozenset({"CHEST", "THORAX", "TORAX", "LUNG", "LUNGS", "PULMONARY", "PULMON", "TX"})
# Words that clearly name another body part (DICOM PS3.16 CID 4031 terms and common vendor spellings).
_NON_CHEST_WORDS = frozenset({
    "EXTREMITY", "HAND", "FINGER", "THUMB", "WRIST", "FOREARM", "ELBOW", "ARM", "HUMERUS", "SHOULDER", "CLAVICLE",
    "KNEE", "LEG", "FEMUR", "TIBIA", "FIBULA", "ANKLE", "FOOT", "TOE", "HEEL", "CALCANEUS", "HIP", "PELVIS",
    "SKULL", "HEAD", "BRAIN", "FACE", "SINUS", "JAW", "MANDIBLE", "NECK", "CSPINE", "TSPINE", "LSPINE", "SPINE",
    "SACRUM", "COCCYX", "ABDOMEN", "ABD", "KUB", "BREAST", "DENTAL", "TEETH",
})
_SPACING_SOURCES = ("PixelSpacing", "ImagerPixelSpacing", "hint")


@dataclass
class DecodedImage:
    pixels: np.ndarray  # float32 (H, W) in [0, 1], MONOCHROME2 display sense (bone bright)
    spacing_mm: tuple[float, float] | None  # (row, col)
    spacing_source: str | None  # one of _SPACING_SOURCES or None
    meta: dict[str, Any] = field(default_factory=dict)  # whitelisted technical fields only, never PHI
    #: film pixels per pixel of ``pixels`` on each axis (2^level of a JPEG 2000 film decoded at a reduced resolution
    #: level, :mod:`cxrgen.imaging.j2k`); ``spacing_mm`` and ``film_shape`` stay those of the film
    reduction: int = 1

    @property
    def film_shape(self) -> tuple[int, int]:
        """(rows, cols) of the film itself."""
        if self.reduction == 1:
            return int(self.pixels.shape[0]), int(self.pixels.shape[1])
        return int(self.meta["rows"]), int(self.meta["cols"])


def decode_image(
    path: Path,
    *,
    file_format: str | None = None,
    bits_stored_hint: float | None = None,
    spacing_hint_mm: float | None = None,
    intensity: str = "voi",
    check_body_part: bool = True,
    lookup: bool = True,
    reduction_room: Callable[[int, int, tuple[float, float] | None], float] | None = None,
) -> DecodedImage:
    """Decode ``path``; ``file_format`` is 'dicom', 'png' or 'jpg' (sniffed from the bytes when None). ``lookup=False``
    runs the intensity steps on every pixel instead of on a table of codes (same pixels, slower; for tests).

    ``reduction_room(rows, cols, spacing_mm)``: how many film pixels per output pixel the caller's outputs leave
    (:func:`cxrgen.imaging.geometry.film_reduction_room`); with it a JPEG 2000 film is decoded at the coarsest
    resolution level that keeps at least :data:`REDUCED_DECODE_MIN_FACTOR` pixels per output pixel
    (:mod:`cxrgen.imaging.j2k`; ``DecodedImage.reduction``). None = always the full film.

    Raises RejectedImage for any file that cannot or must not be used, ValueError for bad arguments and
    FileNotFoundError when ``path`` does not exist (an ingestion bug, not a bad file)."""
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {intensity!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    bits_hint = _finite_or_none(bits_stored_hint)
    spacing_hint = _finite_or_none(spacing_hint_mm)
    fmt = _normalise_format(file_format) if file_format is not None else _sniff_format(path)
    try:
        if fmt == "dicom":
            return _decode_dicom(path, intensity, spacing_hint, check_body_part, lookup, reduction_room)
        return _decode_raster(path, bits_hint, spacing_hint, lookup)
    except (RejectedImage, MemoryError):
        raise
    except Exception as exc:  # any decoder failure on a bad file is a rejection, never a crash
        raise RejectedImage(RejectReason.UNREADABLE, f"{type(exc).__name__}: {exc}"[:300]) from exc


# --------------------------------------------------------------------------------------------------- helpers


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0 else None


def _normalise_format(file_format: str) -> str:
    fmt = file_format.lower().lstrip(".")
    aliases = {"dcm": "dicom", "dicom": "dicom", "png": "png", "jpg": "jpg", "jpeg": "jpg"}
    if fmt not in aliases:
        raise ValueError(f"file_format must be 'dicom', 'png' or 'jpg', got {file_format!r}")
    return aliases[fmt]


def _sniff_format(path: Path) -> str:
    with path.open("rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8"):
        return "jpg"
    # unknown bytes: let the decoder named by the suffix reject it as UNREADABLE
    return {".png": "png", ".jpg": "jpg", ".jpeg": "jpg"}.get(path.suffix.lower(), "dicom")


def _check_geometry(rows: int, cols: int) -> None:
    if min(rows, cols) < MIN_SIDE_PX:
        raise RejectedImage(RejectReason.DEGENERATE_IMAGE, f"{rows}x{cols} px is smaller than {MIN_SIDE_PX} px")
    if max(rows, cols) / min(rows, cols) > MAX_ASPECT_RATIO:
        raise RejectedImage(RejectReason.DEGENERATE_IMAGE, f"aspect ratio of {rows}x{cols} exceeds {MAX_ASPECT_RATIO}")


def _check_not_constant(arr: np.ndarray, what: str) -> None:
    if arr.dtype.kind not in "ui" and not np.isfinite(arr).all():
        raise RejectedImage(RejectReason.UNREADABLE, f"{what} contains NaN or infinity")
    if arr.max() <= arr.min():
        raise RejectedImage(RejectReason.DEGENERATE_IMAGE, f"{what} is constant ({float(arr.min())})")


class _Domain:
    """Where the per-value intensity steps are evaluated. For 8/16-bit integer images: ``values`` is every code from
    the dtype's lowest code up to the image maximum, and :meth:`image` maps a table over those codes to the image by
    one lookup. Otherwise ``values`` is the image itself and :meth:`image` returns its argument."""

    def __init__(self, stored: np.ndarray, lookup: bool = True):
        self.stored = stored
        self.index: np.ndarray | None = None
        self.offset = 0
        self._used: np.ndarray | None = None
        if lookup and stored.dtype.kind in "ui" and stored.dtype.itemsize <= 2 and stored.size:
            self.lo, self.hi = int(stored.min()), int(stored.max())
            unsigned = np.dtype(f"u{stored.dtype.itemsize}")
            if stored.dtype.kind == "u" or self.lo >= 0:
                self.index = stored.view(unsigned)
            else:  # two's complement -> offset binary: code c sits at index c + 2^(bits-1)
                half = 1 << (8 * stored.dtype.itemsize - 1)
                self.index = stored.view(unsigned) ^ unsigned.type(half)
                self.offset = -half
            # the stored dtype, so pydicom's LUT functions see the same dtype as with the image
            self.values: np.ndarray = np.arange(self.offset, self.hi + 1, dtype=stored.dtype)
        else:
            self.values = stored

    def image(self, table: np.ndarray) -> np.ndarray:
        """``table`` (a per-value function of :attr:`values`) at every pixel."""
        return table if self.index is None else table[self.index]

    def _over_pixels(self, table: np.ndarray) -> np.ndarray:
        """The entries of ``table`` that occur in the image (any order, duplicates allowed)."""
        segment = table[self.lo - self.offset :]
        steps = np.diff(segment)
        if segment.size < 3 or (steps >= 0).all() or (steps <= 0).all():
            return segment[[0, -1]]  # monotone: the image's own min and max codes give the extremes
        if self._used is None:
            self._used = np.bincount(self.index.ravel(), minlength=len(table)) > 0
        return table[self._used]

    def extremes(self, table: np.ndarray) -> tuple[float, float]:
        """(min, max) of ``table`` over the image's pixels."""
        values = table if self.index is None else self._over_pixels(table)
        return float(values.min()), float(values.max())

    def varies(self, table: np.ndarray) -> bool:
        """False when ``table`` is constant over the image's pixels."""
        values = table if self.index is None else self._over_pixels(table)
        return bool(values.max() > values.min())


def _to_unit(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly to [0, 1] (hi < lo flips), clip, float32."""
    out = (np.asarray(arr, dtype=np.float64) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def body_part_is_chest(value: str) -> bool:
    """False only when BodyPartExamined clearly names a non-chest part; empty or unknown values are accepted."""
    words = set(re.split(r"[^A-Z]+", value.upper())) - {""}
    if not words or words & _CHEST_WORDS:
        return True
    return not words & _NON_CHEST_WORDS


# --------------------------------------------------------------------------------------------------- DICOM


def _decode_dicom(path: Path, intensity: str, spacing_hint: float | None, check_body_part: bool,
                  lookup: bool = True, reduction_room=None) -> DecodedImage:
    import pydicom
    from pydicom.pixels.decoders.base import get_decoder

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pydicom.dcmread(path, force=False)
    _check_complete(ds, path, [str(w.message) for w in caught])
    ts_uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts_uid is None or len(ds) == 0:
        raise RejectedImage(RejectReason.UNREADABLE, "no Transfer Syntax UID in the file meta or an empty data set")
    if "PixelData" not in ds:
        raise RejectedImage(RejectReason.NO_PIXEL_DATA, "no (7FE0,0010) Pixel Data element")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise RejectedImage(RejectReason.MULTI_FRAME, f"NumberOfFrames={frames}")
    modality = str(ds.get("Modality") or "").strip().upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise RejectedImage(RejectReason.WRONG_MODALITY, f"Modality={modality}")
    body_part = str(ds.get("BodyPartExamined") or "").strip()
    if check_body_part and not body_part_is_chest(body_part):
        raise RejectedImage(RejectReason.WRONG_BODY_PART, f"BodyPartExamined={body_part}")
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    samples = int(ds.get("SamplesPerPixel") or 1)
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or samples != 1:
        raise RejectedImage(RejectReason.UNSUPPORTED_PHOTOMETRIC, f"{photometric or 'missing'}, {samples} samples")

    try:
        decoder_ok = get_decoder(ts_uid).is_available
    except NotImplementedError:
        decoder_ok = False
    if not decoder_ok:
        raise RejectedImage(RejectReason.UNSUPPORTED_TRANSFER_SYNTAX, f"{ts_uid.name} ({ts_uid})")

    rows, cols = int(ds.Rows), int(ds.Columns)
    _check_geometry(rows, cols)
    spacing, spacing_source = _dicom_spacing(ds, spacing_hint)
    reduced = _reduced_j2k(ds, ts_uid, spacing, reduction_room)
    if reduced is not None:
        stored, reduction = reduced
    else:
        reduction = 1
        stored = _pixel_array(ds, ts_uid)  # sign-extended by pydicom when PixelRepresentation == 1
        if stored.shape != (rows, cols):
            raise RejectedImage(RejectReason.UNREADABLE, f"decoded shape {stored.shape} != header {rows}x{cols}")
    _check_not_constant(stored, "stored pixel data")

    domain = _Domain(stored, lookup)
    table, voi_meta = _dicom_intensity(domain, ds, intensity)
    # DX requires PresentationLUTShape INVERSE together with MONOCHROME1 (PS3.3 C.8.11.3.1.1), i.e. both describe the
    # SAME inversion: invert exactly once when either is present. (IU-Xray: all 572 INVERSE files are MONOCHROME1.)
    lut_shape = str(ds.get("PresentationLUTShape") or "").strip().upper()
    inverted = photometric == "MONOCHROME1" or lut_shape == "INVERSE"
    if inverted:
        table = 1.0 - table
    pixels = domain.image(table)

    meta = {
        "file_format": "dicom",
        "modality": modality or None,
        "photometric": photometric,
        "bits_stored": int(ds.get("BitsStored") or 0) or None,
        "bits_allocated": int(ds.get("BitsAllocated") or 0) or None,
        "pixel_representation": int(ds.get("PixelRepresentation") or 0),
        "transfer_syntax": ts_uid.name,
        "rows": rows,
        "cols": cols,
        "view_position": str(ds.get("ViewPosition") or "").strip().upper() or None,
        "body_part": body_part.upper() or None,
        "manufacturer": str(ds.get("Manufacturer") or "").strip() or None,
        "presentation_lut_shape": lut_shape or None,
        "inverted": inverted,
        "decode_reduction": reduction,
        **voi_meta,
    }
    return DecodedImage(pixels=pixels, spacing_mm=spacing, spacing_source=spacing_source, meta=meta,
                        reduction=reduction)


#: JPEG 2000 transfer syntaxes (lossless only, and lossy) that may be decoded at a reduced resolution level
J2K_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
#: a reduced level is used only when it keeps at least this many of its pixels per output pixel on both axes: the
#: outputs stay Lanczos reductions of it and the wavelet low-pass (which aliases more than Lanczos) is never the
#: output's only anti-aliasing. Demo J2K films at 128 px (max abs / mean abs difference to a full decode, levels of
#: 65535): 1.0 -> 2654 / 75.0, 1.25 -> 1828 / 66.0, 2.0 -> 682 / 6.7; 1.25 keeps level 1 for full-size films
#: (~3,000 px) at 1024 px, where it gives max 816 / mean 63 (benchmarks/README.md §1)
REDUCED_DECODE_MIN_FACTOR = 1.25


def _reduced_j2k(ds, ts_uid, spacing, reduction_room) -> tuple[np.ndarray, int] | None:
    """(stored values at the coarsest usable JPEG 2000 resolution level, film pixels per pixel), or None when the
    film is to be decoded in full (not JPEG 2000, signed, no room, an unusual codestream or any decoding problem:
    the full decode then decides whether the file is readable)."""
    if reduction_room is None or str(ts_uid) not in J2K_TRANSFER_SYNTAXES:
        return None
    if int(ds.get("PixelRepresentation") or 0) != 0:
        return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    room = float(reduction_room(rows, cols, spacing))
    level = int(math.floor(math.log2(room / REDUCED_DECODE_MIN_FACTOR))) if room >= 2 * REDUCED_DECODE_MIN_FACTOR \
        else 0
    if level < 1:
        return None
    from pydicom.encaps import generate_frames

    from cxrgen.imaging import j2k

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        if not j2k.ends_complete(frame):
            return None
        header = j2k.read_header(frame)
        level = min(level, j2k.usable_levels(header))
        if level < 1 or (header.height, header.width) != (rows, cols):
            return None
        stored = j2k.decode_level(frame, level)
    except Exception:  # noqa: BLE001 (any problem: the full decode path decides)
        return None
    if int(ds.get("BitsAllocated") or 16) > 8:
        stored = stored.astype(np.uint16, copy=False)
    return stored, 1 << level


#: decoder plugin tried first where pydicom has several for a transfer syntax: on the benchmark films pylibjpeg decodes
#: JPEG 2000 lossless in ~0.78x the CPU time of pydicom's default (gdcm) with identical pixels (benchmarks/README.md)
PREFERRED_PLUGIN = "pylibjpeg"


def _pixel_array(ds, ts_uid) -> np.ndarray:
    """``ds.pixel_array`` through :data:`PREFERRED_PLUGIN` when it is one of several available decoders, falling back
    to pydicom's own choice (every available plugin in turn) if that plugin fails on the file."""
    from pydicom.pixels.decoders.base import get_decoder

    try:
        plugins = get_decoder(ts_uid).available_plugins
    except NotImplementedError:
        plugins = ()
    if PREFERRED_PLUGIN in plugins and len(plugins) > 1:
        try:
            ds.pixel_array_options(decoding_plugin=PREFERRED_PLUGIN)
            return ds.pixel_array
        except Exception:  # noqa: BLE001 (any decoder error: let the other plugins try)
            ds.pixel_array_options(decoding_plugin="")
    return ds.pixel_array


def _check_complete(ds, path: Path, warning_messages: list[str]) -> None:
    """pydicom silently keeps short element values and drops cut-off trailing elements; a truncated file must be
    UNREADABLE rather than e.g. NO_PIXEL_DATA."""
    if any("End of file" in m or "truncat" in m.lower() for m in warning_messages):
        raise RejectedImage(RejectReason.UNREADABLE, "truncated file (end of file inside an element)")
    end = 0
    tags = list(ds.keys())  # tags, not `for elem in ds`, which would convert every raw element
    for tag in tags:
        raw = ds.get_item(tag)
        if not getattr(raw, "is_raw", False) or raw.length == 0xFFFFFFFF:
            continue
        if raw.value is not None and len(raw.value) < raw.length:
            raise RejectedImage(RejectReason.UNREADABLE, f"truncated file: {tag} has {len(raw.value)} of "
                                                         f"{raw.length} bytes")
        end = max(end, raw.value_tell + raw.length)
    size = path.stat().st_size
    if 0 < size - end < 8:  # pydicom ignores a cut-off element header (< 8 bytes) at the end of the file
        with path.open("rb") as fh:
            fh.seek(end)
            if fh.read().strip(b"\0"):
                raise RejectedImage(RejectReason.UNREADABLE, "truncated file (partial element header at the end)")


def _float_or_none(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _first(value: Any) -> Any:
    """First item of a multi-valued DICOM element, or the value itself."""
    if isinstance(value, str | bytes) or not hasattr(value, "__getitem__"):
        return value
    return value[0] if len(value) else None


def _stored_range(ds) -> tuple[int, int]:
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation") or 0) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _dicom_intensity(domain: _Domain, ds, intensity: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Modality LUT then the requested VOI / normalisation of ``domain.values``; returns ([0, 1] float32 before
    inversion, meta)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    has_modality_lut = bool(ds.get("ModalityLUTSequence"))
    slope = _float_or_none(ds.get("RescaleSlope"))
    intercept = _float_or_none(ds.get("RescaleIntercept"))
    if not has_modality_lut and (slope is None or intercept is None or slope == 0):
        # an incomplete or zero rescale is treated as identity (pydicom would otherwise produce garbage)
        for keyword in ("RescaleSlope", "RescaleIntercept"):
            if keyword in ds:
                del ds[keyword]
        slope, intercept = None, None
    values = apply_modality_lut(domain.values, ds)
    lo, hi = _stored_range(ds)
    if has_modality_lut:
        possible = apply_modality_lut(np.arange(lo, hi + 1, dtype=np.int64), ds)
    else:
        possible = apply_modality_lut(np.array([lo, hi], dtype=np.int64), ds)
    out_lo, out_hi = float(np.min(possible)), float(np.max(possible))

    meta: dict[str, Any] = {
        "rescale_slope": slope,
        "rescale_intercept": intercept,
        "modality_lut_sequence": has_modality_lut,
        "window": None,
        "voi_lut_function": None,
        "voi_source": None,
    }
    mode = intensity
    if mode == "voi":
        pixels = _apply_voi(values, ds, meta, apply_voi_lut, domain)
        if pixels is None:
            mode = "bit_depth"  # the file carries no usable VOI
    if mode == "bit_depth":
        pixels = _to_unit(values, out_lo, out_hi)
    elif mode == "minmax":  # Cheff/MaCheX `machex.py`: per-image min-max of the stored values
        pixels = _to_unit(values, *domain.extremes(values))
    meta["intensity_mode_used"] = mode
    return pixels, meta


def _apply_voi(values: np.ndarray, ds, meta: dict[str, Any], apply_voi_lut, domain: _Domain) -> np.ndarray | None:
    """VOI LUT Sequence, else the first WindowCenter/Width; output range mapped to [0, 1]. None when unusable."""
    if ds.get("VOILUTSequence"):
        n_entries, first_mapped = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor[:2])
        # the LUT's own value range is its output range (LUTDescriptor bit counts are often wrong in practice)
        lut = apply_voi_lut(np.arange(first_mapped, first_mapped + (n_entries or 2**16)), ds, index=0)
        if lut.max() > lut.min():
            voi = apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0)
            out = _to_unit(voi, float(lut.min()), float(lut.max()))
            if domain.varies(out):
                meta["voi_source"] = "lut_sequence"
                return out
    center = _float_or_none(_first(ds.get("WindowCenter")))
    width = _float_or_none(_first(ds.get("WindowWidth")))
    if center is None or width is None or width <= 0:
        return None
    if ds.get("VOILUTSequence"):
        del ds["VOILUTSequence"]  # the sequence was unusable: make pydicom fall through to the window
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    ds.VOILUTFunction = function
    ds.WindowCenter, ds.WindowWidth = center, width
    if function == "LINEAR" and width < 1:
        return None
    # pydicom scales the window output to a bit-depth-dependent range; probing it with extreme inputs yields exactly
    # that range (LINEAR clips, SIGMOID saturates), whatever the rescale/LUT configuration.
    with np.errstate(over="ignore"):
        y_lo, y_hi = apply_voi_lut(np.array([-1e300, 1e300]), ds, index=0)
    windowed = apply_voi_lut(np.asarray(values, dtype=np.float64), ds, index=0)
    out = _to_unit(windowed, float(y_lo), float(y_hi))
    if not domain.varies(out):
        return None  # the window misses the data entirely: fall back rather than emit a blank image
    meta.update(window=[center, width], voi_lut_function=function, voi_source="window")
    return out


def _positive_pair(value: Any) -> tuple[float, float] | None:
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(pair) != 2 or not all(math.isfinite(v) and v > 0 for v in pair):
        return None
    return pair  # type: ignore[return-value]


def _dicom_spacing(ds, hint: float | None) -> tuple[tuple[float, float] | None, str | None]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        pair = _positive_pair(ds.get(keyword))
        if pair is not None:
            return pair, keyword
    if hint is not None:
        return (hint, hint), "hint"
    return None, None


# --------------------------------------------------------------------------------------------------- PNG / JPEG


def _decode_raster(path: Path, bits_hint: float | None, spacing_hint: float | None, lookup: bool = True
                   ) -> DecodedImage:
    from PIL import Image

    with Image.open(path) as img:
        img.load()  # raises OSError on truncated data
        mode, fmt = img.mode, (img.format or "").upper()
        _check_geometry(img.height, img.width)
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            domain = _Domain(np.asarray(img), lookup)
            # PadChest stores 10/12-bit data in 16-bit PNGs: divide by the TRUE maximum, not 65535
            bits = int(bits_hint) if bits_hint is not None else 16
            table = np.clip(domain.values.astype(np.float64) / (2**bits - 1), 0.0, 1.0).astype(np.float32)
        elif mode in ("L", "LA", "1", "P", "RGB", "RGBA"):
            if mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                mode = img.mode
            if mode == "1":
                img, mode = img.convert("L"), "L"
            arr = np.asarray(img)
            if mode in ("RGB", "RGBA"):
                rgb = arr[..., :3].astype(np.int16)
                # exact for PNG; JPEG chroma rounding may leave a grey image off by a level or two
                if np.abs(rgb - rgb[..., :1]).max() > 2:
                    raise RejectedImage(RejectReason.UNSUPPORTED_PHOTOMETRIC, f"{fmt} {mode} with colour content")
                arr = rgb.mean(axis=-1)
            elif mode == "LA":
                arr = arr[..., 0]
            bits = 8
            domain = _Domain(arr, lookup)
            table = (domain.values.astype(np.float64) / 255.0).astype(np.float32)
        else:
            raise RejectedImage(RejectReason.UNSUPPORTED_PHOTOMETRIC, f"{fmt} mode {mode}")
    if domain.index is None:
        pixels = domain.image(table)
        _check_not_constant(pixels, "image")
    else:  # the same check on the table entries the image uses
        if not np.isfinite(table).all():
            raise RejectedImage(RejectReason.UNREADABLE, "image contains NaN or infinity")
        if not domain.varies(table):
            raise RejectedImage(RejectReason.DEGENERATE_IMAGE, f"image is constant ({domain.extremes(table)[0]})")
        pixels = domain.image(table)
    spacing = (spacing_hint, spacing_hint) if spacing_hint is not None else None
    meta = {
        "file_format": "png" if fmt == "PNG" else "jpg" if fmt == "JPEG" else fmt.lower(),
        "pil_mode": mode,
        "bits_stored": bits,
        "rows": int(pixels.shape[0]),
        "cols": int(pixels.shape[1]),
        "photometric": "MONOCHROME2",
        "intensity_mode_used": "bit_depth",
        "inverted": False,
    }
    return DecodedImage(pixels=pixels, spacing_mm=spacing, spacing_source="hint" if spacing else None, meta=meta)
