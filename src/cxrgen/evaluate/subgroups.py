"""Subgroup scores of a downstream classifier on the real test split: by sex and by age band (the fairness gap).

Every test image is scored once; each subgroup is the subset of images with that ``sex`` / ``age_bucket`` value of
the store index. A subgroup is scored with :func:`cxrgen.evaluate.metrics.multilabel_scores` (AUROC over its
evaluable findings, F1 at 0.5), so a finding with a single class inside the subgroup drops out of its averages. The
gap is the largest minus the smallest macro AUROC over the known groups (the unknown value — sources that do not
record sex or age — is reported but never part of a gap) that have at least ``min_images`` images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxrgen.evaluate.metrics import multilabel_scores

SUBGROUP_COLUMNS = {"sex": "U", "age_bucket": "unknown"}  # column -> the value meaning "not recorded"


def subgroup_scores(rows: pd.DataFrame, labels: np.ndarray, probs: np.ndarray, findings: Sequence[str],
                    min_images: int = 10) -> dict:
    """{column: {"groups": {value: {n, auroc_macro, auroc_micro, f1_macro, f1_micro, n_evaluable}},
    "auroc_macro_gap", "best", "worst"}} for each subgroup column present in ``rows`` (aligned with ``labels`` /
    ``probs``, one row per test image, columns = ``findings``)."""
    if not (len(rows) == len(labels) == len(probs)):
        raise ValueError(f"subgroup_scores: {len(rows)} rows, {len(labels)} label rows, {len(probs)} score rows")
    out = {}
    for column, unknown in SUBGROUP_COLUMNS.items():
        if column not in rows:
            continue
        values = rows[column].fillna(unknown).astype(str).to_numpy()
        groups = {}
        for value in sorted(set(values)):
            mask = values == value
            scores = multilabel_scores(labels[mask], probs[mask], thresholds=0.5, findings=list(findings))
            groups[value] = {"n": int(mask.sum()), "n_evaluable": scores["n_evaluable"],
                             "auroc_macro": scores["auroc"]["macro"], "auroc_micro": scores["auroc"]["micro"],
                             "f1_macro": scores["f1"]["macro"], "f1_micro": scores["f1"]["micro"]}
        ranked = sorted(((g["auroc_macro"], value) for value, g in groups.items()
                         if value != unknown and g["n"] >= min_images and g["auroc_macro"] is not None))
        gap = ranked[-1][0] - ranked[0][0] if len(ranked) >= 2 else None
        out[column] = {"groups": groups, "auroc_macro_gap": gap, "min_images": min_images,
                       "best": ranked[-1][1] if gap is not None else None,
                       "worst": ranked[0][1] if gap is not None else None}
    return out
