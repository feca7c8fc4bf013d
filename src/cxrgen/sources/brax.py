"""BRAX (PhysioNet "BRAX, a Brazilian labeled chest X-ray dataset", v1.1.0) adapter.

Verified from public code and the dataset description: one spreadsheet ``master_spreadsheet_update.csv`` (v1.0.0:
``master_spreadsheet.csv``) with ``DicomPath``, ``PngPath``, ``PatientID`` (``id_<5x8 hex>``), ``AccessionNumber``,
``ViewPosition`` (PA, AP, L, RL, LL, decubitus/oblique codes, some blank), ``PatientSex`` (M/F/O), ``PatientAge``
(5-year groups, "85 or more"), ``StudyDate``, ``Rows``, ``Columns``, ``Manufacturer`` and the 14 CheXpert labels
(1/0/-1/blank, CheXpert labeler conventions); images under
``.../id_<patient>/Study_<uid>/Series_<uid>/image-<uid>.{dcm,png}``.

Not verified (no copy available here): the exact column order; the top-level image folder (``images/`` is seen for
PNGs, ``Anonymized_DICOMs/`` is reported for DICOMs); public loaders strip 7 trailing characters from ``PngPath``,
so the stored path may carry a suffix; the AccessionNumber format. The adapter therefore joins files and rows on the
``id_…/Study_…/Series_…/image-…`` part of the path, whatever precedes or follows it, and keys studies by
``PatientID`` + ``AccessionNumber`` (accession numbers are not guaranteed unique across patients). There is no
official split and there are no reports.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS, label_column
from cxrgen.sources.base import register_adapter
from cxrgen.sources.files import finish_manifest, list_files, merge_on_key

SPREADSHEETS = ("master_spreadsheet_update.csv", "master_spreadsheet.csv")
_KEY_RE = re.compile(r"(id_[^/\\]+[/\\]Study_[^/\\]+[/\\]Series_[^/\\]+[/\\]image-[^./\\]+)")
_VIEWS = {"PA": "PA", "AP": "AP", "L": "LATERAL", "LL": "LATERAL", "RL": "LATERAL", "LATERAL": "LATERAL"}


def image_key(path: str) -> str:
    """Join key of a BRAX image path: ``id_…/Study_…/Series_…/image-…`` (extension and any prefix/suffix dropped)."""
    match = _KEY_RE.search(path)
    if match:
        return match.group(1).replace("\\", "/")
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return name.split(".", 1)[0]


def parse_age(value: object) -> float:
    """BRAX 5-year age group -> group midpoint in years ("85 or more" -> 87.5); NaN when unparseable."""
    if isinstance(value, (int, float)) and np.isfinite(value):
        return float(value) + 2.5
    if not isinstance(value, str):
        return np.nan
    match = re.search(r"\d+", value)
    return float(match.group()) + 2.5 if match else np.nan


def normalise_view(value: object) -> str:
    return _VIEWS.get(value.strip().upper(), "UNKNOWN") if isinstance(value, str) else "UNKNOWN"


@register_adapter("brax")
def scan_brax(root: Path, options: dict) -> pd.DataFrame:
    """Manifest of a BRAX copy. options: ``brax_images`` "auto" (DICOM when any .dcm exists) | "dcm" | "png"."""
    root = Path(root)
    sheet_path = next((root / n for n in SPREADSHEETS if (root / n).is_file()), None)
    image_format = options.get("brax_images", "auto")
    if image_format == "auto":
        image_format = "dcm" if len(list_files(root, (".dcm",))) else "png"
    if image_format not in ("dcm", "png"):
        raise ValueError(f"brax_images={image_format!r}; allowed: auto, dcm, png")
    path_col = "DicomPath" if image_format == "dcm" else "PngPath"

    disk = pd.DataFrame({"rel_path": list_files(root, ("." + image_format,))["rel_path"].tolist()})
    disk["source_key"] = disk["rel_path"].map(image_key)
    if sheet_path is not None:
        sheet = pd.read_csv(sheet_path, dtype={"PatientID": str, "AccessionNumber": str, "PatientAge": str},
                            low_memory=False)
    else:
        sheet = pd.DataFrame(columns=[path_col, "PatientID", "AccessionNumber", "ViewPosition", "PatientSex",
                                      "PatientAge", *CHEXPERT_LABELS])
    sheet = sheet.rename(columns={name: label_column(name) for name in CHEXPERT_LABELS})
    for col in LABEL_COLUMNS:
        if col not in sheet.columns:
            sheet[col] = np.nan
    sheet["source_key"] = sheet[path_col].astype(str).map(image_key)
    sheet = sheet.drop_duplicates("source_key")
    sheet = sheet.rename(columns={path_col: "sheet_path"})
    keep = ["source_key", "sheet_path", "PatientID", "AccessionNumber", "ViewPosition", "PatientSex", "PatientAge",
            *LABEL_COLUMNS]
    df = merge_on_key(disk, sheet[keep])
    missing = df["reject_reason"] == "missing_file"
    df.loc[missing, "rel_path"] = df.loc[missing, "sheet_path"]

    from_path = df["source_key"].str.extract(r"^(id_[^/]+)/(Study_[^/]+)/")
    df["patient_id"] = df["PatientID"].fillna(from_path[0]).fillna(df["source_key"])
    df["study_id"] = (df["patient_id"] + "_" + df["AccessionNumber"].fillna(from_path[1]).fillna("")).str.rstrip("_")
    df["view"] = df["ViewPosition"].map(normalise_view)
    df["sex"] = df["PatientSex"].map(lambda s: s.strip().upper() if isinstance(s, str) else "U")
    df.loc[~df["sex"].isin(["M", "F"]), "sex"] = "U"  # "O" (other) has no slot in the manifest
    df["age"] = df["PatientAge"].map(parse_age)
    df["file_format"] = "dicom" if image_format == "dcm" else "png"
    return finish_manifest(df, "brax")  # no official split, no reports, no spacing in the spreadsheet
