"""NIH ChestX-ray14 adapter.

Real layout (NIH Clinical Center box.com release): ``images_001.tar.gz`` … ``images_012.tar.gz`` each extract to
``images/<Image Index>`` (1024×1024 PNGs, resized from the original films); ``Data_Entry_2017_v2020.csv`` (older copies:
``Data_Entry_2017.csv``) with the columns ``Image Index, Finding Labels, Follow-up #, Patient ID, Patient Age,
Patient Gender, View Position, OriginalImage[Width, Height], OriginalImagePixelSpacing[x, y]`` (the bracketed header
names are split by the CSV commas); ``train_val_list.txt`` and ``test_list.txt`` (the official patient-wise split, one
Image Index per line). The Kaggle mirror nests them as ``images_NNN/images/*.png``, so PNGs are matched by file name
anywhere under the root.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.labels import CHEXPERT_LABELS, label_column
from cxrgen.sources.base import register_adapter
from cxrgen.sources.files import find_first, join_files, list_files, png_width

METADATA_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
TRAIN_VAL_LIST, TEST_LIST = "train_val_list.txt", "test_list.txt"
RELEASE_PNG_WIDTH = 1024  # the released PNGs are 1024² (Wang et al., CVPR 2017, ChestX-ray8 §3)

NIH_FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
                "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax")
# NIH finding -> CheXpert label. Emphysema, Fibrosis and Hernia have no CheXpert counterpart.
NIH_TO_CHEXPERT: dict[str, str] = {
    "No Finding": "No Finding",
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Effusion": "Pleural Effusion",
    "Infiltration": "Lung Opacity",
    "Mass": "Lung Lesion",
    "Nodule": "Lung Lesion",
    "Pleural_Thickening": "Pleural Other",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
}
# CheXpert's label hierarchy puts these under Lung Opacity (Irvin et al., AAAI 2019, Fig. 2): when one of them is
# positive without "Infiltration", NIH did not say "no opacity", so Lung Opacity is left blank instead of 0.
_OPACITY_CHILDREN = ("Atelectasis", "Consolidation", "Edema", "Mass", "Nodule", "Pneumonia")


def nih_labels(finding_labels: pd.Series) -> pd.DataFrame:
    """``Finding Labels`` ("Effusion|Mass" or "No Finding") -> raw CheXpert-convention label columns.

    NIH labels are exhaustive for its 14 findings: a mapped label absent from the list is 0. CheXpert labels without an
    NIH counterpart (Enlarged Cardiomediastinum, Fracture, Support Devices) are NaN. Rows with an empty list are NaN.
    """
    text = finding_labels.fillna("").astype(str).str.replace(r"\s*\|\s*", "|", regex=True).str.strip()
    present = text.str.get_dummies(sep="|")
    has_list = (text.str.strip() != "").to_numpy()
    out = pd.DataFrame(index=finding_labels.index)
    for label in CHEXPERT_LABELS:
        sources = [k for k, v in NIH_TO_CHEXPERT.items() if v == label]
        if not sources:
            out[label_column(label)] = np.nan
            continue
        hit = np.zeros(len(text), dtype=bool)
        for name in sources:
            if name in present:
                hit |= present[name].to_numpy(dtype=bool)
        out[label_column(label)] = np.where(has_list, hit.astype(float), np.nan)
    child = np.zeros(len(text), dtype=bool)
    for name in _OPACITY_CHILDREN:
        if name in present:
            child |= present[name].to_numpy(dtype=bool)
    opacity = out[label_column("Lung Opacity")].to_numpy()
    out[label_column("Lung Opacity")] = np.where((opacity == 0) & child, np.nan, opacity)
    return out


def _read_list(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def nih_metadata(table: pd.DataFrame, test: set[str], train_val: set[str], width_px: float) -> pd.DataFrame:
    """The Data_Entry table (read with ``dtype=str``) -> manifest metadata columns plus ``match_key``/``expected_path``.

    ``width_px`` is the width of the PNGs on disk (1024 for the release) used for the effective spacing
    ``OriginalImagePixelSpacing[x × OriginalImage[Width / width_px``.
    """
    key = table["Image Index"].str.strip()
    meta = pd.DataFrame({"match_key": key, "source_key": key, "expected_path": "images/" + key})
    meta["patient_id"] = table["Patient ID"].str.strip().str.lstrip("0").replace("", "0")
    meta["study_id"] = key  # NIH has no study level: each follow-up is one image
    view = table["View Position"].str.strip().str.upper()
    meta["view"] = view.where(view.isin(["PA", "AP"]), "UNKNOWN")
    sex = table["Patient Gender"].str.strip().str.upper()
    meta["sex"] = sex.where(sex.isin(["M", "F"]), "U")
    # v2020 ages are integers; the 2017 table had a few entered in days/months (values > 120)
    age = pd.to_numeric(table["Patient Age"].str.extract(r"(\d+)", expand=False), errors="coerce")
    meta["age"] = age.where(age <= 120)
    spacing = pd.to_numeric(table["OriginalImagePixelSpacing[x"], errors="coerce")
    width = pd.to_numeric(table["OriginalImage[Width"], errors="coerce")
    meta["spacing_hint_mm"] = spacing * width / float(width_px)
    meta["bits_stored_hint"] = np.nan
    meta["official_split"] = np.where(key.isin(test), "test", np.where(key.isin(train_val), "train", None))
    return pd.concat([meta, nih_labels(table["Finding Labels"])], axis=1)


def _demo_or_release_width(root: Path, files: pd.DataFrame, options: dict) -> float:
    """PNG width used for the spacing hint: ``options["png_width"]``, else the most common width among a few listed
    PNGs (all release PNGs share one size; demo corpora are smaller), else the release width."""
    if options.get("png_width"):
        return float(options["png_width"])
    widths = [w for p in files["rel_path"].head(8) if (w := png_width(root / p))]
    return float(Counter(widths).most_common(1)[0][0]) if widths else float(RELEASE_PNG_WIDTH)


@register_adapter("nih")
def scan_nih(root: Path, options: dict) -> pd.DataFrame:
    """Manifest of an NIH ChestX-ray14 copy. Options: ``png_width`` (override the PNG width probe)."""
    root = Path(root)
    table = pd.read_csv(find_first(root, METADATA_NAMES), dtype=str, keep_default_na=False)
    files = list_files(root, (".png",))
    meta = nih_metadata(table, _read_list(root / TEST_LIST), _read_list(root / TRAIN_VAL_LIST),
                        _demo_or_release_width(root, files, options))
    return join_files(meta, files, match_on="name", source="nih")
