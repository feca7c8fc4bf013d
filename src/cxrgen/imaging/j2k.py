"""JPEG 2000 at a reduced resolution level (issue 16).

A JPEG 2000 codestream is a wavelet pyramid: its resolution level ``r`` is the image's LL band after ``r``
decompositions, a low-pass filtered image of ``ceil(size / 2^r)`` pixels per axis (ITU-T T.800 Annex F; the low-pass
filters of both the reversible 5/3 and the irreversible 9/7 wavelet have unit DC gain, so pixel values keep their
scale). Decoding only up to that level skips the entropy decoding of the finer subbands, ~4x less CPU per level on
chest films. The pipeline uses it when the stored resolutions are smaller than the LL band
(:func:`cxrgen.imaging.geometry.film_reduction_room`), which changes the stored pixels slightly: ``ingest_shard``
measures the difference on one image per shard and the data report states it.

Sample ``j`` of level ``r`` is centred on film sample ``2^r * j`` (image origin at 0, checked here): in continuous
pixel coordinates (pixel ``k`` spans ``[k, k+1)``) film position ``x`` is level position ``(x - 0.5) / 2^r + 0.5``
(:func:`film_to_level`).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np

_SOC, _SIZ, _COD, _SOT = 0xFF4F, 0xFF51, 0xFF52, 0xFF90


@dataclass(frozen=True)
class CodestreamHeader:
    width: int
    height: int
    precision: int  # bits per sample
    signed: bool
    components: int
    origin: tuple[int, int]  # (XOsiz, YOsiz): image offset on the reference grid
    levels: int  # decomposition levels of the main-header COD marker


def read_header(codestream: bytes) -> CodestreamHeader | None:
    """The main header of a raw JPEG 2000 codestream (SOC, SIZ, ..., COD, ..., SOT); None for anything else (a JP2
    file, a truncated or malformed header)."""
    if len(codestream) < 4 or struct.unpack(">H", codestream[:2])[0] != _SOC:
        return None
    pos, size, levels = 2, None, None
    while pos + 4 <= len(codestream):
        marker, length = struct.unpack(">HH", codestream[pos : pos + 4])
        body = codestream[pos + 4 : pos + 2 + length]
        if marker == _SOT or length < 2 or len(body) != length - 2:
            break
        if marker == _SIZ and len(body) >= 39:
            xsiz, ysiz, xo, yo = struct.unpack(">IIII", body[2:18])
            components = struct.unpack(">H", body[34:36])[0]
            ssiz = body[36]
            size = (xsiz - xo, ysiz - yo, (ssiz & 0x7F) + 1, bool(ssiz & 0x80), components, (xo, yo))
        elif marker == _COD and len(body) >= 6:
            levels = body[5]
        pos += 2 + length
    if size is None or levels is None:
        return None
    return CodestreamHeader(*size, levels=levels)


def ends_complete(codestream: bytes) -> bool:
    """True when the codestream ends with its EOC marker (DICOM pads an odd-length frame with one zero byte). A
    reduced level skips the data of the finer levels, so a codestream cut short may still decode at one; without its
    end marker the full decoder decides whether the file is readable."""
    return codestream.rstrip(b"\0")[-2:] == b"\xff\xd9"


def usable_levels(header: CodestreamHeader | None) -> int:
    """Resolution levels this module can decode exactly as described above: 0 unless the codestream is one unsigned
    grey component of at most 16 bits with its image origin at 0."""
    if header is None or header.components != 1 or header.signed or header.precision > 16 or header.origin != (0, 0):
        return 0
    return header.levels


def decode_level(codestream: bytes, level: int) -> np.ndarray:
    """The codestream's image at resolution level ``level`` (0 = full size) as stored sample values: uint8 for up to
    8 bits, else uint16. Pillow (OpenJPEG) scales samples to the full range of its mode; this undoes it."""
    from PIL import Image

    header = read_header(codestream)
    if header is None or not 0 <= level <= usable_levels(header):
        raise ValueError(f"cannot decode level {level} of this codestream ({header})")
    with Image.open(io.BytesIO(codestream)) as img:
        img.reduce = level
        img.load()
        mode_bits = 16 if img.mode.startswith("I;16") else 8 if img.mode == "L" else 0
        if not mode_bits or header.precision > mode_bits:
            raise ValueError(f"unexpected Pillow mode {img.mode} for {header.precision}-bit samples")
        samples = np.asarray(img)
    expected = (-(-header.height // (1 << level)), -(-header.width // (1 << level)))
    if samples.shape != expected:
        raise ValueError(f"level {level} decoded to {samples.shape}, expected {expected}")
    shift = mode_bits - header.precision
    out = samples >> shift if shift else samples
    return out.astype(np.uint8 if header.precision <= 8 else np.uint16, copy=False)


def film_to_level(x: float, factor: int) -> float:
    """Continuous film coordinate -> coordinate in the image reduced by ``factor`` = 2^level."""
    return (x - 0.5) / factor + 0.5
