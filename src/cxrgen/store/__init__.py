"""The sharded image store: a fixed number of append-only shard files per (resolution, source), each a concatenation of
lossless 16-bit grayscale PNG blobs; the parquet index holds (shard, offset, nbytes, sha256) per image and resolution.

Why this container: no per-image files (HPC file systems choke on millions of small files), lossless, random access
with one ``pread`` per image, content checksums, trivially appendable and readable from any language
(``benchmarks/bench_store_read.py`` measures it against per-file JPEGs).
"""

from cxrgen.store.shards import ShardStore, ShardWriter, decode_png16, encode_png16, shard_path

__all__ = ["ShardStore", "ShardWriter", "decode_png16", "encode_png16", "shard_path"]
