"""MIMIC-CXR adapter (DICOM release v2.0.0 plus the CSVs of the MIMIC-CXR-JPG release).

Layout: ``files/p<2 digits>/p<subject_id>/s<study_id>/<dicom_id>.dcm`` (``.jpg`` in the JPG release), free-text reports
``files/p<2>/p<subject_id>/s<study_id>.txt`` (from ``mimic-cxr-reports.zip``), and at the root
``mimic-cxr-2.0.0-metadata.csv[.gz]`` (one row per dicom_id, ``ViewPosition``), ``mimic-cxr-2.0.0-chexpert.csv[.gz]``
(one row per study, 14 labels 1/0/-1/blank) and ``mimic-cxr-2.0.0-split.csv[.gz]`` (train/validate/test per dicom_id).
Sex and age are not part of MIMIC-CXR (they live in MIMIC-IV), so they are "U"/NaN here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS, label_column
from cxrgen.sources.base import register_adapter
from cxrgen.sources.files import find_table, finish_manifest, list_files, merge_on_key

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
_VIEWS = {"PA": "PA", "AP": "AP", "LATERAL": "LATERAL", "LL": "LATERAL", "RL": "LATERAL"}
_SPLITS = {"train": "train", "validate": "val", "test": "test"}
_IMAGE_RE = re.compile(r"^files/p\d{2}/p(\d+)/s(\d+)/([^/]+)\.(dcm|jpg)$", re.IGNORECASE)
_HEADER_RE = re.compile(r"^\s*([A-Z][A-Z &/]{2,60}):", re.MULTILINE)


def parse_report_sections(text: str) -> dict[str, str | None]:
    """FINDINGS and IMPRESSION of a MIMIC free-text report (whitespace collapsed); None when a section is absent.
    ``FINDINGS AND IMPRESSION`` counts for both; ``CONCLUSION`` stands in for a missing IMPRESSION."""
    sections: dict[str, str] = {}
    headers = list(_HEADER_RE.finditer(text))
    for i, match in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        body = " ".join(text[match.end():end].split())
        sections.setdefault(match.group(1).strip(), body)
    findings = sections.get("FINDINGS") or sections.get("FINDINGS AND IMPRESSION") or None
    impression = (sections.get("IMPRESSION") or sections.get("FINDINGS AND IMPRESSION")
                  or sections.get("CONCLUSION") or None)
    return {"findings": findings, "impression": impression}


def normalise_view(value: object) -> str:
    return _VIEWS.get(value.strip().upper(), "UNKNOWN") if isinstance(value, str) else "UNKNOWN"


def _list_tree(root: Path) -> tuple[list[str], list[str]]:
    """Images (.dcm/.jpg) and reports (.txt) under ``root/files``, as sorted paths relative to ``root``."""
    paths = ("files/" + list_files(root / "files", (".dcm", ".jpg", ".txt"))["rel_path"]).tolist()
    return [p for p in paths if not p.lower().endswith(".txt")], [p for p in paths if p.lower().endswith(".txt")]


@register_adapter("mimic")
def scan_mimic(root: Path, options: dict) -> pd.DataFrame:
    """Manifest of a MIMIC-CXR copy. options: ``mimic_images`` "auto" (DICOM when any .dcm exists) | "dcm" | "jpg"."""
    root = Path(root)
    images, reports = _list_tree(root)
    image_format = options.get("mimic_images", "auto")
    if image_format == "auto":
        image_format = "dcm" if any(p.lower().endswith(".dcm") for p in images) else "jpg"
    if image_format not in ("dcm", "jpg"):
        raise ValueError(f"mimic_images={image_format!r}; allowed: auto, dcm, jpg")
    disk = pd.DataFrame({"rel_path": [p for p in images if p.lower().endswith("." + image_format)]})
    parts = disk["rel_path"].str.extract(_IMAGE_RE)
    disk["patient_id"], disk["study_id"], disk["source_key"] = parts[0], parts[1], parts[2]
    disk = disk.dropna(subset=["source_key"])

    meta_path = find_table(root, METADATA_CSV)
    meta = (pd.read_csv(meta_path, dtype={"dicom_id": str, "subject_id": str, "study_id": str},
                        usecols=["dicom_id", "subject_id", "study_id", "ViewPosition"])
            if meta_path else pd.DataFrame(columns=["dicom_id", "subject_id", "study_id", "ViewPosition"]))
    meta = meta.rename(columns={"dicom_id": "source_key", "subject_id": "meta_subject", "study_id": "meta_study"})
    df = merge_on_key(disk, meta.drop_duplicates("source_key"))
    df["patient_id"] = df["meta_subject"].fillna(df["patient_id"])
    df["study_id"] = df["meta_study"].fillna(df["study_id"])
    missing = df["reject_reason"] == "missing_file"
    df.loc[missing, "rel_path"] = ("files/p" + df.loc[missing, "patient_id"].str[:2] + "/p" + df.loc[missing, "patient_id"]
                                   + "/s" + df.loc[missing, "study_id"] + "/" + df.loc[missing, "source_key"]
                                   + "." + image_format)
    df["view"] = df["ViewPosition"].map(normalise_view)

    labels_path = find_table(root, CHEXPERT_CSV)
    if labels_path:
        labels = pd.read_csv(labels_path, dtype={"subject_id": str, "study_id": str})
        labels = labels.rename(columns={name: label_column(name) for name in CHEXPERT_LABELS})
        labels = labels[["subject_id", "study_id", *LABEL_COLUMNS]].drop_duplicates(["subject_id", "study_id"])
        df = df.merge(labels.rename(columns={"subject_id": "patient_id"}), on=["patient_id", "study_id"], how="left")
    else:
        for col in LABEL_COLUMNS:
            df[col] = np.nan

    split_path = find_table(root, SPLIT_CSV)
    if split_path:
        split = pd.read_csv(split_path, dtype=str, usecols=["dicom_id", "split"]).drop_duplicates("dicom_id")
        df["official_split"] = df["source_key"].map(split.set_index("dicom_id")["split"].map(_SPLITS))
    else:
        df["official_split"] = None

    report_of_study = {}
    for rel in reports:
        match = re.search(r"/s(\d+)\.txt$", rel)
        if match:
            report_of_study[match.group(1)] = rel
    sections = {}
    for study in df["study_id"].dropna().unique():
        rel = report_of_study.get(study)
        if rel is not None:
            sections[study] = parse_report_sections((root / rel).read_text(errors="replace"))
    df["report_findings"] = df["study_id"].map(lambda s: sections.get(s, {}).get("findings"))
    df["report_impression"] = df["study_id"].map(lambda s: sections.get(s, {}).get("impression"))
    df["file_format"] = "dicom" if image_format == "dcm" else "jpg"
    return finish_manifest(df, "mimic")  # sex and age unknown (they live in MIMIC-IV)
