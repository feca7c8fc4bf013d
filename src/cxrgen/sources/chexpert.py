"""CheXpert adapter (Stanford ML Group release, "small" or full-resolution).

Real layout: ``CheXpert-v1.0-small/{train,valid}.csv`` and
``CheXpert-v1.0-small/{train,valid}/patientNNNNN/studyN/viewN_{frontal,lateral}.jpg`` (8-bit JPEGs; the full release is
``CheXpert-v1.0/`` with the same structure). CSV columns: ``Path, Sex, Age, Frontal/Lateral, AP/PA`` and the 14
observations, whose cells are ``1.0`` / ``0.0`` / ``-1.0`` / blank in train.csv (labeler output) and ``1.0`` / ``0.0`` in
valid.csv (radiologist consensus). ``Path`` starts with the release folder, i.e. it is relative to the folder that holds
``CheXpert-v1.0-small``. The root given to the adapter may be either that parent folder or the release folder itself.

Official split: train.csv -> ``train``, valid.csv -> ``val`` (the 500-study test set is not public; Cheff's Table 1
lists 235 CheXpert test images, i.e. this valid set). JPEGs carry no pixel spacing, so ``spacing_hint_mm`` is NaN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.labels import CHEXPERT_LABELS, label_column
from cxrgen.sources.base import register_adapter
from cxrgen.sources.files import join_files, list_files

RELEASE_DIRS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
# valid.csv (radiologist-labelled, 234 images) is the held-out evaluation set every paper reports on, and the one
# MaCheX counts as CheXpert's test split (Cheff Table 1); the official CheXpert test set is not public.
SPLIT_FILES = {"train.csv": "train", "valid.csv": "test"}
_SEX = {"male": "M", "female": "F"}


def find_release_dir(root: Path) -> Path:
    """The folder holding train.csv/valid.csv: ``root`` itself or one of its release sub-folders."""
    for candidate in (root, *(root / d for d in RELEASE_DIRS)):
        if any((candidate / name).is_file() for name in SPLIT_FILES):
            return candidate
    raise FileNotFoundError(f"no CheXpert train.csv/valid.csv in {root} or {', '.join(RELEASE_DIRS)} below it")


def chexpert_view(frontal_lateral: pd.Series, ap_pa: pd.Series) -> pd.Series:
    """``Lateral`` -> LATERAL; ``Frontal`` with AP/PA -> AP/PA; frontal rows tagged LL/RL (17 in train) or blank ->
    UNKNOWN, since the two columns disagree."""
    fl = frontal_lateral.str.strip().str.lower()
    ap = ap_pa.str.strip().str.upper()
    view = pd.Series("UNKNOWN", index=fl.index, dtype=object)
    view[fl.eq("lateral")] = "LATERAL"
    frontal = fl.eq("frontal") & ap.isin(["AP", "PA"])
    view[frontal] = ap[frontal]
    return view


def chexpert_metadata(table: pd.DataFrame, split: str, rel_prefix: str) -> pd.DataFrame:
    """One CheXpert CSV (read with ``dtype=str``) -> manifest metadata columns plus ``match_key``/``expected_path``.

    ``rel_prefix`` replaces the release folder that starts each ``Path`` ("" when the root is the release folder)."""
    path = table["Path"].str.strip()
    tail = path.str.split("/", n=1).str[1]
    expected = tail if not rel_prefix else rel_prefix + "/" + tail
    meta = pd.DataFrame({"match_key": expected, "expected_path": expected, "source_key": path})
    meta["patient_id"] = path.str.extract(r"(patient\d+)", expand=False).fillna(path)
    study = path.str.extract(r"(patient\d+/study\d+)", expand=False)
    meta["study_id"] = study.fillna(path)
    meta["view"] = chexpert_view(table["Frontal/Lateral"], table["AP/PA"])
    meta["sex"] = table["Sex"].str.strip().str.lower().map(_SEX).fillna("U")
    meta["age"] = pd.to_numeric(table["Age"], errors="coerce")
    meta["spacing_hint_mm"] = np.nan
    meta["bits_stored_hint"] = np.nan
    meta["official_split"] = split
    for label in CHEXPERT_LABELS:
        meta[label_column(label)] = pd.to_numeric(table[label], errors="coerce")
    return meta


@register_adapter("chexpert")
def scan_chexpert(root: Path, options: dict) -> pd.DataFrame:
    """Manifest of a CheXpert copy (train.csv + valid.csv)."""
    root = Path(root)
    release = find_release_dir(root)
    rel_prefix = "" if release == root else release.relative_to(root).as_posix()
    parts = []
    for name, split in SPLIT_FILES.items():
        if (release / name).is_file():
            table = pd.read_csv(release / name, dtype=str, keep_default_na=False)
            parts.append(chexpert_metadata(table, split, rel_prefix))
    meta = pd.concat(parts, ignore_index=True)
    files = list_files(root, (".jpg", ".jpeg"))
    return join_files(meta, files, match_on="rel_path", source="chexpert")
