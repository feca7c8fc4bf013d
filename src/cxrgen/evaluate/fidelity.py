"""Conditional fidelity (MedCoDi-M §3.5.2, Table 3): the evaluator classifies every generated image; AUROC and F1
per finding against the labels of the prompt that produced it, with micro/macro/weighted averages. The same numbers
on real held-out images (against their own labels) are the reference row: a generator cannot be judged more
faithful than the judge is accurate on real images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrgen.evaluate.metrics import bootstrap_draws, describe_bootstrap, multilabel_scores, percentile_interval


def _paths(scores: dict) -> dict[tuple, float]:
    """Every scalar of a :func:`multilabel_scores` result keyed by its path."""
    out = {}
    for name, values in scores["per_finding"].items():
        for key in ("auroc", "f1"):
            out[("per_finding", name, key)] = values[key]
    for key in ("auroc", "f1"):
        for average in ("micro", "macro", "weighted"):
            out[(key, average)] = scores[key][average]
    return out


def scores_with_intervals(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, findings: Sequence[str], *,
                          resamples: int, confidence: float, seed: int, min_per_class: int = 1) -> dict:
    """:func:`multilabel_scores` where every AUROC/F1 becomes ``{value, ci_low, ci_high}`` (percentile bootstrap over
    images; a draw in which a finding lacks one class does not count for that finding's interval). Which findings
    are scored (``min_per_class`` of each class) is decided on the point estimate only."""
    point = multilabel_scores(labels, probs, thresholds, findings, min_per_class)
    scored = np.array([name in point["per_finding"] for name in findings])
    masked = np.where(scored[None, :], labels, np.nan)  # a skipped finding stays out of every draw's averages
    draws = bootstrap_draws(lambda idx: _paths(multilabel_scores(masked[idx], probs[idx], thresholds, findings)),
                            [len(labels)], resamples=resamples, seed=seed)
    method = describe_bootstrap(resamples, confidence)

    def interval(path: tuple, value) -> dict:
        samples = np.array([d[path] for d in draws if d.get(path) is not None], dtype=np.float64)
        low, high = percentile_interval(samples, confidence)
        return {"value": value, "ci_low": low, "ci_high": high}

    out = {"per_finding": {}, "skipped": point["skipped"], "n_images": point["n_images"],
           "n_evaluable": point["n_evaluable"], "ci_method": method}
    for name, values in point["per_finding"].items():
        out["per_finding"][name] = {**values, **{key: interval(("per_finding", name, key), values[key])
                                                  for key in ("auroc", "f1")}}
    for key in ("auroc", "f1"):
        out[key] = {average: interval((key, average), point[key][average])
                    for average in ("micro", "macro", "weighted")}
    return out
