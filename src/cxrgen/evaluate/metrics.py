"""Metric implementations of the evaluation harness: pure functions on arrays, no I/O.

* Distribution: Fréchet distance (FID when the features are Inception's) and KID (unbiased polynomial-kernel MMD²
  averaged over random subsets, each subset smaller than both sets) on feature arrays ``[N, D]``; precision, recall,
  density and coverage (PRDC, Naeem et al. 2020, k-NN balls; CheXGenBench 2025 reports them with k=5); a
  real-vs-real floor from two disjoint halves.
* Uncertainty: percentile bootstrap over independently resampled sets (seeded, configurable resamples).
* Pixel fidelity: MSE, PSNR, SSIM and MS-SSIM per image (images in [0, 1], data range 1; SSIM and MS-SSIM by
  torchmetrics); MS-SSIM only when the image is large enough for its scales (:func:`ms_ssim_unavailable_reason`).
* Classification (sklearn): AUROC and F1 per finding with micro / macro / weighted averages (MedCoDi-M Table 3
  layout); findings with fewer than ``min_per_class`` known positives or negatives (default: one) are skipped and
  counted. Every multilabel AUROC/F1 of the project is :func:`multilabel_scores`.

The Fréchet trace term is computed as a nuclear norm: tr sqrt(S1 S2) = ||S1^½ S2^½||_* (the singular values of
S1^½ S2^½ are the square roots of the eigenvalues of S1 S2), which is exact, real and stable where ``sqrtm`` of a
rank-deficient product returns complex noise; with fewer samples than dimensions the same norm is taken of the n×m
cross product of the centred feature matrices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# --------------------------------------------------------------------------------------------------- distribution


def _centred(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need a [N >= 2, D] feature array, got shape {x.shape}")
    mean = x.mean(axis=0)
    return mean, x - mean


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(cov)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (unbiased covariances, ddof=1):
    ||mu_a - mu_b||² + tr(S_a) + tr(S_b) - 2 tr sqrt(S_a S_b)."""
    mean_a, a = _centred(features_a)
    mean_b, b = _centred(features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    na, nb, dim = len(a), len(b), a.shape[1]
    trace_a = float((a * a).sum()) / (na - 1)
    trace_b = float((b * b).sum()) / (nb - 1)
    if min(na, nb) < dim:  # S = X^T X / (n-1): nuclear norm of the n×m cross product
        cross = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt((na - 1) * (nb - 1))
    else:
        root_a = _psd_sqrt(a.T @ a / (na - 1))
        root_b = _psd_sqrt(b.T @ b / (nb - 1))
        cross = np.linalg.svd(root_a @ root_b, compute_uv=False).sum()
    value = float(((mean_a - mean_b) ** 2).sum()) + trace_a + trace_b - 2.0 * float(cross)
    return max(value, 0.0)


def polynomial_mmd2(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                    coef: float = 1.0) -> float:
    """Unbiased MMD² with the kernel k(a, b) = (gamma a·b + coef)^degree (gamma None = 1 / D), for two equal-size
    sets (the KID estimator of Bińkowski et al. 2018, as torchmetrics/torch-fidelity compute it)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m = len(x)
    if len(y) != m or m < 2:
        raise ValueError(f"need two equal-size sets of at least 2 samples, got {len(x)} and {len(y)}")
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    k_xx = (x @ x.T * gamma + coef) ** degree
    k_yy = (y @ y.T * gamma + coef) ** degree
    k_xy = (x @ y.T * gamma + coef) ** degree
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(features_a: np.ndarray, features_b: np.ndarray, *, subset_size: int, subsets: int,
                              seed: int, degree: int = 3) -> tuple[float, float, int]:
    """KID: mean and standard deviation of :func:`polynomial_mmd2` over ``subsets`` random subsets (drawn without
    replacement within a subset) of :func:`kid_subset_size` samples of each set. Returns (mean, std, the subset size
    used)."""
    rng = np.random.default_rng(seed)
    size = kid_subset_size(subset_size, len(features_a), len(features_b))
    values = [polynomial_mmd2(features_a[rng.choice(len(features_a), size, replace=False)],
                              features_b[rng.choice(len(features_b), size, replace=False)], degree=degree)
              for _ in range(int(subsets))]
    return float(np.mean(values)), float(np.std(values)), size


def kid_subset_size(subset_size: int, n_a: int, n_b: int) -> int:
    """The KID subset size: ``subset_size`` clipped to one less than the smaller set, so every subset leaves images
    out (a subset equal to a whole set is the same every time, and the spread over subsets says nothing). Sets of
    fewer than 3 images cannot be scored."""
    size = min(int(subset_size), int(n_a) - 1, int(n_b) - 1)
    if size < 2:
        raise ValueError(f"KID needs sets of at least 3 images (subsets of >= 2 that leave one out), got {n_a} and "
                         f"{n_b}")
    return size


def knn_radii(features: np.ndarray, k: int, ids: np.ndarray | None = None, chunk: int = 1024) -> np.ndarray:
    """Distance of every point to its ``k``-th nearest neighbour in the same set, ignoring points with the same id
    (itself, and its copies in a bootstrap resample: a copy at distance 0 would shrink the ball to nothing)."""
    x = np.asarray(features, dtype=np.float64)
    ids = np.arange(len(x)) if ids is None else np.asarray(ids)
    if len(np.unique(ids)) <= k:
        raise ValueError(f"k-NN radius with k={k} needs more than k distinct points, got {len(np.unique(ids))}")
    radii = np.empty(len(x))
    for start in range(0, len(x), chunk):
        d = _distances(x[start:start + chunk], x)
        d[ids[start:start + chunk, None] == ids[None, :]] = np.inf
        radii[start:start + chunk] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return radii


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(squared, 0.0, None))


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5, *, real_ids: np.ndarray | None = None,
         fake_ids: np.ndarray | None = None, chunk: int = 1024) -> dict[str, float]:
    """Precision, recall, density and coverage of Naeem et al. 2020 (k-NN balls in feature space, Euclidean):

    * precision: share of fake points inside some real point's ball (radius = its k-th real neighbour);
    * recall: share of real points inside some fake point's ball;
    * density: mean number of real balls holding a fake point, divided by k (1 in expectation for matching sets);
    * coverage: share of real points whose ball holds at least one fake point.

    ``real_ids`` / ``fake_ids`` name the source image of each row (bootstrap resamples repeat rows; copies are not
    each other's neighbours, see :func:`knn_radii`)."""
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} vs {fake.shape[1]}")
    real_radii = knn_radii(real, k, real_ids, chunk)
    fake_radii = knn_radii(fake, k, fake_ids, chunk)
    in_real_balls = np.zeros(len(fake))  # per fake point: how many real balls hold it
    real_covered = np.zeros(len(real), dtype=bool)  # per real point: its ball holds a fake point
    real_recalled = np.zeros(len(real), dtype=bool)  # per real point: inside some fake ball
    for start in range(0, len(fake), chunk):
        d = _distances(fake[start:start + chunk], real)  # [fake chunk, real]
        inside = d < real_radii[None, :]
        in_real_balls[start:start + chunk] = inside.sum(1)
        real_covered |= inside.any(0)
        real_recalled |= (d < fake_radii[start:start + chunk, None]).any(0)
    return {"precision": float((in_real_balls > 0).mean()), "recall": float(real_recalled.mean()),
            "density": float(in_real_balls.mean() / k), "coverage": float(real_covered.mean())}


def disjoint_halves(groups: Sequence, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index sets of about equal size such that no group (patient) is in both: the real-vs-real floor
    compares them. Groups are shuffled with ``seed`` and assigned greedily to the smaller half."""
    groups = np.asarray(groups)
    names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    side = np.zeros(len(names), dtype=int)
    sizes = [0, 0]
    for g in order:
        s = 0 if sizes[0] <= sizes[1] else 1
        side[g] = s
        sizes[s] += counts[g]
    member = side[inverse]
    return np.flatnonzero(member == 0), np.flatnonzero(member == 1)


# --------------------------------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval (``low``/``high`` None when not computable)."""

    value: float | None
    low: float | None
    high: float | None
    method: str

    def as_dict(self) -> dict:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high, "ci_method": self.method}


def bootstrap(statistic: Callable[..., float | None], sizes: Sequence[int], *, resamples: int, seed: int
              ) -> np.ndarray:
    """``statistic(*index_arrays)`` on ``resamples`` bootstrap draws; each of the ``len(sizes)`` sets is resampled
    with replacement independently (index arrays into that set). Returns the finite values (a statistic may return
    None/NaN on a degenerate draw, e.g. a resample with one class only)."""
    values = [v for v in bootstrap_draws(statistic, sizes, resamples=resamples, seed=seed)
              if v is not None and np.isfinite(v)]
    return np.asarray(values, dtype=np.float64)


def bootstrap_draws(statistic: Callable[..., object], sizes: Sequence[int], *, resamples: int, seed: int) -> list:
    """The raw results of ``statistic(*index_arrays)`` on ``resamples`` draws (any return type)."""
    rng = np.random.default_rng(seed)
    return [statistic(*[rng.integers(0, n, n) for n in sizes]) for _ in range(int(resamples))]


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    if len(values) == 0:
        return None, None
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_interval(statistic: Callable[..., float | None], sizes: Sequence[int], *, resamples: int,
                       confidence: float, seed: int) -> Interval:
    """Point estimate on the full sets plus the percentile interval of :func:`bootstrap`."""
    value = statistic(*[np.arange(n) for n in sizes])
    if value is None or not np.isfinite(value):
        return Interval(None, None, None, describe_bootstrap(resamples, confidence))
    low, high = percentile_interval(bootstrap(statistic, sizes, resamples=resamples, seed=seed), confidence)
    return Interval(float(value), low, high, describe_bootstrap(resamples, confidence))


def mean_interval(values: np.ndarray, *, resamples: int, confidence: float, seed: int) -> Interval:
    """Mean of per-item values (NaN/inf dropped) with a percentile bootstrap interval over items."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return Interval(None, None, None, describe_bootstrap(resamples, confidence))
    return bootstrap_interval(lambda idx: float(values[idx].mean()), [len(values)], resamples=resamples,
                              confidence=confidence, seed=seed)


def clustered_mean_interval(values: np.ndarray, clusters: Sequence, *, resamples: int, confidence: float,
                            seed: int) -> Interval:
    """Mean of per-item values (NaN/inf dropped) with a percentile bootstrap over clusters: the items of one cluster
    (e.g. the seeds of one prompt, which are not independent) are drawn together. Singleton clusters give
    :func:`mean_interval`'s interval."""
    values = np.asarray(values, dtype=np.float64)
    clusters = np.asarray(clusters)
    keep = np.isfinite(values)
    values, clusters = values[keep], clusters[keep]
    if len(values) == 0:
        return Interval(None, None, None, describe_bootstrap(resamples, confidence))
    _, inverse = np.unique(clusters, return_inverse=True)
    sums, counts = np.bincount(inverse, weights=values), np.bincount(inverse)
    return bootstrap_interval(lambda idx: float(sums[idx].sum() / counts[idx].sum()), [len(sums)],
                              resamples=resamples, confidence=confidence, seed=seed)


def describe_bootstrap(resamples: int, confidence: float) -> str:
    return f"percentile bootstrap, {int(resamples)} resamples, {confidence:.0%}"


# --------------------------------------------------------------------------------------------------- pixel metrics


def _as_batch(images) -> torch.Tensor:
    import torch

    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images.detach()).double()
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected images [B, 1, H, W], [B, H, W] or [H, W], got {tuple(x.shape)}")
    return x


def mse(pred, target) -> np.ndarray:
    """Per-image mean squared error of images in [0, 1]."""
    p, t = _as_batch(pred), _as_batch(target)
    return ((p - t) ** 2).flatten(1).mean(dim=1).cpu().numpy()


def psnr(pred, target, data_range: float = 1.0) -> np.ndarray:
    """Per-image PSNR in dB (inf for identical images)."""
    errors = mse(pred, target)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / errors)


SSIM_KERNEL, SSIM_SIGMA = 11, 1.5  # Wang et al. 2004: 11×11 Gaussian window, σ = 1.5
MS_SSIM_SCALES = 5  # Wang et al. 2003: five scales
# Image pairs per torchmetrics call: its float64 window statistics grow with the batch (the demo's ~1,000 diversity
# pairs at 128 px in one call peaked at 17 GB); per-image results do not depend on the chunking.
PAIRS_PER_CALL = 64


def _per_chunk(metric, p, t) -> np.ndarray:
    if len(p) == 0:
        return np.zeros(0)
    return np.concatenate([metric(p[i : i + PAIRS_PER_CALL], t[i : i + PAIRS_PER_CALL])
                           for i in range(0, len(p), PAIRS_PER_CALL)])


def ssim(pred, target, data_range: float = 1.0) -> np.ndarray:
    """Per-image SSIM, the one SSIM of the project (evaluation and training-time validation alike): torchmetrics'
    SSIM map (Gaussian 11×11 window, σ 1.5, K1 0.01, K2 0.03) averaged over the window positions fully inside the
    image, as Wang et al. 2004 and ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)`` do. torchmetrics' own scalar also averages the positions of the reflect-padded
    border, which moves the score of a 64-px image by up to ~0.06. Computed in float64 on the inputs' device."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    p, t = _as_batch(pred), _as_batch(target)
    if min(p.shape[-2:]) < SSIM_KERNEL:
        raise ValueError(f"SSIM needs images of at least {SSIM_KERNEL} px, got {tuple(p.shape[-2:])}")
    border = SSIM_KERNEL // 2

    def inner_mean(a, b) -> np.ndarray:
        # with gaussian_kernel=True torchmetrics sizes the window from σ (2·int(3.5σ + 0.5) + 1 = 11 for σ = 1.5)
        _, ssim_map = structural_similarity_index_measure(a, b, gaussian_kernel=True, sigma=SSIM_SIGMA,
                                                          kernel_size=SSIM_KERNEL, data_range=data_range,
                                                          reduction="none", return_full_image=True)
        return ssim_map[..., border:-border, border:-border].flatten(1).mean(dim=1).cpu().numpy()

    return _per_chunk(inner_mean, p, t)


def ms_ssim_unavailable_reason(size: int, kernel_size: int = SSIM_KERNEL, scales: int = MS_SSIM_SCALES) -> str | None:
    """None if MS-SSIM with ``scales`` scales fits an image of side ``size``, else the reason (the coarsest scale,
    ``size / 2^(scales-1)``, must exceed the window)."""
    needed = (kernel_size - 1) * 2 ** (scales - 1)
    if size > needed:
        return None
    return (f"MS-SSIM needs images larger than {needed} px for {scales} scales with an {kernel_size}-px window; "
            f"these are {size} px")


def ms_ssim(pred, target, data_range: float = 1.0) -> np.ndarray:
    """Per-image MS-SSIM (Wang et al. 2003: 5 scales, the standard weights; torchmetrics' implementation). Raises
    ValueError when the size is too small."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    p, t = _as_batch(pred), _as_batch(target)
    reason = ms_ssim_unavailable_reason(min(p.shape[-2:]))
    if reason:
        raise ValueError(reason)
    return _per_chunk(lambda a, b: multiscale_structural_similarity_index_measure(
        a, b, gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_KERNEL, data_range=data_range,
        reduction="none").cpu().numpy(), p, t)


# --------------------------------------------------------------------------------------------------- classification


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (the value of sklearn's ``roc_auc_score``; tied scores count one half); None without
    both classes. One definition with :func:`auroc_columns`."""
    y = np.asarray(labels, dtype=np.float64)
    if not ((y == 1).any() and (y == 0).any()):
        return None
    return float(auroc_columns((y == 1)[:, None], np.asarray(scores, dtype=np.float64)[:, None])[0])


def auroc_columns(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUROC (Mann-Whitney, ties one half; sklearn's ``roc_auc_score`` value) of every column of scores ``s`` [n, k] against 0/1 labels ``y`` [n, k]; NaN without both classes."""
    y, s = np.asarray(y, dtype=bool), np.asarray(s, dtype=np.float64)
    from scipy.stats import rankdata

    ranks = rankdata(s, axis=0)
    positives = y.sum(0)
    negatives = len(y) - positives
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = ((ranks * y).sum(0) - positives * (positives + 1) / 2.0) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), auc, np.nan)


def average_precision_columns(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Average precision (sklearn's definition) per column; NaN without a positive (or without a negative).

    AP = Σ_n (R_n − R_{n−1}) P_n over distinct score thresholds = (1/P) Σ over positives of the precision at the end
    of the positive's group of tied scores."""
    y, s = np.asarray(y, dtype=np.float64), np.asarray(s, dtype=np.float64)
    n = len(y)
    order = np.argsort(-s, axis=0, kind="mergesort")
    scores, labels = np.take_along_axis(s, order, 0), np.take_along_axis(y, order, 0)
    last_of_tie = np.ones_like(scores, dtype=bool)
    last_of_tie[:-1] = scores[1:] != scores[:-1]
    precision = np.cumsum(labels, axis=0) / np.arange(1, n + 1)[:, None]
    position = np.where(last_of_tie, np.arange(n)[:, None], n)
    group_end = np.minimum.accumulate(position[::-1], axis=0)[::-1]
    at_group_end = np.take_along_axis(precision, np.minimum(group_end, n - 1), 0)
    positives = labels.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = (labels * at_group_end).sum(0) / positives
    return np.where((positives > 0) & (positives < n), ap, np.nan)


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """The score threshold (predict positive when score >= threshold) that maximises F1 on (labels, scores), the
    highest one on ties: the midpoint between the chosen score and the next lower one. None without both classes."""
    from sklearn.metrics import precision_recall_curve

    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if not ((y == 1).any() and (y == 0).any()):
        return None
    precision, recall, candidates = precision_recall_curve(y == 1, s)  # one per distinct score, increasing
    precision, recall = precision[:-1], recall[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    # F1 values equal as fractions can differ in the last bit here: treat those as ties
    chosen = float(candidates[np.flatnonzero(f1 >= f1.max() - 1e-12)[-1]])
    lower = s[s < chosen]
    below = lower.max() if len(lower) else chosen - 1e-6
    return float((chosen + below) / 2.0)


def choose_thresholds(labels: np.ndarray, scores: np.ndarray, rule: str, fixed: float) -> np.ndarray:
    """Per-finding decision thresholds. ``rule`` "fixed": ``fixed`` everywhere; "val_max_f1": the F1-maximising
    threshold on these (validation) labels and scores, ``fixed`` for findings without both classes."""
    k = labels.shape[1]
    if rule == "fixed":
        return np.full(k, float(fixed))
    if rule != "val_max_f1":
        raise ValueError(f"threshold rule must be 'fixed' or 'val_max_f1', got {rule!r}")
    out = np.full(k, float(fixed))
    for j in range(k):
        known = ~np.isnan(labels[:, j])
        best = best_f1_threshold(labels[known, j], scores[known, j])
        if best is not None:
            out[j] = best
    return out


def multilabel_scores(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray | float | None,
                      findings: Sequence[str], min_per_class: int = 1) -> dict:
    """AUROC and F1 per finding over its known (non-NaN) labels, plus averages over the *evaluable* findings — the
    one multilabel classification metric of the project (fidelity, evaluator validation, downstream, zero-shot).

    The rule for a finding lacking a class: it is evaluable with at least ``min_per_class`` positives and as many
    negatives among its known labels (at least one of each); otherwise it is absent from ``per_finding``, listed
    under ``skipped`` with its counts, and left out of every average (its F1 too).

    ``thresholds``: one decision threshold per finding, or one for all; None scores AUROC only (for scores that are
    not probabilities), every F1 then None.

    * macro: unweighted mean over findings; weighted: mean weighted by each finding's positives (support);
    * micro AUROC: one ROC over all known (image, finding) pairs of the evaluable findings (scores pooled);
    * micro F1: F1 of the pooled predictions over the same pairs (summed TP/FP/FN) at the per-finding thresholds.
    """
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if thresholds is not None:
        thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(findings),))
    per, skipped, columns = {}, [], []
    for j, name in enumerate(findings):
        known = ~np.isnan(labels[:, j])
        y, p = labels[known, j], probs[known, j]
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        if min(n_pos, n_neg) < max(1, min_per_class):
            skipped.append({"finding": name, "n_pos": n_pos, "n_neg": n_neg})
            continue
        per[name] = {"auroc": auroc(y, p), "f1": None, "n_pos": n_pos, "n_neg": n_neg,
                     "threshold": None if thresholds is None else float(thresholds[j])}
        columns.append(j)
    result = {"per_finding": per, "skipped": skipped, "n_images": len(labels), "n_evaluable": len(per),
              "auroc": {"micro": None, "macro": None, "weighted": None},
              "f1": {"micro": None, "macro": None, "weighted": None}}
    if not per:
        return result
    known = ~np.isnan(labels[:, columns])
    result["auroc"]["micro"] = auroc(labels[:, columns][known], probs[:, columns][known])
    if thresholds is not None:
        # an unknown label is neither a positive nor a prediction: a true negative, which F1 does not count
        truth = labels[:, columns] == 1
        predicted = (probs[:, columns] >= thresholds[columns]) & known
        per_column, result["f1"]["micro"] = _multilabel_f1(truth, predicted)
        for entry, value in zip(per.values(), per_column, strict=True):
            entry["f1"] = value
    support = np.array([v["n_pos"] for v in per.values()], dtype=np.float64)
    for key in ("auroc", "f1") if thresholds is not None else ("auroc",):
        values = np.array([v[key] for v in per.values()], dtype=np.float64)
        result[key].update(macro=float(values.mean()), weighted=float(np.average(values, weights=support)))
    return result


def _multilabel_f1(truth: np.ndarray, predicted: np.ndarray) -> tuple[list[float], float]:
    """sklearn F1 of each column of boolean [N, K] label and prediction arrays, and the micro F1 over all cells."""
    from sklearn.metrics import f1_score as sklearn_f1

    if truth.shape[1] == 1:  # sklearn reads a one-column indicator as binary labels
        value = float(sklearn_f1(truth[:, 0], predicted[:, 0]))
        return [value], value
    return sklearn_f1(truth, predicted, average=None).tolist(), float(sklearn_f1(truth, predicted, average="micro"))

