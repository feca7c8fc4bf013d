"""Distribution metrics of a generated set against real held-out images, per backbone, with their protocol.

For each backbone three comparisons are computed (FID and KID, each with a percentile bootstrap interval):

* ``generated vs real``: every generated image (at most n) against every reference image (at most n);
* ``generated vs real half B``: generated images subsampled to the size of half A against half B;
* ``real half A vs real half B``: the real-vs-real floor — two patient-disjoint halves of the reference images.

The last two have equal sizes and the same reference, so the floor is what a perfect generator would score with that
many images (FID is biased upwards at small n).

Intervals: percentile bootstrap over both sets, with the draws shifted by their mean excess over the full-sample value
(a resample repeats images, which inflates FID and KID, so unshifted percentile intervals can exclude the estimate).
"""

from __future__ import annotations

import numpy as np

from cxrgen.evaluate.metrics import (
    bootstrap_draws,
    describe_bootstrap,
    disjoint_halves,
    frechet_distance,
    kernel_inception_distance,
    percentile_interval,
)

BIAS_SHIFT = (", draws shifted by their mean excess over the full-sample value (resamples with repeated images "
              "inflate FID/KID)")
COMPARISONS = ("generated vs real", "generated vs real half B", "real half A vs real half B (floor)")


def _score(a: np.ndarray, b: np.ndarray, *, kid_cfg: dict, subsets: int, seed: int) -> tuple[float, float, float, int]:
    kid, kid_std, size = kernel_inception_distance(a, b, subset_size=int(kid_cfg["subset_size"]), subsets=subsets,
                                                   seed=seed, degree=int(kid_cfg["degree"]))
    return frechet_distance(a, b), kid, kid_std, size


def compare(a: np.ndarray, b: np.ndarray, *, kid_cfg: dict, resamples: int, confidence: float, seed: int) -> dict:
    """FID and KID of two feature sets with percentile bootstrap intervals (both sets resampled with replacement;
    KID of a resample uses ``kid_cfg["bootstrap_subsets"]`` subsets)."""
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
    return {"n_a": len(a), "n_b": len(b),
            "fid": {"value": fid, "ci_low": fid_ci[0], "ci_high": fid_ci[1], "ci_method": method},
            "kid": {"value": kid, "std_over_subsets": kid_std, "subset_size": size, "subsets": int(kid_cfg["subsets"]),
                    "ci_low": kid_ci[0], "ci_high": kid_ci[1],
                    "ci_method": f"{method}, {int(kid_cfg['bootstrap_subsets'])} subsets per resample"}}


def distribution_metrics(generated: np.ndarray, reference: np.ndarray, reference_groups, *, n: int | None,
                         kid_cfg: dict, resamples: int, confidence: float, seed: int) -> dict:
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
        if len(a) < 2 or len(b) < 2:
            out[name] = {"n_a": len(a), "n_b": len(b), "skipped": "fewer than 2 images in a set"}
            continue
        out[name] = compare(a, b, kid_cfg=kid_cfg, resamples=resamples, confidence=confidence, seed=seed + 101 * k)
    return out
