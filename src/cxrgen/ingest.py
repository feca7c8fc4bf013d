"""Ingestion contract shared by the rules ``index_source``, ``ingest_shard`` and ``unify_store``: stable shard
assignment and the columns of the rejection manifests (the stages themselves live in :mod:`cxrgen.stages`)."""

from __future__ import annotations

import hashlib

#: Columns of a rejection manifest: every source file that does not reach the index is one row.
REJECTION_COLUMNS = ("image_id", "source", "rel_path", "shard", "reason", "detail")


def shard_of(source_key: str, n_shards: int) -> int:
    """Stable, balanced shard assignment from the source key."""
    return int(hashlib.sha256(source_key.encode()).hexdigest()[:8], 16) % n_shards
