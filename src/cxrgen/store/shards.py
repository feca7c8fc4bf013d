"""Shard container: concatenated image blobs (:mod:`cxrgen.store.codec`) with offsets kept in the index (see package
docstring)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.store.codec import CODECS, DEFAULT_CODEC, BlobFormatError, decode_blob, encode_blob


def shard_path(store_root: Path | str, resolution: int, source: str, shard: int) -> Path:
    return Path(store_root) / f"{resolution}px" / source / f"shard-{shard:04d}.bin"


class ShardWriter:
    """Appends blobs to one shard file. Writes to ``<path>.partial`` and renames on close, so a killed job never
    leaves a truncated shard that looks complete. ``codec``: :data:`cxrgen.store.codec.CODECS` (``png`` only to
    write stores that older cxrgen versions read)."""

    def __init__(self, path: Path, codec: str = DEFAULT_CODEC):
        if codec not in CODECS:
            raise ValueError(f"store codec {codec!r}; allowed: {', '.join(CODECS)}")
        self.path = Path(path)
        self.codec = codec
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._file = open(self._partial, "wb")  # noqa: SIM115 (closed in close())
        self._offset = 0

    def append(self, image: np.ndarray) -> tuple[int, int, str]:
        """Encode ``image`` (2-D uint16) and append it; returns (offset, nbytes, sha256)."""
        return self.append_blob(encode_blob(image, self.codec))

    def append_blob(self, blob: bytes, digest: str | None = None) -> tuple[int, int, str]:
        """Append an encoded blob (:func:`cxrgen.store.codec.encode_blob`; ``digest``: its sha256 when already
        known); returns (offset, nbytes, sha256)."""
        offset = self._offset
        self._file.write(blob)
        self._offset += len(blob)
        return offset, len(blob), digest if digest is not None else hashlib.sha256(blob).hexdigest()

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._partial, self.path)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()
            self._partial.unlink(missing_ok=True)


class ShardStore:
    """Random access to images by position in an index frame (or by image id).

    >>> store = ShardStore("results/store", pd.read_parquet("results/store/index.parquet"))
    >>> img = store.read(0, resolution=128)          # uint16 (128, 128)
    """

    def __init__(self, store_root: Path | str, index: pd.DataFrame, verify: bool = False):
        self.root = Path(store_root)
        self.index = index.reset_index(drop=True)
        self.verify = verify
        self._fds: dict[Path, int] = {}
        self._position = {image_id: i for i, image_id in enumerate(self.index["image_id"])}
        # plain arrays: a pandas row lookup per read costs more than the read itself on wide indexes
        self._source = self.index["source"].to_numpy()
        self._shard = self.index["shard"].to_numpy()
        self._blob_columns: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _columns(self, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cols = self._blob_columns.get(resolution)
        if cols is None:
            # rows without this resolution (a generated store's reid_probe rows lack the SR one) get offset -1
            cols = self._blob_columns[resolution] = (
                self.index[f"offset_{resolution}"].fillna(-1).to_numpy(np.int64),
                self.index[f"nbytes_{resolution}"].fillna(0).to_numpy(np.int64),
                self.index[f"sha256_{resolution}"].to_numpy())
        return cols

    def __len__(self) -> int:
        return len(self.index)

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def read_blob(self, position: int, resolution: int) -> bytes:
        offsets, sizes, digests = self._columns(resolution)
        if offsets[position] < 0:
            raise KeyError(f"image {self.index.at[position, 'image_id']} has no {resolution}px blob in {self.root}")
        path = shard_path(self.root, resolution, self._source[position], int(self._shard[position]))
        blob = os.pread(self._fd(path), int(sizes[position]), int(offsets[position]))
        if self.verify and hashlib.sha256(blob).hexdigest() != digests[position]:
            image_id = self.index.at[position, "image_id"]
            raise OSError(f"checksum mismatch for image {image_id} at {resolution}px in {path}")
        return blob

    def read(self, position: int, resolution: int) -> np.ndarray:
        blob = self.read_blob(position, resolution)
        try:
            return decode_blob(blob)
        except (BlobFormatError, OSError) as exc:
            image_id = self.index.at[position, "image_id"]
            raise type(exc)(f"image {image_id} at {resolution}px in {self.root}: {exc}") from exc

    def read_id(self, image_id: str, resolution: int) -> np.ndarray:
        return self.read(self._position[image_id], resolution)

    def read_float(self, position: int, resolution: int) -> np.ndarray:
        """float32 in [0, 1]."""
        return self.read(position, resolution).astype(np.float32) / 65535.0

    def read_batch(self, positions, resolution: int) -> np.ndarray:
        """float32 (N, H, W) in [0, 1] of the images at ``positions`` (all of one size)."""
        first = self.read(int(positions[0]), resolution)
        out = np.empty((len(positions), *first.shape), dtype=np.float32)
        out[0] = first
        for k in range(1, len(positions)):
            out[k] = self.read(int(positions[k]), resolution)
        np.divide(out, np.float32(65535.0), out=out)  # the same values as read_float
        return out

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __getstate__(self):  # DataLoader workers reopen their own descriptors
        state = self.__dict__.copy()
        state["_fds"] = {}
        return state

    def __del__(self):
        with contextlib.suppress(OSError):
            self.close()
