"""IU-Xray / OpenI (Indiana University chest X-ray collection) adapter.

Real layout (openi.nlm.nih.gov collections): ``NLMCXR_reports.tgz`` extracts to ``ecgen-radiology/<n>.xml`` (one report
per XML with FINDINGS/IMPRESSION, MeSH major/automatic terms and one ``parentImage id="CXR<n>_IM-xxxx-xxxx"`` per image).
Images come either as ``NLMCXR_png.tgz`` (``CXR<n>_IM-xxxx-xxxx.png``, 8-bit, resized) or ``NLMCXR_dcm.tgz`` whose files
are named ``<n>_IM-xxxx-xxxx.dcm`` (the ``filename`` column of the DICOM header table torchxrayvision ships, i.e. the
image id without its ``CXR`` prefix). The adapter lists either kind anywhere under the root.

The XMLs carry no view and no demographics; views come from the DICOM header table (``View Position``), falling back to
torchxrayvision's t-SNE view table; both default to the copies shipped with torchxrayvision (options
``iuxray_dicom_metadata`` and ``iuxray_tsne_views`` point elsewhere). There is no official split.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS, label_column
from cxrgen.sources.base import register_adapter
from cxrgen.sources.files import finish_manifest, list_files, merge_on_key, png_width

REPORT_DIR = "ecgen-radiology"

# MeSH heading (text before the first "/") -> CheXpert label. Headings observed in the 3,955 IU reports.
_MESH_HEAD_TO_LABEL: dict[str, str] = {
    "normal": "No Finding",
    "cardiomegaly": "Cardiomegaly",
    "pleural effusion": "Pleural Effusion",
    "hemothorax": "Pleural Effusion",
    "pneumothorax": "Pneumothorax",
    "hydropneumothorax": "Pneumothorax",
    "hemopneumothorax": "Pneumothorax",
    "pulmonary atelectasis": "Atelectasis",
    "atelectasis": "Atelectasis",
    "opacity": "Lung Opacity",
    "density": "Lung Opacity",
    "infiltrate": "Lung Opacity",
    "airspace disease": "Lung Opacity",
    "consolidation": "Consolidation",
    "pneumonia": "Pneumonia",
    "pulmonary edema": "Edema",
    "edema": "Edema",
    "pulmonary congestion": "Edema",  # CheXpert's labeler counts vascular congestion as edema
    "fractures, bone": "Fracture",
    "nodule": "Lung Lesion",
    "mass": "Lung Lesion",
    "catheters, indwelling": "Support Devices",
    "implanted medical device": "Support Devices",
    "medical device": "Support Devices",
    "surgical instruments": "Support Devices",
    "tube, inserted": "Support Devices",
    "stents": "Support Devices",
}
# heading + modifier combinations
_ENLARGED_HEART = {"cardiac shadow", "heart"}


def _mesh_label(term: str) -> str | None:
    parts = [p.strip().lower() for p in term.split("/")]
    head, modifiers = parts[0], set(parts[1:])
    if head in _MESH_HEAD_TO_LABEL:
        return _MESH_HEAD_TO_LABEL[head]
    if head in _ENLARGED_HEART and "enlarged" in modifiers:
        return "Cardiomegaly"
    if head == "mediastinum" and modifiers & {"enlarged", "widened"}:
        return "Enlarged Cardiomediastinum"
    if head == "thickening" and modifiers & {"pleura", "pleural"}:
        return "Pleural Other"
    return None


def mesh_to_chexpert(terms: list[str] | tuple[str, ...]) -> dict[str, float]:
    """Map IU MeSH terms (``"Pleural Effusion/right/small"``) to the 14 CheXpert labels: 1.0 when a term maps to the
    label, NaN otherwise (MeSH indexing has no negatives or uncertainty)."""
    labels = dict.fromkeys(CHEXPERT_LABELS, np.nan)
    for term in terms:
        label = _mesh_label(term)
        if label is not None:
            labels[label] = 1.0
    if labels["No Finding"] == 1.0 and any(labels[k] == 1.0 for k in CHEXPERT_LABELS if k != "No Finding"):
        labels["No Finding"] = np.nan  # "normal" beside a finding (rare indexing slip): the finding wins
    return labels


def mesh_laterality(terms: list[str] | tuple[str, ...]) -> dict[str, str]:
    """CheXpert label -> "left" | "right" | "bilateral" | "" from the MeSH modifiers of the terms that map to it."""
    sides: dict[str, set[str]] = {}
    for term in terms:
        label = _mesh_label(term)
        if label is None or label == "No Finding":
            continue
        modifiers = {p.strip().lower() for p in term.split("/")[1:]}
        sides.setdefault(label, set()).update(modifiers & {"left", "right", "bilateral"})
    out = {}
    for label, found in sides.items():
        if "bilateral" in found or found == {"left", "right"}:
            out[label] = "bilateral"
        else:
            out[label] = next(iter(found)) if found else ""
    return out


def _text_or_none(node: ET.Element | None) -> str | None:
    if node is None or node.text is None:
        return None
    text = node.text.strip()
    return text or None


def parse_report_xml(xml_bytes: bytes) -> dict:
    """Fields of one ``ecgen-radiology`` XML: uid, findings, impression, indication, comparison (str or None),
    mesh_major, mesh_automatic (lists of terms) and image_ids (``parentImage`` ids, document order)."""
    root = ET.fromstring(xml_bytes)
    sections = {node.get("Label", "").upper(): node for node in root.iter("AbstractText")}
    uid_node = root.find("uId")
    return {
        "uid": uid_node.get("id") if uid_node is not None else None,
        "findings": _text_or_none(sections.get("FINDINGS")),
        "impression": _text_or_none(sections.get("IMPRESSION")),
        "indication": _text_or_none(sections.get("INDICATION")),
        "comparison": _text_or_none(sections.get("COMPARISON")),
        "mesh_major": [n.text.strip() for n in root.findall("./MeSH/major") if n.text and n.text.strip()],
        "mesh_automatic": [n.text.strip() for n in root.findall("./MeSH/automatic") if n.text and n.text.strip()],
        "image_ids": [n.get("id") for n in root.iter("parentImage") if n.get("id")],
    }


_VIEW_MAP = {"PA": "PA", "AP": "AP", "LL": "LATERAL", "RL": "LATERAL", "LATERAL": "LATERAL",
             "LARGE LATERAL": "LATERAL", "L": "LATERAL"}


def normalise_view(value: object) -> str:
    if not isinstance(value, str):
        return "UNKNOWN"
    return _VIEW_MAP.get(value.strip().upper(), "UNKNOWN")


def first_number(value: object) -> float:
    """``"['0.143', '0.143']"`` / ``"0.15"`` / NaN -> first float or NaN."""
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return np.nan
    match = re.search(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", value)
    return float(match.group()) if match else np.nan


def _default_table(name: str) -> Path:
    from cxrgen.demo.common import txrv_data_dir

    return txrv_data_dir() / name


def load_dicom_header_table(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The IU DICOM header table indexed by image id (``CXR<n>_IM-…``), with the columns this project uses."""
    cols = ["imageid", "View Position", "Imager Pixel Spacing", "Pixel Spacing", "Columns", "Rows"]
    table = pd.read_csv(path or _default_table("nlmcxr_dicom_metadata.csv.gz"), usecols=lambda c: c in cols,
                        low_memory=False)
    return table.drop_duplicates("imageid").set_index("imageid")


def _png_width_or_nan(path: Path) -> float:
    width = png_width(path)
    return np.nan if width is None else float(width)


@register_adapter("iuxray")
def scan_iuxray(root: Path, options: dict) -> pd.DataFrame:
    """Manifest of an IU-Xray copy: reports from ``ecgen-radiology``, images from PNGs or DICOMs under ``root``.

    options: ``iuxray_images`` "auto" (DICOM when any .dcm exists, else PNG) | "dcm" | "png";
    ``iuxray_dicom_metadata`` / ``iuxray_tsne_views``: paths of the header and t-SNE view tables.
    """
    root = Path(root)
    reports = []
    report_dir = root / REPORT_DIR
    for xml_path in sorted(report_dir.glob("*.xml")) if report_dir.is_dir() else []:
        rep = parse_report_xml(xml_path.read_bytes())
        labels = mesh_to_chexpert(rep["mesh_major"])
        for image_id in rep["image_ids"]:
            reports.append({"source_key": image_id, "patient_id": rep["uid"] or xml_path.stem,
                            "report_findings": rep["findings"], "report_impression": rep["impression"],
                            **{label_column(k): v for k, v in labels.items()}})
    meta = pd.DataFrame(reports, columns=["source_key", "patient_id", "report_findings", "report_impression",
                                          *LABEL_COLUMNS]).drop_duplicates("source_key")

    image_format = options.get("iuxray_images", "auto")
    files = list_files(root, (".dcm", ".png"), skip_top_dirs=(REPORT_DIR,))["rel_path"].tolist()
    if image_format == "auto":
        image_format = "dcm" if any(f.lower().endswith(".dcm") for f in files) else "png"
    if image_format not in ("dcm", "png"):
        raise ValueError(f"iuxray_images={image_format!r}; allowed: auto, dcm, png")
    files = [f for f in files if f.lower().endswith("." + image_format)]
    disk = pd.DataFrame({"rel_path": files})
    stems = disk["rel_path"].str.rsplit("/", n=1).str[-1].str.rsplit(".", n=1).str[0]
    disk["source_key"] = ("CXR" + stems) if image_format == "dcm" else stems

    df = merge_on_key(disk, meta)
    df.loc[df["reject_reason"] == "missing_metadata", "patient_id"] = (
        df["source_key"].str.extract(r"^(CXR\d+)", expand=False))
    df["patient_id"] = df["patient_id"].fillna(df["source_key"])
    df["study_id"] = df["patient_id"]  # one report (= one study) per IU "patient"
    missing = df["reject_reason"] == "missing_file"
    # an absent file is reported where its siblings live (the folder holding most images)
    folders = disk["rel_path"].str.rpartition("/")[0]
    folder = folders.mode().iloc[0] + "/" if len(folders) and folders.mode().iloc[0] else ""
    ext = ".dcm" if image_format == "dcm" else ".png"
    df.loc[missing, "rel_path"] = df.loc[missing, "source_key"].map(
        lambda k: folder + (k[3:] if image_format == "dcm" else k) + ext)

    header = load_dicom_header_table(options.get("iuxray_dicom_metadata"))
    tsne = pd.read_csv(options.get("iuxray_tsne_views") or _default_table("nlmcxr_tsne_pa.csv.gz"))
    tsne = tsne.drop_duplicates("imageid").set_index("imageid")["tsne-view"]
    view = df["source_key"].map(header["View Position"]).map(normalise_view)
    fallback = df["source_key"].map(tsne).map(normalise_view)
    df["view"] = view.where(view != "UNKNOWN", fallback)

    df["spacing_hint_mm"] = np.nan
    if image_format == "png":
        # NLMCXR PNGs are resized: detector spacing scaled by original/PNG width
        spacing = df["source_key"].map(header["Imager Pixel Spacing"]).map(first_number)
        spacing = spacing.fillna(df["source_key"].map(header["Pixel Spacing"]).map(first_number))
        orig_cols = df["source_key"].map(header["Columns"]).astype(float)
        png_cols = [_png_width_or_nan(root / p) if r != "missing_file" else np.nan
                    for p, r in zip(df["rel_path"], df["reject_reason"], strict=True)]
        df["spacing_hint_mm"] = spacing * orig_cols / np.asarray(png_cols, dtype=float)

    df["file_format"] = "dicom" if image_format == "dcm" else "png"
    for col in ("report_findings", "report_impression"):
        df[col] = df[col].astype(object).where(df[col].notna(), None)
    return finish_manifest(df, "iuxray")  # no demographics, no official split
