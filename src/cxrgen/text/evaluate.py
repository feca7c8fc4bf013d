"""Measurements of the report labeler (used by rule ``evaluate_labeler``, :mod:`cxrgen.stages.evaluate_labeler`).

(a) **IU-Xray MeSH**: all report XMLs shipped in torchxrayvision (read at run time), labeler output on FINDINGS +
IMPRESSION vs the MeSH major terms mapped by :func:`cxrgen.sources.iuxray.mesh_to_chexpert`. MeSH indexing has
positives only, so per class precision and recall of the labeler's positives are measured (and recall when uncertain
counts as positive). "No Finding" is compared with the MeSH term "normal"; the labeler's No Finding follows
CheXpert's definition (none of the 12 pathologies), which ignores findings outside the 14 observations (granulomas,
spine changes, emphysema …) that keep MeSH from saying "normal", so its precision there is low by definition.

(b) **Demo MIMIC-style labels**: the ``mimic`` rows of the unified index (one report per study) vs their raw CheXpert
CSV labels (1/0/-1/blank). Caveat printed in the report: the demo MIMIC corpus is built from IU reports and its CSV
labels are MeSH terms plus simple negation/uncertainty cues (:func:`cxrgen.demo.layouts.mimic.report_labels`), not
the CheXpert labeler's output on real MIMIC-CXR reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS, NEGATIVE, POSITIVE, UNCERTAIN


def iuxray_reports() -> pd.DataFrame:
    """Every IU-Xray report with text: findings, impression and the 14 MeSH-derived labels (1 or NaN)."""
    from cxrgen.demo.layouts.iuxray import read_reports
    from cxrgen.sources.iuxray import mesh_to_chexpert, parse_report_xml

    rows = []
    for name, data in read_reports().items():
        rep = parse_report_xml(data)
        if not (rep["findings"] or rep["impression"]):
            continue
        mesh = mesh_to_chexpert(rep["mesh_major"])
        rows.append({"report": Path(name).stem, "findings": rep["findings"], "impression": rep["impression"],
                     **{f"mesh_{c}": mesh[k] for k, c in zip(CHEXPERT_LABELS, LABEL_COLUMNS, strict=True)}})
    return pd.DataFrame(rows)


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def mesh_table(labels: np.ndarray, mesh: np.ndarray) -> pd.DataFrame:
    """Per class: MeSH positives, labeler positives/uncertain, precision, recall, recall counting uncertain, F1."""
    rows = []
    for j, name in enumerate(CHEXPERT_LABELS):
        ref = mesh[:, j] == POSITIVE
        pos, unc = labels[:, j] == POSITIVE, labels[:, j] == UNCERTAIN
        tp = int((ref & pos).sum())
        p, r = _ratio(tp, int(pos.sum())), _ratio(tp, int(ref.sum()))
        rows.append({"label": name, "mesh_positive": int(ref.sum()), "labeler_positive": int(pos.sum()),
                     "labeler_uncertain": int(unc.sum()), "labeler_negative_on_mesh_positive": int((ref & (
                         labels[:, j] == NEGATIVE)).sum()),
                     "precision": p, "recall": r, "recall_incl_uncertain": _ratio(int((ref & (pos | unc)).sum()),
                                                                                   int(ref.sum())),
                     "f1": 2 * p * r / (p + r) if p == p and r == r and p + r > 0 else float("nan")})
    return pd.DataFrame(rows)


def agreement_table(labels: np.ndarray, reference: np.ndarray) -> pd.DataFrame:
    """Per class agreement of two raw-label matrices (1/0/-1/NaN): exact agreement where the reference says something
    (1, 0 or -1), how often the labeler says something where the reference is blank, and positive precision/recall."""
    rows = []
    for j, name in enumerate(CHEXPERT_LABELS):
        a = np.nan_to_num(labels[:, j], nan=9.0)
        b = np.nan_to_num(reference[:, j], nan=9.0)
        said = b != 9.0
        tp = int(((a == 1) & (b == 1)).sum())
        rows.append({"label": name, "reference_positive": int((b == 1).sum()), "reference_negative": int((b == 0).sum()),
                     "reference_uncertain": int((b == -1).sum()), "labeler_positive": int((a == 1).sum()),
                     "agreement_on_reference": _ratio(int((a == b)[said].sum()), int(said.sum())),
                     "labeler_only": int(((a != 9.0) & ~said).sum()),
                     "precision": _ratio(tp, int((a == 1).sum())), "recall": _ratio(tp, int((b == 1).sum()))})
    return pd.DataFrame(rows)


def mimic_rows(index: pd.DataFrame) -> pd.DataFrame:
    """One row per MIMIC study of the unified index (its report and raw dataset labels)."""
    rows = index[(index["source"] == "mimic")]
    if "label_source" in rows:
        rows = rows[rows["label_source"] == "dataset"]
    has_text = rows["report_findings"].notna() | rows["report_impression"].notna()
    return rows[has_text].drop_duplicates("study_pid").reset_index(drop=True)
