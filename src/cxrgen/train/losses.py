"""Losses shared by trainers: the masked binary cross-entropy of the explicit label policy (1 positive, 0 negative,
NaN uncertain or missing: masked, never coded as a class), used by the evaluator/downstream classifiers and the
DDL-CXR label head."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None,
               known_count: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy over the known (non-NaN) targets; NaN = unknown label, no gradient. ``pos_weight``
    ([C]) scales the positive term per finding (as ``BCEWithLogitsLoss(pos_weight=...)``). ``known_count``: divide
    the sum by this count instead of the known targets in ``targets`` (a data-parallel rank's share of the global
    batch's mean)."""
    known = ~torch.isnan(targets)
    losses = F.binary_cross_entropy_with_logits(logits, torch.where(known, targets, torch.zeros_like(targets)),
                                                pos_weight=pos_weight, reduction="none")
    count = known.sum() if known_count is None else known_count
    if count == 0:
        return (logits * 0.0).sum()
    return (losses * known).sum() / count
