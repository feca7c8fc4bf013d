"""Ingestion contract shared by the rules ``index_source``, ``ingest_shard`` and ``unify_store``: stable shard
assignment and the columns of the rejection manifests (the stages themselves live in :mod:`cxrgen.stages`)."""

from __future__ import annotations

import hashlib

#: Columns of a rejection manifest: every source file that does not reach the index is one row. Ingestion-private
#: (kept under ``results/ingest/``): ``rel_path`` embeds dataset ids (MIMIC ``files/pXX/p<subject_id>/s<study_id>/
#: <dicom_id>.dcm``, CheXpert ``patientNNNNN/studyN``) and ``detail`` can quote a decoder message naming the file.
REJECTION_COLUMNS = ("image_id", "source", "rel_path", "shard", "reason", "detail")
#: The columns of the rejection list published next to the unified index (``results/store/rejections.parquet``).
SHAREABLE_REJECTION_COLUMNS = ("image_id", "source", "shard", "reason")


def shard_of(source_key: str, n_shards: int) -> int:
    """Stable, balanced shard assignment from the source key."""
    return int(hashlib.sha256(source_key.encode()).hexdigest()[:8], 16) % n_shards
