"""The 14 CheXpert observations used as the unified label space, and the uncertain/blank label policy.

Raw label values in every source manifest follow the CheXpert convention:
``1.0`` positive, ``0.0`` negative, ``-1.0`` uncertain, ``NaN`` blank (not mentioned / not annotated).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0


def label_column(label: str) -> str:
    """Column name of a label in manifests and the index: ``"Pleural Effusion"`` -> ``"lbl_pleural_effusion"``."""
    return "lbl_" + label.lower().replace(" ", "_")


LABEL_COLUMNS: tuple[str, ...] = tuple(label_column(name) for name in CHEXPERT_LABELS)

UNCERTAIN_POLICIES = ("ones", "zeros", "ignore")
BLANK_POLICIES = ("zeros", "ignore")


def apply_label_policy(raw: pd.DataFrame | np.ndarray, uncertain: str, blank: str) -> np.ndarray:
    """Map raw CheXpert-convention values to training targets.

    uncertain: ``ones`` (U-Ones), ``zeros`` (U-Zeros) or ``ignore`` (NaN, masked out of losses).
    blank: ``zeros`` (not mentioned = absent) or ``ignore`` (NaN).
    Returns float32 values in {0, 1, NaN}.
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"label_policy.uncertain={uncertain!r}; allowed: {', '.join(UNCERTAIN_POLICIES)}")
    if blank not in BLANK_POLICIES:
        raise ValueError(f"label_policy.blank={blank!r}; allowed: {', '.join(BLANK_POLICIES)}")
    values = np.asarray(raw, dtype=np.float32).copy()
    unknown = ~np.isin(values, (POSITIVE, NEGATIVE, UNCERTAIN)) & ~np.isnan(values)
    if unknown.any():
        raise ValueError(f"raw labels must be 1, 0, -1 or NaN; found {sorted(set(values[unknown].tolist()))}")
    is_uncertain = values == UNCERTAIN
    is_blank = np.isnan(values)
    values[is_uncertain] = {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[uncertain]
    values[is_blank] = {"zeros": 0.0, "ignore": np.nan}[blank]
    return values
