"""Lossless codecs of the store's 16-bit grayscale image blobs.

Every blob says what it is in its first bytes, so a store needs no separate manifest and old stores stay readable:

- ``CXRZ`` version 1 (written since issue 16): a 16-byte header, then one standard Zstandard frame.

  ====== ===== =========================================================================
  offset bytes field
  ====== ===== =========================================================================
  0      4     magic ``b"CXRZ"``
  4      1     format version, 1
  5      1     filter: 0 = byte planes (all high bytes, then all low bytes); 1 = horizontal delta (mod 2^16), then
               byte planes
  6      2     reserved, 0
  8      4     height, uint32 little endian
  12     4     width, uint32 little endian
  16     ...   Zstandard frame (level 1) of the 2 * height * width filtered bytes
  ====== ===== =========================================================================

  To decode in any language: zstd-decompress, take the first half as the high and the second half as the low bytes
  of uint16 values in row-major order, then (filter 1) running sums along each row (mod 2^16). The writer uses the
  delta for images of more than :data:`DELTA_MIN_PIXELS` pixels: it makes the 1024 px films 26 % smaller, while on
  the 256 px training reads its running sums would triple the decode time to save 11 % of a layer that holds 7 % of
  the store's bytes (``benchmarks/README.md``).
- PNG (every store written before): a lossless 16-bit grayscale PNG; read with Pillow.

Why this codec (``benchmarks/README.md``, table "Store codecs"; the pipeline's 24 full-size benchmark films): against
zlib PNG it encodes 19-24x faster; at 1024 px it decodes 2.7x faster at the same size (+1 %), at 256 px 10x faster
for 12 % more bytes. Zstandard comes with ``pyarrow``, which the project already needs for parquet, so it adds no
dependency (JPEG-LS / JPEG-XL from ``imagecodecs`` are 14-19 % smaller than PNG at 256 px but decode 5-13x slower
than CXRZ there, and would add a 26 MB wheel).
"""

from __future__ import annotations

import io
import struct

import numpy as np

MAGIC = b"CXRZ"
VERSION = 1
FILTER_PLANES = 0
FILTER_DELTA_PLANES = 1
#: images with more pixels than this get the delta filter
DELTA_MIN_PIXELS = 256 * 256
ZSTD_LEVEL = 1
_HEADER = struct.Struct("<4sBBHII")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: the codec ShardWriter writes (``blob_format`` names what a blob is)
DEFAULT_CODEC = "cxrz"
CODECS = ("cxrz", "png")

_codec_cache: dict[int, object] = {}


class BlobFormatError(ValueError):
    """A blob that is neither a CXRZ blob this version reads nor a PNG."""


def _zstd(level: int = ZSTD_LEVEL):
    codec = _codec_cache.get(level)
    if codec is None:
        import pyarrow

        codec = _codec_cache[level] = pyarrow.Codec("zstd", compression_level=level)
    return codec


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint16 or image.ndim != 2:
        raise ValueError(f"expected a 2-D uint16 array, got {image.dtype} {image.shape}")


def encode_png16(image: np.ndarray) -> bytes:
    """Lossless 16-bit grayscale PNG of a uint16 array (the store's format before CXRZ)."""
    from PIL import Image

    _check_image(image)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def decode_png16(blob: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as img:
        return np.asarray(img, dtype=np.uint16).copy() if img.mode in ("I;16", "I;16B") else \
            np.asarray(img).astype(np.uint16)


def encode_cxrz(image: np.ndarray, delta: bool | None = None) -> bytes:
    """CXRZ v1 blob of a uint16 array: (horizontal delta,) byte planes, Zstandard level 1 (module docstring).
    ``delta``: None = by size (:data:`DELTA_MIN_PIXELS`)."""
    _check_image(image)
    height, width = image.shape
    if delta is None:
        delta = image.size > DELTA_MIN_PIXELS
    filtered = np.array(image, dtype=np.uint16, order="C")  # a copy
    if delta and width > 1:
        np.subtract(image[:, 1:], image[:, :-1], out=filtered[:, 1:])  # wraps mod 2^16
    pairs = filtered.view(np.uint8).reshape(-1, 2)  # little-endian: column 0 low byte, column 1 high byte
    planes = np.empty(filtered.size * 2, dtype=np.uint8)
    planes[: filtered.size] = pairs[:, 1]
    planes[filtered.size :] = pairs[:, 0]
    header = _HEADER.pack(MAGIC, VERSION, FILTER_DELTA_PLANES if delta else FILTER_PLANES, 0, height, width)
    return header + _zstd().compress(planes, asbytes=True)


def decode_cxrz(blob: bytes) -> np.ndarray:
    if len(blob) < _HEADER.size:
        raise OSError(f"truncated CXRZ blob ({len(blob)} bytes)")
    magic, version, filt, _, height, width = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise BlobFormatError(f"not a CXRZ blob (starts with {bytes(blob[:8])!r})")
    if version != VERSION or filt not in (FILTER_PLANES, FILTER_DELTA_PLANES):
        raise BlobFormatError(
            f"CXRZ blob of format version {version} (filter {filt}); this cxrgen reads version {VERSION} "
            f"(filters {FILTER_PLANES}, {FILTER_DELTA_PLANES}): the store was written by a newer cxrgen. Read it with "
            "that version, or rebuild the store with this one (snakemake --forcerun ingest_shard)")
    n = height * width
    try:
        raw = _zstd().decompress(memoryview(blob)[_HEADER.size :], decompressed_size=2 * n, asbytes=True)
    except Exception as exc:  # pyarrow raises its own error types for a corrupt frame
        raise OSError(f"corrupt CXRZ blob ({height}x{width}): {exc}") from exc
    planes = np.frombuffer(raw, dtype=np.uint8)
    if planes.size != 2 * n:
        raise OSError(f"corrupt CXRZ blob: {planes.size} bytes for {height}x{width}")
    pairs = np.empty((n, 2), dtype=np.uint8)
    pairs[:, 1] = planes[:n]
    pairs[:, 0] = planes[n:]
    values = pairs.view(np.uint16).reshape(height, width)
    return np.cumsum(values, axis=1, dtype=np.uint16) if filt == FILTER_DELTA_PLANES else values


def encode_blob(image: np.ndarray, codec: str = DEFAULT_CODEC) -> bytes:
    """The blob of ``image`` (2-D uint16) in ``codec`` (one of :data:`CODECS`)."""
    if codec == "cxrz":
        return encode_cxrz(image)
    if codec == "png":
        return encode_png16(image)
    raise ValueError(f"store codec {codec!r}; allowed: {', '.join(CODECS)}")


def blob_format(blob: bytes) -> str:
    """``cxrz-<version>``, ``png`` or ``unknown``, from the blob's first bytes."""
    if blob[:4] == MAGIC and len(blob) >= _HEADER.size:
        return f"cxrz-{blob[4]}"
    if blob[:8] == _PNG_SIGNATURE:
        return "png"
    return "unknown"


def decode_blob(blob: bytes) -> np.ndarray:
    """uint16 (H, W) array of a CXRZ or PNG blob; :class:`BlobFormatError` for anything else."""
    head = bytes(blob[:8])
    if head[:4] == MAGIC:
        return decode_cxrz(blob)
    if head == _PNG_SIGNATURE:
        return decode_png16(blob)
    raise BlobFormatError(
        f"unknown blob format (first bytes {head!r}): neither a CXRZ nor a PNG blob. The store may be corrupt or "
        "written by another program; rebuild it (snakemake --forcerun ingest_shard)")
