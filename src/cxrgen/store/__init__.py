"""The sharded image store: a fixed number of append-only shard files per (resolution, source), each a concatenation of
lossless 16-bit grayscale image blobs; the parquet index holds (shard, offset, nbytes, sha256) per image and resolution.

Blobs are CXRZ (delta + byte planes + Zstandard, :mod:`cxrgen.store.codec`; written since issue 16) or, in stores
written before, 16-bit PNGs. Every blob names its format in its first bytes, so old stores stay readable and an
unknown format fails with a message naming the image and what to do.

Why this container: no per-image files (HPC file systems choke on millions of small files), lossless, random access
with one ``pread`` per image, content checksums, trivially appendable and readable from any language
(``benchmarks/bench_store_read.py`` measures it against per-file PNGs and JPEGs).
"""

from cxrgen.store.codec import BlobFormatError, blob_format, decode_blob, decode_png16, encode_blob, encode_png16
from cxrgen.store.shards import ShardStore, ShardWriter, shard_path

__all__ = ["BlobFormatError", "ShardStore", "ShardWriter", "blob_format", "decode_blob", "decode_png16", "encode_blob",
           "encode_png16", "shard_path"]
