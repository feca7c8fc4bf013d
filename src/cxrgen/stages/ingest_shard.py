"""Rule ``ingest_shard``: decode, resample and store the manifest rows of one shard of one source.

Every source file ends in exactly one place: an index row of its shard, or a row of the shard's rejection manifest
with a machine-readable reason. A bad file never fails its shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cxrgen.imaging.errors import RejectedImage, RejectReason
from cxrgen.ingest import REJECTION_COLUMNS
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.privacy import age_bucket
from cxrgen.store.codec import encode_blob
from cxrgen.store.shards import ShardWriter, shard_path

log = logging.getLogger(__name__)

#: Technical, non-identifying DICOM/file fields copied from the decoder's whitelisted meta into the index.
TECH_FIELDS = ("modality", "photometric", "bits_stored", "transfer_syntax", "manufacturer")
#: Index column: for the first image of every shard, the max abs difference (of 65535 levels) over the stored
#: resolutions between the chained resampling (smaller resolutions from the largest, issue 16) and resampling each
#: resolution from the film (``preprocess(chain=False)``); NaN for the other images. The data report summarises it.
RESAMPLE_CHECK_COLUMN = "resample_check_max_abs"
#: Index column: film pixels per decoded pixel (1, or 2^level for a JPEG 2000 film decoded at a reduced resolution
#: level, issue 16: :mod:`cxrgen.imaging.j2k`).
REDUCTION_COLUMN = "decode_reduction"
#: Index column: for the first reduced-decoded image of every shard, the max abs difference (of 65535 levels) over the
#: stored resolutions against decoding the full film; NaN for the other images. The data report summarises it.
REDUCED_CHECK_COLUMN = "reduced_decode_check_max_abs"


def ingest_shard(manifest_path: Path | str, *, source: str, source_root: Path | str, shard: int,
                 store_root: Path | str, resolutions: list[int], geometry: str, intensity: str,
                 target_spacing_mm: float | None, canvas_mm: float | None, index_path: Path | str,
                 rejections_path: Path | str, stats_path: Path | str, workers: int = 1,
                 reduced_decode: bool = True) -> dict:
    """Ingest shard ``shard`` of the manifest at ``manifest_path`` (rule ``index_source``): one container per
    resolution under ``store_root``, the shard's index part, rejection manifest and stats. ``workers``: processes
    that decode (the job's threads); ``reduced_decode``: JPEG 2000 films at the coarsest resolution level the outputs
    allow (:func:`decode_shard`). Returns the stats."""
    index_part, rejections, stats = decode_shard(
        pd.read_parquet(manifest_path), source=source, source_root=Path(source_root), shard=shard,
        store_root=Path(store_root), resolutions=resolutions, geometry=geometry, intensity=intensity,
        target_spacing_mm=target_spacing_mm, canvas_mm=canvas_mm, workers=workers, reduced_decode=reduced_decode)
    for path in (index_path, rejections_path, stats_path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    index_part.to_parquet(index_path, index=False)
    rejections.to_parquet(rejections_path, index=False)
    Path(stats_path).write_text(json.dumps(stats, indent=1))
    return stats


def _rejection(row, reason: str, detail: str = "") -> dict:
    return {"image_id": row["image_id"], "source": row["source"], "rel_path": row["rel_path"], "shard": row["shard"],
            "reason": reason, "detail": detail[:300]}


def decode_shard(manifest: pd.DataFrame, *, source: str, source_root: Path, shard: int, store_root: Path,
                 resolutions: list[int], geometry: str, intensity: str, target_spacing_mm: float | None,
                 canvas_mm: float | None = None, progress: bool = True, workers: int = 1,
                 reduced_decode: bool = True, checks: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Decode and preprocess the manifest rows of one shard; write one container per resolution.

    ``workers`` > 1 decodes, resamples and encodes in that many worker processes (the job's threads); the outputs are
    byte-identical to ``workers=1`` (rows are written in the same order by this process). ``reduced_decode``
    decodes JPEG 2000 films at the coarsest resolution level that still has at least 1.25x the pixels of the
    largest output per axis (issue 16, :mod:`cxrgen.imaging.j2k`); the first such image of the shard is compared
    with a full decode (index column ``reduced_decode_check_max_abs``). ``checks=False`` skips these first-image checks (a fixed cost
    per shard: ``benchmarks/bench_ingest.py`` uses it to measure the per-image cost of shards of thousands of films).
    Returns (index part, rejections, stats); :func:`ingest_shard` writes them.
    """
    rows = manifest[manifest["shard"] == shard].sort_values("image_id").reset_index(drop=True)
    records = rows.to_dict("records")
    settings = _Settings(Path(source_root), tuple(resolutions), geometry, intensity, target_spacing_mm, canvas_mm,
                         reduced_decode)
    # the chained-resampling check runs on the first row the adapter did not reject (whatever happens to it)
    first = next((i for i, r in enumerate(records) if not isinstance(r["reject_reason"], str)), None) if checks \
        else None
    tasks = [(record, settings, i == first) for i, record in enumerate(records)]
    index_rows: list[dict] = []
    rejections: list[dict] = []
    writers = {res: ShardWriter(shard_path(store_root, res, source, shard)) for res in resolutions}
    started = time.perf_counter()
    pool = None
    try:
        if workers > 1 and len(tasks) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: the parent holds threads (pyarrow, tqdm) that fork must not copy mid-flight
            pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                                       mp_context=multiprocessing.get_context("spawn"))
            results = pool.map(_process_task, tasks, chunksize=1)
        else:
            results = map(_process_task, tasks)
        for fields, blobs in tqdm(results, total=len(records), desc=f"{source} shard {shard}",
                                  disable=not progress, mininterval=2.0):
            if blobs is None:
                rejections.append(fields)
                continue
            for res, (blob, digest) in blobs.items():
                fields[f"offset_{res}"], fields[f"nbytes_{res}"], fields[f"sha256_{res}"] = \
                    writers[res].append_blob(blob, digest)
            index_rows.append(fields)
        if checks:
            _check_first_reduced(index_rows, records, settings)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        for writer in writers.values():
            writer.close()
    stats = {"source": source, "shard": shard, "files": int(len(rows)), "ingested": len(index_rows),
             "rejected": len(rejections), "seconds": round(time.perf_counter() - started, 2), "workers": workers}
    return pd.DataFrame(index_rows), pd.DataFrame(rejections, columns=list(REJECTION_COLUMNS)), stats


@dataclass(frozen=True)
class _Settings:
    source_root: Path
    resolutions: tuple[int, ...]
    geometry: str
    intensity: str
    target_spacing_mm: float | None
    canvas_mm: float | None
    reduced_decode: bool = True

    def preprocess_kwargs(self) -> dict:
        return dict(target_spacing_mm=self.target_spacing_mm, policy=self.geometry,
                    resolutions=list(self.resolutions), canvas_mm=self.canvas_mm)

    def decode(self, row: dict, reduced: bool):
        from cxrgen.imaging.decode import decode_image
        from cxrgen.imaging.geometry import film_reduction_room

        def room(rows: int, cols: int, spacing) -> float:
            return film_reduction_room((rows, cols), spacing, **self.preprocess_kwargs())

        return decode_image(
            self.source_root / row["rel_path"], file_format=row["file_format"],
            bits_stored_hint=_none_if_nan(row["bits_stored_hint"]),
            spacing_hint_mm=_none_if_nan(row["spacing_hint_mm"]), intensity=self.intensity,
            reduction_room=room if reduced else None)


def _reduced_difference(row: dict, settings: _Settings, images: dict[int, np.ndarray]) -> float:
    """Max abs difference of ``images`` (from a reduced decode of ``row``'s film) against decoding the full film;
    NaN (and a warning) when the full decode fails: the check never rejects an image that was stored."""
    from cxrgen.imaging.geometry import preprocess

    try:
        reference = preprocess(settings.decode(row, reduced=False), **settings.preprocess_kwargs())
    except Exception as exc:  # noqa: BLE001
        log.warning("reduced-decode check of %s: the full decode failed (%s)", row["image_id"], exc)
        return float("nan")
    return float(max(np.abs(images[r].astype(np.int32) - reference[r]).max() for r in images))


def _check_first_reduced(index_rows: list[dict], records: list[dict], settings: _Settings) -> None:
    """When the worker's check row was not a reduced decode, compare the shard's first reduced-decoded image with a
    full decode here (the image is decoded again, reduced as stored and in full)."""
    reduced = [fields for fields in index_rows if fields[REDUCTION_COLUMN] > 1]
    if not reduced or any(fields[REDUCED_CHECK_COLUMN] == fields[REDUCED_CHECK_COLUMN] for fields in reduced):
        return
    from cxrgen.imaging.geometry import preprocess

    first = reduced[0]
    row = next(r for r in records if r["image_id"] == first["image_id"])
    try:
        images = preprocess(settings.decode(row, reduced=True), **settings.preprocess_kwargs())
        first[REDUCED_CHECK_COLUMN] = _reduced_difference(row, settings, images)
    except Exception as exc:  # the check must not fail a shard whose images were all stored
        log.warning("reduced-decode check of %s failed: %s", first["image_id"], exc)


def _process_task(task: tuple[dict, _Settings, bool]) -> tuple[dict, dict[int, tuple[bytes, str]] | None]:
    """One manifest row -> (index fields, {resolution: (blob, sha256)}), or (rejection row, None). Never raises for
    a bad file or a bug on one file: a bad file never fails its shard."""
    from cxrgen.imaging.geometry import preprocess

    row, settings, check = task
    if isinstance(row["reject_reason"], str):
        return _rejection(row, row["reject_reason"], "flagged by the source adapter"), None
    try:
        decoded = settings.decode(row, reduced=settings.reduced_decode)
        kwargs = settings.preprocess_kwargs()
        images = preprocess(decoded, **kwargs)
        difference = reduced_difference = float("nan")
        if check and len(images) > 1:  # the chained resampling against resampling each resolution from the film
            reference = preprocess(decoded, chain=False, **kwargs)
            difference = float(max(np.abs(images[r].astype(np.int32) - reference[r]).max() for r in images))
        if check and decoded.reduction > 1:
            reduced_difference = _reduced_difference(row, settings, images)
        fields = _index_row(row, decoded, images) | {RESAMPLE_CHECK_COLUMN: difference,
                                                     REDUCED_CHECK_COLUMN: reduced_difference}
        blobs = {}
        for res, image in images.items():
            blob = encode_blob(image)
            blobs[res] = (blob, hashlib.sha256(blob).hexdigest())
    except RejectedImage as exc:
        return _rejection(row, exc.reason.value, exc.detail), None
    except Exception as exc:  # a decoder bug on one file must not kill the shard
        return _rejection(row, RejectReason.UNREADABLE.value, f"{type(exc).__name__}: {exc}"), None
    return fields, blobs


def _none_if_nan(value) -> float | None:
    return None if value is None or value != value else float(value)


def _index_row(row, decoded, images: dict[int, np.ndarray]) -> dict:
    largest = images[max(images)]
    # the decoded pixels as decoded: for a reduced JPEG 2000 decode those of its resolution level (exact duplicates of
    # the same film in the same encoding still match)
    content = np.round(decoded.pixels * 65535).astype(np.uint16)
    out = {
        "image_id": row["image_id"], "source": row["source"], "patient_pid": row["patient_pid"],
        "study_pid": row["study_pid"], "view": row["view"], "sex": row["sex"], "age_bucket": age_bucket(row["age"]),
        "report_findings": row["report_findings"], "report_impression": row["report_impression"],
        "official_split": row["official_split"], "shard": int(row["shard"]),
        "orig_height": decoded.film_shape[0], "orig_width": decoded.film_shape[1],
        REDUCTION_COLUMN: int(decoded.reduction),
        "orig_spacing_mm": float(decoded.spacing_mm[0]) if decoded.spacing_mm else float("nan"),
        "spacing_source": decoded.spacing_source,
        "content_sha256": hashlib.sha256(content.tobytes() + str(content.shape).encode()).hexdigest(),
        "mean_intensity": float(largest.mean() / 65535.0),
    }
    for field in TECH_FIELDS:
        value = decoded.meta.get(field)
        out[field] = None if value is None else str(value)
    for col in LABEL_COLUMNS:
        out["raw_" + col] = row[col]
    return out
