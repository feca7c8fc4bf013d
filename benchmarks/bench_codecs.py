"""Lossless 16-bit codecs for the store's blobs: encode/decode CPU time and bytes on the pipeline's own outputs.

Not a test: a script that prints one table measured in one process. The images are the store of
``bench_ingest.py`` (its 24 full-size demo films ingested at 256 and 1024 px; run that first, same ``--workdir``),
so sizes and speeds are those of the resampled films the store really holds. Each codec encodes and decodes every
image ``--repeats`` times; the fastest pass counts (CPU seconds of this process; ``imagecodecs`` codecs may use
threads, whose CPU time is counted too). Every decode is checked to be bit-exact.

    python benchmarks/bench_codecs.py --workdir /tmp/bench_runs/ingest [--imagecodecs-path DIR]

``--imagecodecs-path`` adds JPEG-LS, JPEG-XL (lossless, effort 1) and lossless JPEG from an ``imagecodecs``
installed there (``pip install --target DIR imagecodecs``); the project does not depend on it.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow
from PIL import Image

from cxrgen.store import ShardStore, decode_blob, encode_blob


def _planes(image: np.ndarray) -> np.ndarray:
    pairs = np.ascontiguousarray(image).view(np.uint8).reshape(-1, 2)
    return np.concatenate([pairs[:, 1], pairs[:, 0]])


def _unplanes(raw: bytes, shape: tuple[int, int]) -> np.ndarray:
    planes = np.frombuffer(raw, np.uint8)
    n = planes.size // 2
    pairs = np.empty((n, 2), np.uint8)
    pairs[:, 1], pairs[:, 0] = planes[:n], planes[n:]
    return pairs.view(np.uint16).reshape(shape)


def _delta(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[:, 1:] = image[:, 1:] - image[:, :-1]
    return out


def _undelta(delta: np.ndarray) -> np.ndarray:
    return np.cumsum(delta, axis=1, dtype=np.uint16)


def _png(level: int):
    def encode(image):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()

    def decode(blob, shape):
        with Image.open(io.BytesIO(blob)) as img:
            return np.asarray(img, dtype=np.uint16)
    return encode, decode


def _arrow(codec: str, level: int | None, planes: bool, delta: bool):
    compressor = pyarrow.Codec(codec, compression_level=level) if level is not None else pyarrow.Codec(codec)

    def encode(image):
        data = _delta(image) if delta else image
        return compressor.compress(_planes(data) if planes else np.ascontiguousarray(data), asbytes=True)

    def decode(blob, shape):
        raw = compressor.decompress(blob, decompressed_size=2 * shape[0] * shape[1], asbytes=True)
        data = _unplanes(raw, shape) if planes else np.frombuffer(raw, np.uint16).reshape(shape)
        return _undelta(data) if delta else data
    return encode, decode


def codecs(imagecodecs_path: Path | None) -> dict:
    table = {
        "PNG zlib level 6 (Pillow; the store before)": _png(6),
        "PNG zlib level 1 (Pillow)": _png(1),
        "zstd-1 raw": _arrow("zstd", 1, False, False),
        "zstd-1 byte planes": _arrow("zstd", 1, True, False),
        "zstd-1 delta + byte planes": _arrow("zstd", 1, True, True),
        "CXRZ (cxrgen.store.codec; delta above 256^2 px)": (encode_blob, lambda blob, shape: decode_blob(blob)),
        "zstd-3 delta + byte planes": _arrow("zstd", 3, True, True),
        "zstd-9 delta + byte planes": _arrow("zstd", 9, True, True),
        "lz4 raw": _arrow("lz4", None, False, False),
        "lz4 delta + byte planes": _arrow("lz4", None, True, True),
    }
    if imagecodecs_path is not None:
        sys.path.insert(0, str(imagecodecs_path))
        import imagecodecs as ic

        def reshaped(fn):
            return lambda blob, shape: np.asarray(fn(blob)).reshape(shape)
        table.update({
            f"JPEG-LS lossless (imagecodecs {ic.__version__})": (ic.jpegls_encode, reshaped(ic.jpegls_decode)),
            "JPEG-XL lossless, effort 1 (imagecodecs)": (
                lambda image: ic.jpegxl_encode(image, lossless=True, effort=1), reshaped(ic.jpegxl_decode)),
            "lossless JPEG (imagecodecs ljpeg)": (ic.ljpeg_encode, reshaped(ic.ljpeg_decode)),
        })
    return table


def load_images(workdir: Path) -> dict[int, list[np.ndarray]]:
    index = pd.concat([pd.read_parquet(p) for p in sorted((workdir / "store_index").glob("*.parquet"))],
                      ignore_index=True)
    store = ShardStore(workdir / "store", index)
    resolutions = sorted(int(c.split("_")[1]) for c in index.columns if c.startswith("offset_"))
    return {res: [store.read(i, res) for i in range(len(index))] for res in resolutions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="bench_ingest.py's workdir (its store)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--imagecodecs-path", type=Path, default=None)
    args = parser.parse_args()

    images = load_images(args.workdir)
    print(f"{len(next(iter(images.values())))} images per resolution; cpus={os.cpu_count()}, "
          f"load={os.getloadavg()[0]:.1f}")
    print("codec                                                      res   bytes/img  vs PNG-6  enc ms  dec ms")
    png_bytes: dict[int, float] = {}
    for name, (encode, decode) in codecs(args.imagecodecs_path).items():
        for res, films in images.items():
            best_enc = best_dec = np.inf
            for _ in range(args.repeats):
                started = time.process_time()
                blobs = [encode(film) for film in films]
                best_enc = min(best_enc, time.process_time() - started)
                started = time.process_time()
                decoded = [decode(blob, film.shape) for blob, film in zip(blobs, films, strict=True)]
                best_dec = min(best_dec, time.process_time() - started)
            for film, back in zip(films, decoded, strict=True):
                if not np.array_equal(np.asarray(back), film):
                    raise AssertionError(f"{name} is not lossless at {res}px")
            size = sum(len(b) for b in blobs) / len(films)
            png_bytes.setdefault(res, size)  # the first codec is the PNG of the store before
            ratio = size / png_bytes[res]
            print(f"{name[:58]:58s} {res:5d} {size:11.0f} {ratio:8.2f} {best_enc / len(films) * 1e3:7.2f} "
                  f"{best_dec / len(films) * 1e3:7.2f}")


if __name__ == "__main__":
    main()
