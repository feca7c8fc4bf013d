"""Readers of the MIMIC-IV tables the ICU cohort needs, for the v2.x module layout (``hosp/``, ``icu/``; csv or
csv.gz) and the v1.0 layout (``core/`` holding patients/admissions), reading only the needed columns.

Layout differences the readers absorb (PhysioNet release notes): v1.0 keeps patients/admissions/transfers in
``core/``; v2.0 moves them to ``hosp/``; v2.2 adds ``hosp/provider`` and ``icu/caregiver`` and provider/caregiver id
columns (``admissions.admit_provider_id``, ``labevents.order_provider_id``, ``chartevents.caregiver_id``). The
columns read here exist in all of them. ``chartevents`` (~300 M rows in v2.2) and ``labevents`` (~120 M) are read in
chunks, keeping only the wanted itemids and stays/subjects, so memory scales with the cohort, not the table.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

CHUNK_ROWS = 2_000_000

# table -> (module folder in v2.x, module folder in v1.0)
_MODULES = {"patients": ("hosp", "core"), "admissions": ("hosp", "core"), "diagnoses_icd": ("hosp", "hosp"),
            "labevents": ("hosp", "hosp"), "icustays": ("icu", "icu"), "chartevents": ("icu", "icu")}

COLUMNS = {
    "patients": ["subject_id", "gender", "anchor_age", "anchor_year"],
    "admissions": ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "hospital_expire_flag"],
    "icustays": ["subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime", "outtime"],
    "diagnoses_icd": ["hadm_id", "icd_code", "icd_version"],
    "chartevents": ["stay_id", "charttime", "itemid", "value", "valuenum", "valueuom"],
    "labevents": ["subject_id", "charttime", "itemid", "value", "valuenum", "valueuom"],
}
_DATES = {"admissions": ["admittime", "dischtime", "deathtime"], "icustays": ["intime", "outtime"],
          "chartevents": ["charttime"], "labevents": ["charttime"]}
_DTYPES = {"subject_id": "int64", "hadm_id": "Int64", "stay_id": "int64", "itemid": "int64", "value": "string",
           "valuenum": "float64", "valueuom": "string", "icd_code": "string", "icd_version": "int64",
           "first_careunit": "string", "last_careunit": "string", "gender": "string", "anchor_age": "int64",
           "anchor_year": "int64", "hospital_expire_flag": "int64"}


class MimicIvError(FileNotFoundError):
    pass


def table_path(root: Path | str, table: str, version: str | None = None) -> Path:
    """``<root>/<module>/<table>.csv[.gz]`` for the layout of ``version`` (detected when None)."""
    root = Path(root)
    version = version or detect_version(root)
    module = _MODULES[table][1 if version == "v1.0" else 0]
    for name in (f"{table}.csv.gz", f"{table}.csv"):
        if (root / module / name).is_file():
            return root / module / name
    raise MimicIvError(f"MIMIC-IV table {module}/{table}.csv[.gz] not found under {root} (layout {version}; config key "
                       f"icu.mimic_iv_root must name the folder holding hosp/ and icu/)")


def _exists(root: Path, module: str, table: str) -> bool:
    return any((root / module / f"{table}{ext}").is_file() for ext in (".csv", ".csv.gz"))


def _header(path: Path) -> list[str]:
    return list(pd.read_csv(path, nrows=0).columns)


def detect_version(root: Path | str) -> str:
    """``v1.0`` (core/ module), ``v2.2`` (provider/caregiver tables or their id columns) or ``v2.0`` (hosp/ + icu/
    without them; v2.1 has the same layout as v2.0 for every table read here)."""
    root = Path(root)
    if _exists(root, "core", "patients"):
        return "v1.0"
    if not (_exists(root, "hosp", "patients") and _exists(root, "icu", "icustays")):
        raise MimicIvError(f"{root} has no MIMIC-IV layout: expected hosp/patients.csv[.gz] and icu/icustays.csv[.gz] "
                           f"(v2.x) or core/patients.csv[.gz] (v1.0); config key icu.mimic_iv_root")
    if _exists(root, "hosp", "provider") or _exists(root, "icu", "caregiver"):
        return "v2.2"
    if "admit_provider_id" in _header(table_path(root, "admissions", "v2.0")):
        return "v2.2"
    return "v2.0"


def _read(path: Path, table: str, **kwargs) -> pd.DataFrame | Iterable[pd.DataFrame]:
    columns = COLUMNS[table]
    missing = sorted(set(columns) - set(_header(path)))
    if missing:
        raise MimicIvError(f"{path} lacks column(s) {missing} (needed: {columns})")
    return pd.read_csv(path, usecols=columns, dtype={c: _DTYPES[c] for c in columns if c in _DTYPES}, **kwargs)


def _parse_dates(df: pd.DataFrame, table: str) -> pd.DataFrame:
    for column in _DATES.get(table, ()):
        df[column] = pd.to_datetime(df[column], errors="coerce")
    return df


def read_table(root: Path | str, table: str, version: str | None = None) -> pd.DataFrame:
    """A small table (patients, admissions, icustays, diagnoses_icd) with the needed columns, dates parsed."""
    return _parse_dates(_read(table_path(root, table, version), table), table)


def read_events(root: Path | str, table: str, itemids: Iterable[int], keys: Iterable[int], *,
                version: str | None = None, chunk_rows: int = CHUNK_ROWS) -> pd.DataFrame:
    """Rows of ``chartevents`` (filtered on ``stay_id``) or ``labevents`` (on ``subject_id``) whose itemid is in
    ``itemids`` and whose key is in ``keys``, read ``chunk_rows`` at a time; charttime parsed after filtering."""
    key = {"chartevents": "stay_id", "labevents": "subject_id"}[table]
    itemids, keys = pd.Index(sorted(set(itemids))), pd.Index(sorted(set(keys)))
    parts, seen = [], 0
    for chunk in _read(table_path(root, table, version), table, chunksize=chunk_rows):
        seen += len(chunk)
        parts.append(chunk[chunk["itemid"].isin(itemids) & chunk[key].isin(keys)])
    events = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS[table])
    log.info("%s: kept %d of %d rows (itemids and cohort)", table, len(events), seen)
    return _parse_dates(events, table)
