"""Rule ``index_source``: run a source's adapter on its native layout and pseudonymise, giving the ingestion manifest
(one row per source file, no pixels). The manifest keeps ``rel_path`` (needed to open the file), so it is
ingestion-private; raw patient/study/image ids are replaced by keyed hashes here, before anything is written."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from cxrgen.ingest import shard_of
from cxrgen.privacy import pseudonym, resolve_salt
from cxrgen.sources.base import get_adapter, validate_manifest

log = logging.getLogger(__name__)


def index_source(source: str, root: Path | str, n_shards: int, *, salt_env: str, demo_only: bool,
                 options: dict | None, manifest_path: Path | str) -> pd.DataFrame:
    """Write the pseudonymised manifest of ``source`` (read from ``root``) to ``manifest_path``; the salt comes from
    the environment variable ``salt_env`` (see :func:`cxrgen.privacy.resolve_salt`). Returns the manifest."""
    salt = resolve_salt(salt_env, demo_only=demo_only)
    manifest = build_manifest(source, Path(root), n_shards, salt, options)
    Path(manifest_path).parent.mkdir(parents=True, exist_ok=True)
    manifest.to_parquet(manifest_path, index=False)
    return manifest


def build_manifest(source: str, root: Path, n_shards: int, salt: bytes, options: dict | None = None) -> pd.DataFrame:
    """The adapter's manifest with ``image_id``/``patient_pid``/``study_pid`` (keyed hashes) instead of the raw
    patient and study ids, and a stable ``shard`` per file."""
    started = time.perf_counter()
    manifest = validate_manifest(get_adapter(source)(Path(root), options or {}))
    manifest["image_id"] = [f"{source}-{pseudonym(salt, f'{source}/image', k)}" for k in manifest["source_key"]]
    manifest["patient_pid"] = [f"{source}-{pseudonym(salt, f'{source}/patient', str(p))}"
                               for p in manifest["patient_id"]]
    manifest["study_pid"] = [f"{source}-{pseudonym(salt, f'{source}/study', str(s))}" for s in manifest["study_id"]]
    manifest["shard"] = [shard_of(k, n_shards) for k in manifest["source_key"]]
    manifest = manifest.drop(columns=["patient_id", "study_id"])
    log.info("%s: %d manifest rows (%d pre-rejected) in %.1f s", source, len(manifest),
             manifest["reject_reason"].notna().sum(), time.perf_counter() - started)
    return manifest
