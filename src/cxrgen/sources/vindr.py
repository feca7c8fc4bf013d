"""VinDr-CXR adapter, Kaggle "VinBigData Chest X-ray Abnormalities Detection" layout.

Layout: ``train/<image_id>.dicom`` and ``train.csv`` with ``image_id, class_name, class_id, rad_id, x_min, y_min,
x_max, y_max``: one row per box per reader, 3 readers per image, ``No finding`` rows (class_id 14) with empty boxes.
The annotation is exhaustive, so a class is positive when at least ``options["vindr_min_readers"]`` (default 1) readers
marked it and negative (0) otherwise; CheXpert labels VinDr does not annotate (Edema, Pneumonia, Fracture, Support
Devices) stay NaN. ``No Finding`` is 1 when no finding class (mapped or not) reaches the threshold.
VinDr-CXR contains adult postero-anterior films only (Nguyen et al., Sci Data 2022), so views are PA; the CSV has no
patient linkage (patient_id = image_id) and no demographics. The Kaggle ``train`` folder is the official train split.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.labels import LABEL_COLUMNS, label_column
from cxrgen.sources.base import register_adapter
from cxrgen.sources.files import finish_manifest, merge_on_key

TRAIN_CSV = "train.csv"
NO_FINDING = "No finding"
VINDR_TO_CHEXPERT: dict[str, str | None] = {
    "Aortic enlargement": "Enlarged Cardiomediastinum",
    "Cardiomegaly": "Cardiomegaly",
    "Pleural effusion": "Pleural Effusion",
    "Pneumothorax": "Pneumothorax",
    "Atelectasis": "Atelectasis",
    "Consolidation": "Consolidation",
    "Lung Opacity": "Lung Opacity",
    "Infiltration": "Lung Opacity",
    "Nodule/Mass": "Lung Lesion",
    "Other lesion": "Lung Lesion",
    "Pleural thickening": "Pleural Other",
    "ILD": None,
    "Pulmonary fibrosis": None,
    "Calcification": None,
}
ANNOTATED_LABELS = ("No Finding", *sorted({v for v in VINDR_TO_CHEXPERT.values() if v}))


def image_labels(annotations: pd.DataFrame, min_readers: int = 1) -> pd.DataFrame:
    """Per-image CheXpert label columns (``lbl_*``) from VinDr reader annotations, indexed by image_id."""
    ann = annotations[["image_id", "class_name", "rad_id"]].dropna(subset=["image_id", "class_name"])
    findings = ann[ann["class_name"] != NO_FINDING]
    images = pd.Index(ann["image_id"].unique(), name="image_id")
    out = pd.DataFrame(np.nan, index=images, columns=list(LABEL_COLUMNS))
    for label in ANNOTATED_LABELS[1:]:
        out[label_column(label)] = 0.0
    readers_per_class = findings.groupby(["image_id", "class_name"])["rad_id"].nunique()
    positive = readers_per_class[readers_per_class >= min_readers].reset_index()
    positive["label"] = positive["class_name"].map(VINDR_TO_CHEXPERT)
    for label, ids in positive.dropna(subset=["label"]).groupby("label")["image_id"]:
        out.loc[ids.unique(), label_column(label)] = 1.0
    out[label_column("No Finding")] = (~images.isin(positive["image_id"])).astype(float)
    return out


@register_adapter("vindr")
def scan_vindr(root: Path, options: dict) -> pd.DataFrame:
    """Manifest of a VinBigData/VinDr-CXR copy. options: ``vindr_min_readers`` (1), ``vindr_image_dir`` ("train")."""
    root = Path(root)
    image_dir = options.get("vindr_image_dir", "train")
    min_readers = int(options.get("vindr_min_readers", 1))
    folder = root / image_dir
    names = sorted(n for n in (os.listdir(folder) if folder.is_dir() else []) if n.lower().endswith(".dicom"))
    disk = pd.DataFrame({"rel_path": [f"{image_dir}/{n}" for n in names],
                         "source_key": [n.rsplit(".", 1)[0] for n in names]})
    csv_path = root / TRAIN_CSV
    ann = (pd.read_csv(csv_path, dtype={"image_id": str, "rad_id": str}) if csv_path.is_file()
           else pd.DataFrame(columns=["image_id", "class_name", "rad_id"]))
    labels = image_labels(ann, min_readers).reset_index().rename(columns={"image_id": "source_key"})
    df = merge_on_key(disk, labels)
    missing = df["reject_reason"] == "missing_file"
    df.loc[missing, "rel_path"] = image_dir + "/" + df.loc[missing, "source_key"] + ".dicom"

    df["patient_id"] = df["source_key"]
    df["study_id"] = df["source_key"]
    df["view"] = options.get("vindr_view", "PA")
    df["official_split"] = "train" if image_dir == "train" else ("test" if image_dir == "test" else None)
    df["file_format"] = "dicom"
    return finish_manifest(df, "vindr")  # no demographics, no reports
