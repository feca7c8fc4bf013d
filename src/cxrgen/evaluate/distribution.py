"""Distribution metrics of a generated set against real held-out images, per backbone, with their protocol.

For each backbone three comparisons are computed (FID, KID and PRDC — precision, recall, density, coverage with
k-NN balls, Naeem et al. 2020 — each with a percentile bootstrap interval):

* ``generated vs real``: every generated image (at most n) against every reference image (at most n);
* ``generated vs real half B``: generated images subsampled to the size of half A against half B;
* ``real half A vs real half B``: the real-vs-real floor — two patient-disjoint halves of the reference images.

The last two have equal sizes and the same reference, so the floor is what a perfect generator would score with that
many images (FID is biased upwards at small n).

Intervals: percentile bootstrap over both sets, with the FID/KID draws shifted by their mean excess over the
full-sample value (a resample repeats images, which inflates FID and KID, so unshifted percentile intervals can exclude
the estimate). PRDC draws are shifted the same way: copies of one image are not each other's k-NN neighbours
(:func:`cxrgen.evaluate.metrics.knn_radii`, else every duplicated ball would have radius 0), but a resample still
holds only ~63 % distinct images, which biases the shares.

Per pathology (:func:`per_pathology`): generated images of the class-balanced prompts (one finding per prompt) grouped
by their finding, each group against the real reference images positive for it (CheXGenBench 2025 reports every
metric per CheXpert pathology); a group with fewer than ``min_n`` images on either side is reported as "n too small".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrgen.evaluate.metrics import (
    bootstrap_draws,
    describe_bootstrap,
    disjoint_halves,
    frechet_distance,
    kernel_inception_distance,
    percentile_interval,
    prdc,
)
from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS

BIAS_SHIFT = (", draws shifted by their mean excess over the full-sample value (resamples with repeated images "
              "inflate FID/KID)")
COMPARISONS = ("generated vs real", "generated vs real half B", "real half A vs real half B (floor)")
PRDC = ("precision", "recall", "density", "coverage")
TOO_SMALL = "n too small"
PRDC_SHIFT = (", draws shifted by their mean difference from the full-sample value (a resample holds ~63 % distinct "
              "images, which moves the k-NN balls)")


def _score(a: np.ndarray, b: np.ndarray, *, kid_cfg: dict, subsets: int, seed: int) -> tuple[float, float, float, int]:
    if min(len(a), len(b)) < 3:  # no KID subset can leave an image out (metrics.kid_subset_size)
        return frechet_distance(a, b), float("nan"), float("nan"), 0
    kid, kid_std, size = kernel_inception_distance(a, b, subset_size=int(kid_cfg["subset_size"]), subsets=subsets,
                                                   seed=seed, degree=int(kid_cfg["degree"]))
    return frechet_distance(a, b), kid, kid_std, size


def compare(a: np.ndarray, b: np.ndarray, *, kid_cfg: dict, resamples: int, confidence: float, seed: int,
            prdc_cfg: dict | None = None) -> dict:
    """FID and KID of two feature sets with percentile bootstrap intervals (both sets resampled with replacement;
    KID of a resample uses ``kid_cfg["bootstrap_subsets"]`` subsets), and PRDC of ``a`` (generated) against ``b``
    (real) when ``prdc_cfg`` (``k``, ``bootstrap_resamples``) is given."""
    fid, kid, kid_std, size = _score(a, b, kid_cfg=kid_cfg, subsets=int(kid_cfg["subsets"]), seed=seed)
    draws = bootstrap_draws(
        lambda ia, ib: _score(a[ia], b[ib], kid_cfg=kid_cfg, subsets=int(kid_cfg["bootstrap_subsets"]),
                              seed=seed + int(ia[0]))[:2],
        [len(a), len(b)], resamples=resamples, seed=seed)
    draws = np.asarray(draws, dtype=np.float64).reshape(-1, 2)
    # a resample repeats images, which inflates both distances; centre the draws on the full-sample estimate
    fid_ci = percentile_interval(draws[:, 0] - (draws[:, 0].mean() - fid), confidence)
    kid_ci = percentile_interval(draws[:, 1] - (draws[:, 1].mean() - kid), confidence)
    fid_ci = (max(fid_ci[0], 0.0), fid_ci[1]) if fid_ci[0] is not None else fid_ci  # FID >= 0
    method = describe_bootstrap(resamples, confidence) + BIAS_SHIFT
    if not size:
        kid, kid_std, kid_ci = None, None, (None, None)
    out = {"n_a": len(a), "n_b": len(b),
           "fid": {"value": fid, "ci_low": fid_ci[0], "ci_high": fid_ci[1], "ci_method": method},
           "kid": {"value": kid, "std_over_subsets": kid_std, "subset_size": size, "subsets": int(kid_cfg["subsets"]),
                   "ci_low": kid_ci[0], "ci_high": kid_ci[1],
                   "ci_method": f"{method}, {int(kid_cfg['bootstrap_subsets'])} subsets per resample"}}
    if prdc_cfg is not None:
        out["prdc"] = prdc_with_ci(b, a, k=int(prdc_cfg["k"]), resamples=int(prdc_cfg["bootstrap_resamples"]),
                                   confidence=confidence, seed=seed + 7)
    return out


def prdc_with_ci(real: np.ndarray, fake: np.ndarray, *, k: int, resamples: int, confidence: float, seed: int
                 ) -> dict:
    """PRDC of ``fake`` against ``real`` with percentile bootstrap intervals (both sets resampled with replacement;
    copies of an image are not each other's neighbours). Sets with k or fewer images give ``{"skipped": ...}``."""
    if min(len(real), len(fake)) <= k:
        return {"skipped": f"PRDC with k={k} needs more than {k} images per set (got {len(real)}, {len(fake)})"}
    full = prdc(real, fake, k)
    draws = []
    for ir, jf in bootstrap_draws(lambda i, j: (i, j), [len(real), len(fake)], resamples=resamples, seed=seed):
        if min(len(np.unique(ir)), len(np.unique(jf))) > k:  # a resample needs k + 1 distinct images per set
            draws.append(prdc(real[ir], fake[jf], k, real_ids=ir, fake_ids=jf))
    method = f"{describe_bootstrap(resamples, confidence)}, k={k}{PRDC_SHIFT}"
    out = {}
    for name in PRDC:
        values = np.asarray([d[name] for d in draws])
        low, high = percentile_interval(values - (values.mean() - full[name]) if len(values) else values, confidence)
        if low is not None and name != "density":  # shares stay in [0, 1]; density may exceed 1
            low, high = max(low, 0.0), min(high, 1.0)
        out[name] = {"value": full[name], "ci_low": low, "ci_high": high, "ci_method": method}
    return out


def distribution_metrics(generated: np.ndarray, reference: np.ndarray, reference_groups, *, n: int | None,
                         kid_cfg: dict, resamples: int, confidence: float, seed: int,
                         prdc_cfg: dict | None = None) -> dict:
    """The three comparisons for one backbone. ``reference_groups`` (patient ids) keep the halves patient-disjoint."""
    rng = np.random.default_rng(seed)
    if n is not None:
        if len(generated) > n:
            generated = generated[np.sort(rng.choice(len(generated), n, replace=False))]
        if len(reference) > n:
            keep = np.sort(rng.choice(len(reference), n, replace=False))
            reference, reference_groups = reference[keep], np.asarray(reference_groups)[keep]
    half_a, half_b = disjoint_halves(reference_groups, seed)
    sub = np.sort(rng.choice(len(generated), min(len(half_a), len(generated)), replace=False))
    pairs = {COMPARISONS[0]: (generated, reference),
             COMPARISONS[1]: (generated[sub], reference[half_b]),
             COMPARISONS[2]: (reference[half_a], reference[half_b])}
    out = {}
    for k, (name, (a, b)) in enumerate(pairs.items()):
        if len(a) < 3 or len(b) < 3:
            out[name] = {"n_a": len(a), "n_b": len(b), "skipped": "fewer than 3 images in a set"}
            continue
        out[name] = compare(a, b, kid_cfg=kid_cfg, resamples=resamples, confidence=confidence, seed=seed + 101 * k,
                            prdc_cfg=prdc_cfg)
    return out


def finding_groups(generated_rows: pd.DataFrame, reference_rows: pd.DataFrame, *, sets: tuple[str, ...] = (
        "class_balanced",)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per CheXpert finding (CheXpert order): positions of generated rows whose prompt (in prompt sets ``sets``) has
    exactly that one positive finding, and positions of reference rows positive for it. Findings without a generated
    prompt are left out."""
    labels = generated_rows[list(LABEL_COLUMNS)].to_numpy(dtype=np.float64) == 1.0
    single = labels.sum(1) == 1
    in_sets = generated_rows["set"].isin(list(sets)).to_numpy()
    groups = {}
    for j, finding in enumerate(CHEXPERT_LABELS):
        gen = np.flatnonzero(in_sets & single & labels[:, j])
        if len(gen):
            groups[finding] = (gen, np.flatnonzero(reference_rows[LABEL_COLUMNS[j]].to_numpy() == 1.0))
    return groups


def per_pathology(generated: np.ndarray, reference: np.ndarray, groups: dict[str, tuple[np.ndarray, np.ndarray]], *,
                  min_n: int, kid_cfg: dict, resamples: int, confidence: float, seed: int) -> dict:
    """FID and KID (bootstrap intervals) of each finding's generated images against the real images with that
    finding; groups with fewer than ``min_n`` (at least 3) images on either side get ``"skipped": "n too small"``."""
    out = {}
    for k, (finding, (gen, real)) in enumerate(groups.items()):
        entry = {"n_generated": len(gen), "n_real": len(real)}
        if min(len(gen), len(real)) < max(int(min_n), 3):
            out[finding] = {**entry, "skipped": TOO_SMALL}
            continue
        result = compare(generated[gen], reference[real], kid_cfg=kid_cfg, resamples=resamples,
                         confidence=confidence, seed=seed + 31 * k)
        out[finding] = {**entry, "fid": result["fid"], "kid": result["kid"]}
    return out
