"""Report-style prompt text for findings: class-balanced template reports (generation), and label-derived reports
for images that come without a report (conditioning text for LDM training on label-only sources).

A label-derived report names only what the labels say: it never invents a side, a size or a device type, so its
sentences are side-free (the neutral sentence of a finding, or a template without a laterality placeholder).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS, label_column

# the prompt set of the re-identification audit (K seeds per sampled training image, rule build_prompts): sampled at
# the low resolution only (no SR) and read by the audit alone, never by the metric harness or the downstream pools
PROBE_SET = "reid_probe"

# rows of the models' sample grids (rules sample_ldm_grid, sample_dkim_grid): one template report per finding
GRID_FINDINGS = ("No Finding", "Cardiomegaly", "Pleural Effusion", "Pneumothorax")

# {side}: "right" | "left" | "bilateral" variants; findings without a side have no placeholder.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "No Finding": (
        "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
        "No acute cardiopulmonary abnormality.",
        "Normal chest radiograph. Cardiomediastinal silhouette within normal limits.",
    ),
    "Enlarged Cardiomediastinum": (
        "The cardiomediastinal silhouette is enlarged.",
        "Widened mediastinum.",
        "Enlarged cardiomediastinal contours.",
    ),
    "Cardiomegaly": (
        "The heart is enlarged. Cardiomegaly.",
        "Moderate cardiomegaly.",
        "Heart size is enlarged.",
    ),
    "Lung Opacity": (
        "Opacity in the {side} lung.",
        "There is a {side} basilar opacity.",
        "Patchy {side} airspace opacity.",
    ),
    "Lung Lesion": (
        "A nodule is seen in the {side} upper lobe.",
        "There is a {side} lung mass.",
        "{Side} pulmonary nodule.",
    ),
    "Edema": (
        "Pulmonary edema.",
        "Interstitial edema with vascular congestion.",
        "Moderate pulmonary edema.",
    ),
    "Consolidation": (
        "Consolidation in the {side} lower lobe.",
        "{Side} lower lobe consolidation.",
        "Focal {side} consolidation.",
    ),
    "Pneumonia": (
        "{Side} lower lobe pneumonia.",
        "Findings consistent with {side} pneumonia.",
        "Airspace disease in the {side} lung concerning for pneumonia.",
    ),
    "Atelectasis": (
        "{Side} basilar atelectasis.",
        "There is atelectasis at the {side} lung base.",
        "Subsegmental {side} atelectasis.",
    ),
    "Pneumothorax": (
        "Large {side} pneumothorax.",
        "There is a {side} apical pneumothorax.",
        "Small {side} pneumothorax.",
    ),
    "Pleural Effusion": (
        "Large {side} pleural effusion.",
        "There is a moderate {side} pleural effusion.",
        "Small {side} pleural effusion.",
    ),
    "Pleural Other": (
        "{Side} pleural thickening.",
        "There is {side} pleural scarring.",
        "Calcified {side} pleural plaque.",
    ),
    "Fracture": (
        "Fracture of the {side} posterior ribs.",
        "There is a {side} rib fracture.",
        "{Side} clavicle fracture.",
    ),
    "Support Devices": (
        "An endotracheal tube is in place.",
        "A left-sided pacemaker is present.",
        "A central venous catheter is in place.",
    ),
}
SIDES = ("right", "left", "bilateral")


def template_variants(finding: str) -> list[tuple[str, str]]:
    """All (sentence, laterality) variants of a finding: each template × side (or once, laterality "")."""
    out = []
    for template in TEMPLATES[finding]:
        if "{side}" in template.lower():
            out += [(template.format(side=s, Side=s.capitalize()), s) for s in SIDES]
        else:
            out.append((template, ""))
    return out


def finding_prompt(finding: str, k: int) -> str:
    """The k-th variant (cyclic) of a finding's template report."""
    variants = template_variants(finding)
    return variants[k % len(variants)][0]



# One plain sentence per finding ("There is cardiomegaly." is also the Diff-CXR DKIM template form).
NEUTRAL: dict[str, str] = {
    "No Finding": "No acute cardiopulmonary abnormality.",
    "Enlarged Cardiomediastinum": "There is an enlarged cardiomediastinum.",
    "Cardiomegaly": "There is cardiomegaly.",
    "Lung Opacity": "There is a lung opacity.",
    "Lung Lesion": "There is a lung lesion.",
    "Edema": "There is pulmonary edema.",
    "Consolidation": "There is consolidation.",
    "Pneumonia": "There is pneumonia.",
    "Atelectasis": "There is atelectasis.",
    "Pneumothorax": "There is a pneumothorax.",
    "Pleural Effusion": "There is a pleural effusion.",
    "Pleural Other": "There is pleural thickening.",
    "Fracture": "There is a fracture.",
    "Support Devices": "Support devices are present.",
}


def grid_labels(findings: list[str]) -> np.ndarray:
    """[n, 14] labels of one template prompt per finding (the DKIM grid's knowledge): the finding positive; "No
    Finding" 0 for a disease, and every other label 0 for "No Finding"."""
    out = np.full((len(findings), len(LABEL_COLUMNS)), np.nan, dtype=np.float32)
    for row, finding in enumerate(findings):
        col = CHEXPERT_LABELS.index(finding)
        if finding == "No Finding":
            out[row] = 0.0
        else:
            out[row, CHEXPERT_LABELS.index("No Finding")] = 0.0
        out[row, col] = 1.0
    return out


def side_free_variants(finding: str) -> list[str]:
    """Sentences of a finding that state no laterality: the neutral sentence first, then side-free templates."""
    return [NEUTRAL[finding], *(t for t in TEMPLATES[finding] if "{side}" not in t.lower() and t != NEUTRAL[finding])]


def _pick(options: list[str], key: str, finding: str) -> str:
    digest = hashlib.sha256(f"{key}:{finding}".encode()).digest()
    return options[int.from_bytes(digest[:4], "little") % len(options)]


def label_template_report(labels: Mapping[str, float], key: str) -> str:
    """A short report from CheXpert labels (``lbl_*`` → 1/0/NaN): one side-free sentence per positive finding in
    CheXpert order (No Finding's sentence when only it is positive); "" when no label is positive. The sentence
    variant is a function of ``key`` (e.g. the image id), so the text is deterministic per image."""
    positives = [f for f in CHEXPERT_LABELS
                 if f != "No Finding" and _is_positive(labels.get(label_column(f)))]
    if positives:
        return " ".join(_pick(side_free_variants(f), key, f) for f in positives)
    if _is_positive(labels.get(label_column("No Finding"))):
        return _pick(side_free_variants("No Finding"), key, "No Finding")
    return ""


def _is_positive(value) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and float(value) == 1.0
