"""Common contract of the source adapters.

An adapter reads ONE source in its native on-disk layout (exactly what a credentialed user downloads) and returns a
*manifest*: one row per image file found on disk (plus rows for metadata entries whose file is missing), with the
columns of :data:`MANIFEST_COLUMNS`. Adapters read metadata tables and list files; they never decode pixels.

Raw identifiers (patient, study, file key) appear only in the manifest returned in memory; ingestion pseudonymises them
before anything is written under ``results/``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.labels import LABEL_COLUMNS

VIEWS = ("PA", "AP", "LATERAL", "UNKNOWN")
FRONTAL_VIEWS = ("PA", "AP")
SEXES = ("M", "F", "U")
SPLITS = ("train", "val", "test")

#: column -> (dtype, meaning)
MANIFEST_COLUMNS: dict[str, tuple[str, str]] = {
    "source": ("str", "adapter name, e.g. 'mimic'"),
    "rel_path": ("str", "path of the image file relative to the source root (POSIX separators)"),
    "source_key": ("str", "unique key of the image within its source (dicom_id, 'Image Index', Path, ImageID …)"),
    "patient_id": ("str", "raw patient identifier from the source (pseudonymised at ingestion)"),
    "study_id": ("str", "raw study identifier (a patient's visit); equals source_key when the source has none"),
    "view": ("str", "one of VIEWS, normalised from the source's own field"),
    "sex": ("str", "one of SEXES"),
    "age": ("float", "age in years at the study, NaN if unknown"),
    "report_findings": ("str|None", "FINDINGS section text when the source has reports"),
    "report_impression": ("str|None", "IMPRESSION section text when the source has reports"),
    "official_split": ("str|None", "one of SPLITS when the source defines an official split for this image"),
    "spacing_hint_mm": ("float", "pixel spacing from metadata tables for files that do not carry it (NaN if none)"),
    "bits_stored_hint": ("float", "true bit depth from metadata for PNGs stored in 16-bit containers (NaN if none)"),
    "file_format": ("str", "'dicom', 'png' or 'jpg'"),
    "reject_reason": ("str|None", "pre-set by the adapter: 'missing_metadata' or 'missing_file', else None"),
    **{col: ("float", "raw CheXpert-convention label: 1 pos, 0 neg, -1 uncertain, NaN blank") for col in LABEL_COLUMNS},
}


def empty_manifest() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object" if t.startswith("str") else "float64")
                         for c, (t, _) in MANIFEST_COLUMNS.items()})


def validate_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """Check the manifest contract; returns the frame with columns in canonical order. Raises ValueError."""
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}")
    df = df[list(MANIFEST_COLUMNS)].copy()
    bad_view = set(df["view"]) - set(VIEWS)
    if bad_view:
        raise ValueError(f"manifest view values {sorted(bad_view)} not in {VIEWS}")
    bad_sex = set(df["sex"]) - set(SEXES)
    if bad_sex:
        raise ValueError(f"manifest sex values {sorted(bad_sex)} not in {SEXES}")
    splits = set(df["official_split"].dropna()) - set(SPLITS)
    if splits:
        raise ValueError(f"manifest official_split values {sorted(splits)} not in {SPLITS}")
    if df["source_key"].duplicated().any():
        dup = df.loc[df["source_key"].duplicated(), "source_key"].iloc[0]
        raise ValueError(f"manifest source_key not unique, e.g. {dup!r}")
    labels = df[list(LABEL_COLUMNS)].to_numpy(dtype=np.float64)
    ok = np.isnan(labels) | np.isin(labels, (1.0, 0.0, -1.0))
    if not ok.all():
        raise ValueError("manifest labels must be 1, 0, -1 or NaN")
    return df.reset_index(drop=True)


Adapter = Callable[[Path, dict], pd.DataFrame]
_ADAPTERS: dict[str, Adapter] = {}


def register_adapter(name: str):
    """Decorator: ``@register_adapter("nih") def scan_nih(root: Path, options: dict) -> pd.DataFrame``."""

    def wrap(fn: Adapter) -> Adapter:
        _ADAPTERS[name] = fn
        return fn

    return wrap


def get_adapter(name: str) -> Adapter:
    if name not in _ADAPTERS and name.isidentifier() and importlib.util.find_spec(f"cxrgen.sources.{name}"):
        importlib.import_module(f"cxrgen.sources.{name}")  # registers the adapter
    if name not in _ADAPTERS:
        raise KeyError(f"unknown source {name!r}; known: {', '.join(sorted(_ADAPTERS))}")
    return _ADAPTERS[name]
