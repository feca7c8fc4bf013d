"""MedCoDi-M / XGeM image evaluation (arXiv 2501.04614 §3.5, Tables 2-3) on the project's harness.

* Table 2: FID (and KID) of each direction's generated images against the real test images of the same view, per
  feature backbone of :mod:`cxrgen.evaluate.backbones` (the in-domain evaluator always; XRV / Inception-V3 when their
  local weights are configured), with the harness' bias-shifted percentile bootstrap
  (:func:`cxrgen.evaluate.distribution.compare`).
* Table 3 (frontal view): the classifier's AUROC / F1 of every generated image against the labels of the study whose
  inputs prompted it, on the paper's ten findings, with micro / macro / weighted averages
  (:func:`cxrgen.evaluate.fidelity.scores_with_intervals`), and the same numbers for the real test frontal images
  ("Real Data" row). The paper classifies with XRV-DenseNet; the judge here is the in-domain evaluator (rule
  train_evaluator, the same 14 CheXpert findings). F1 thresholds: chosen on the real val images of the study table
  (``evaluation.fidelity.threshold_rule``), then applied to generated and real test images alike.
"""

from __future__ import annotations

import numpy as np
import torch

from cxrgen.labels import CHEXPERT_LABELS

# paper §3.5.2: Atl., Cmgl., Cnsl., Edm., Enl., Les., Opc., Eff., Pnm., Ptx.
TABLE3_FINDINGS: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                                    "Enlarged Cardiomediastinum", "Lung Lesion", "Lung Opacity", "Pleural Effusion",
                                    "Pneumonia", "Pneumothorax")
AVERAGES = ("micro", "macro", "weighted")


def as_float_images(images: np.ndarray) -> torch.Tensor:
    """uint8 [n, H, W] -> float [n, 1, H, W] in [0, 1] (the harness' image convention)."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0)[:, None]


def finding_columns(findings: tuple[str, ...] = TABLE3_FINDINGS) -> list[int]:
    return [CHEXPERT_LABELS.index(name) for name in findings]


def distribution_scores(generated: np.ndarray, reference: np.ndarray, *, kid_cfg: dict, resamples: int,
                        confidence: float, seed: int) -> dict | None:
    """FID / KID of two feature sets in the contract's layout ``{"fid": {"value", "ci": [lo, hi]}, "kid": ...}``
    plus the harness' full result under ``"detail"``; None when a set has fewer than 2 images."""
    from cxrgen.evaluate.distribution import compare

    if len(generated) < 2 or len(reference) < 2:
        return None
    result = compare(generated, reference, kid_cfg=kid_cfg, resamples=resamples, confidence=confidence, seed=seed)
    return {metric: {"value": result[metric]["value"], "ci": [result[metric]["ci_low"], result[metric]["ci_high"]]}
            for metric in ("fid", "kid")} | {"detail": result}


def classification_scores(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, *, resamples: int,
                          confidence: float, seed: int, min_per_class: int) -> dict:
    """Table 3 numbers of one image set: ``{"auroc": {finding: v, micro, macro, weighted}, "f1": {...}}`` (None for
    a finding without ``min_per_class`` positives and negatives) and the harness' result with its intervals under
    ``"detail"``. ``labels``/``probs``/``thresholds`` are in the 14-finding order; only :data:`TABLE3_FINDINGS`
    count."""
    from cxrgen.evaluate.fidelity import scores_with_intervals

    columns = finding_columns()
    detail = scores_with_intervals(np.asarray(labels, np.float64)[:, columns],
                                   np.asarray(probs, np.float64)[:, columns], np.asarray(thresholds)[columns],
                                   TABLE3_FINDINGS, resamples=resamples, confidence=confidence, seed=seed,
                                   min_per_class=min_per_class)
    out = {}
    for metric in ("auroc", "f1"):
        out[metric] = {name: (detail["per_finding"][name][metric]["value"] if name in detail["per_finding"] else None)
                       for name in TABLE3_FINDINGS}
        out[metric].update({average: detail[metric][average]["value"] for average in AVERAGES})
    return {**out, "detail": detail}
