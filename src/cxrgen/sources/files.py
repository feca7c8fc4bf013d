"""Source-independent pieces of the adapters: listing a tree, finding a (possibly gzipped) table, reading a PNG's
width, joining listed files to metadata rows with ``missing_file``/``missing_metadata`` flags, and finishing a manifest."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.labels import LABEL_COLUMNS
from cxrgen.sources.base import MANIFEST_COLUMNS, empty_manifest, validate_manifest

IMAGE_FORMATS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".dcm": "dicom"}


def list_files(root: Path, suffixes: tuple[str, ...], skip_top_dirs: tuple[str, ...] = ()) -> pd.DataFrame:
    """Every file under ``root`` whose lower-cased suffix is in ``suffixes``: one ``os.walk``, no per-file stat;
    folders named in ``skip_top_dirs`` directly under ``root`` are not entered.
    Returns columns ``rel_path`` (POSIX, sorted) and ``name`` (file name)."""
    found: list[str] = []
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        if skip_top_dirs and dirpath == str(root):
            dirnames[:] = [d for d in dirnames if d not in skip_top_dirs]
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        found.extend(prefix + f for f in filenames if os.path.splitext(f)[1].lower() in suffixes)
    found.sort()
    return pd.DataFrame({"rel_path": pd.Series(found, dtype=object),
                         "name": pd.Series([p.rsplit("/", 1)[-1] for p in found], dtype=object)})


def png_width(path: Path) -> int | None:
    """Width from a PNG's IHDR chunk (24 header bytes, no decoding); None if not a PNG."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return int(struct.unpack(">I", head[16:20])[0])


def find_table(root: Path, name: str) -> Path | None:
    """``name`` or ``name + '.gz'`` directly under ``root`` (several releases ship gzipped CSVs), else None."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_first(root: Path, names: tuple[str, ...]) -> Path:
    """The first of ``names`` (optionally gzipped) that exists directly under ``root``."""
    for name in names:
        found = find_table(root, name)
        if found is not None:
            return found
    raise FileNotFoundError(f"none of {', '.join(names)} found in {root}")


def join_files(meta: pd.DataFrame, files: pd.DataFrame, match_on: str, source: str) -> pd.DataFrame:
    """Join metadata rows to the listed files and return a validated manifest.

    ``meta`` holds manifest columns (without ``rel_path``/``reject_reason``/``file_format``) plus ``match_key`` and
    ``expected_path`` (where the release puts the file). ``files`` comes from :func:`list_files`; its column
    ``match_on`` (``"name"`` or ``"rel_path"``) is compared with ``match_key``. When several files share a key, the one
    at ``expected_path`` wins and the others become ``missing_metadata`` rows, so every file appears exactly once.
    """
    meta = meta.drop_duplicates("match_key", keep="first")
    listed = files.assign(match_key=files[match_on])
    cand = listed.merge(meta[["match_key", "expected_path"]], on="match_key", how="left")
    cand["_not_expected"] = cand["rel_path"] != cand["expected_path"]
    cand = cand.sort_values(["match_key", "_not_expected", "rel_path"], kind="stable")
    is_match = cand["expected_path"].notna() & ~cand.duplicated("match_key")
    matched = cand.loc[is_match, ["match_key", "rel_path"]]

    rows = meta.merge(matched, on="match_key", how="left")
    absent = rows["rel_path"].isna()
    rows.loc[absent, "rel_path"] = rows.loc[absent, "expected_path"]
    rows["reject_reason"] = np.where(absent, "missing_file", None)

    orphan_paths = cand.loc[~is_match, "rel_path"].to_numpy(dtype=object)
    orphans = pd.DataFrame({
        "rel_path": orphan_paths, "source_key": orphan_paths, "patient_id": orphan_paths, "study_id": orphan_paths,
        "view": "UNKNOWN", "sex": "U", "age": np.nan, "spacing_hint_mm": np.nan, "bits_stored_hint": np.nan,
        "reject_reason": "missing_metadata",
    })
    for col in LABEL_COLUMNS:
        orphans[col] = np.nan
    out = pd.concat([rows, orphans], ignore_index=True) if len(orphans) else rows
    out["source"] = source
    for col in ("report_findings", "report_impression", "official_split"):
        if col not in out:
            out[col] = None
    suffix = out["rel_path"].str.extract(r"(\.[^./]+)$", expand=False).str.lower()
    out["file_format"] = suffix.map(IMAGE_FORMATS)
    for col, (dtype, _) in MANIFEST_COLUMNS.items():
        if dtype == "float":
            out[col] = out[col].astype("float64")
        else:
            out[col] = out[col].astype(object).where(out[col].notna(), None)
    out = out.sort_values("rel_path", kind="stable")
    return validate_manifest(out)


def merge_on_key(disk: pd.DataFrame, meta: pd.DataFrame, on: str = "source_key") -> pd.DataFrame:
    """Outer join of listed files (``disk``) and metadata rows on ``on``; ``reject_reason`` is ``missing_metadata``
    for a file without a row, ``missing_file`` for a row without a file, else None."""
    df = disk.merge(meta, on=on, how="outer", indicator=True)
    df["reject_reason"] = np.select([df["_merge"] == "left_only", df["_merge"] == "right_only"],
                                    ["missing_metadata", "missing_file"], "").astype(object)
    df.loc[df["reject_reason"] == "", "reject_reason"] = None
    return df.drop(columns="_merge")


#: manifest values of what a source does not record
UNKNOWN_VALUES = {"view": "UNKNOWN", "sex": "U", "age": np.nan, "report_findings": None, "report_impression": None,
                  "official_split": None, "spacing_hint_mm": np.nan, "bits_stored_hint": np.nan}


def finish_manifest(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Set ``source``, fill the manifest columns ``df`` lacks with :data:`UNKNOWN_VALUES`, sort by ``rel_path`` and
    validate (an empty frame gives the typed empty manifest)."""
    df["source"] = source
    for col, value in UNKNOWN_VALUES.items():
        if col not in df.columns:
            df[col] = value
    if df.empty:
        return validate_manifest(empty_manifest())
    return validate_manifest(df.sort_values("rel_path", kind="stable"))
