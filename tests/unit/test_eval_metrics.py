"""Metric implementations of the evaluation harness against known values and reference libraries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxrgen.evaluate import metrics as M
from cxrgen.evaluate.distribution import COMPARISONS, compare, distribution_metrics, finding_groups, per_pathology

KID_CFG = {"subset_size": 50, "subsets": 20, "degree": 3, "bootstrap_subsets": 2}


def features(n, dim, seed, shift=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(shift, scale, size=(n, dim))


# ---------------------------------------------------------------------------------------------- FID / KID


@pytest.mark.parametrize("n, dim", [(40, 64), (300, 16)])  # fewer samples than dimensions, and more
def test_fid_of_identical_sets_is_zero(n, dim):
    a = features(n, dim, 0)
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert M.frechet_distance(a, a.copy()[::-1]) == pytest.approx(0.0, abs=1e-6)  # order does not matter


@pytest.mark.parametrize("na, nb, dim", [(40, 55, 64), (300, 250, 16), (30, 30, 30)])
def test_fid_matches_torchmetrics_on_the_same_features(na, nb, dim):
    from torchmetrics.image.fid import _compute_fid

    a, b = features(na, dim, 1), features(nb, dim, 2, shift=0.3, scale=1.3)
    ta, tb = torch.tensor(a), torch.tensor(b)
    expected = float(_compute_fid(ta.mean(0), torch.cov(ta.T), tb.mean(0), torch.cov(tb.T)))
    assert M.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_fid_grows_with_the_shift_and_is_symmetric():
    a = features(200, 8, 3)
    near, far = features(200, 8, 4, shift=0.2), features(200, 8, 4, shift=1.0)
    assert M.frechet_distance(a, near) < M.frechet_distance(a, far)
    assert M.frechet_distance(a, far) == pytest.approx(M.frechet_distance(far, a), rel=1e-9)
    # two Gaussians with identity covariance: FID -> ||mu_a - mu_b||^2 = 8 * 1.0^2
    big_a, big_b = features(20000, 8, 5), features(20000, 8, 6, shift=1.0)
    assert M.frechet_distance(big_a, big_b) == pytest.approx(8.0, rel=0.03)


def test_polynomial_mmd_matches_torchmetrics():
    from torchmetrics.image.kid import poly_mmd

    a, b = features(60, 32, 7), features(60, 32, 8, shift=0.5)
    expected = float(poly_mmd(torch.tensor(a), torch.tensor(b), degree=3, gamma=None, coef=1.0))
    assert M.polynomial_mmd2(a, b) == pytest.approx(expected, rel=1e-9)
    # KID of one subset is the plain MMD of the subsets drawn
    rng = np.random.default_rng(0)
    kid, std, size = M.kernel_inception_distance(a, b, subset_size=30, subsets=1, seed=0)
    subset_mmd = M.polynomial_mmd2(a[rng.choice(60, 30, replace=False)], b[rng.choice(60, 30, replace=False)])
    assert size == 30 and std == 0.0 and kid == pytest.approx(subset_mmd, rel=1e-12)


@pytest.mark.parametrize(("subset_size", "n_a", "n_b", "expected"),
                         [(1000, 60, 80, 59), (1000, 80, 60, 59), (50, 60, 80, 50), (60, 60, 60, 59), (2, 3, 3, 2)])
def test_kid_subsets_are_smaller_than_both_sets(subset_size, n_a, n_b, expected):
    assert M.kid_subset_size(subset_size, n_a, n_b) == expected
    a, b = features(n_a, 4, 1), features(n_b, 4, 2)
    _, std, size = M.kernel_inception_distance(a, b, subset_size=subset_size, subsets=5, seed=0)
    assert size == expected and size < min(n_a, n_b)
    assert std > 0  # subsets differ, so their spread is informative


def test_kid_refuses_sets_too_small_to_leave_an_image_out():
    with pytest.raises(ValueError, match="at least 3"):
        M.kid_subset_size(100, 2, 50)


# ---------------------------------------------------------------------------------------------- PRDC


def test_prdc_of_identical_sets_is_perfect():
    x = features(40, 6, 3)
    out = M.prdc(x, x.copy(), k=5)
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["coverage"] == 1.0
    assert out["density"] >= 1.0 / 5  # each point lies in at least its own ball


def test_prdc_of_disjoint_far_sets_is_zero():
    real = features(40, 6, 3)
    fake = features(40, 6, 4, shift=100.0)
    assert M.prdc(real, fake, k=5) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_hand_built_points():
    """Real points at 0, 1, 2, 3 on a line (k=1: every real ball has radius 1; "inside" is strict); fakes at 0.5 and
    0.6 (inside the balls of 0 and 1; their own balls have radius 0.1), 4.0 (exactly on the ball of 3, so outside; its
    ball, radius 3.4, holds 1, 2 and 3) and a far pair at 100, 100.2."""
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[0.5], [0.6], [4.0], [100.0], [100.2]])
    out = M.prdc(real, fake, k=1)
    assert out["precision"] == pytest.approx(2 / 5)
    assert out["density"] == pytest.approx(4 / 5)  # 0.5 and 0.6 are in two real balls each
    assert out["coverage"] == pytest.approx(2 / 4)  # the balls of 0 and 1 (not 3: 4.0 is on its edge)
    assert out["recall"] == pytest.approx(3 / 4)  # 1, 2 and 3 lie in the ball of 4.0
    assert M.prdc(real, fake, k=1, chunk=1) == out  # chunking does not change it


def test_prdc_copies_in_a_resample_are_not_neighbours():
    x = np.array([[0.0], [1.0], [3.0], [6.0]])
    doubled = np.repeat(x, 2, axis=0)
    assert np.array_equal(M.knn_radii(doubled, 1, ids=np.repeat(np.arange(4), 2)), np.repeat([1.0, 1.0, 2.0, 3.0], 2))
    assert np.array_equal(M.knn_radii(doubled, 1), np.zeros(8))  # without ids the copy is the neighbour
    with pytest.raises(ValueError, match="distinct"):
        M.knn_radii(doubled, 4, ids=np.repeat(np.arange(4), 2))


def test_kid_is_unbiased_near_zero_for_one_distribution():
    a, b = features(400, 16, 9), features(400, 16, 10)
    kid, std, _ = M.kernel_inception_distance(a, b, subset_size=100, subsets=50, seed=0)
    shifted, _, _ = M.kernel_inception_distance(a, features(400, 16, 11, shift=0.5), subset_size=100, subsets=50,
                                                seed=0)
    assert abs(kid) < 3 * std / np.sqrt(50) + 1e-3
    assert shifted > 20 * abs(kid)


def test_disjoint_halves_keep_patients_apart():
    groups = np.repeat([f"p{i}" for i in range(30)], np.arange(30) % 4 + 1)
    a, b = M.disjoint_halves(groups, seed=0)
    assert set(groups[a]).isdisjoint(groups[b])
    assert len(a) + len(b) == len(groups) and abs(len(a) - len(b)) <= 4
    again = M.disjoint_halves(groups, seed=0)
    assert np.array_equal(a, again[0])


def test_distribution_metrics_floor_and_protocol():
    reference = features(120, 8, 12)
    groups = np.repeat(np.arange(60), 2)
    good, bad = features(120, 8, 13), features(120, 8, 14, shift=1.5)
    out_good = distribution_metrics(good, reference, groups, n=None, kid_cfg=KID_CFG, resamples=30, confidence=0.9,
                                    seed=0)
    out_bad = distribution_metrics(bad, reference, groups, n=100, kid_cfg=KID_CFG, resamples=30, confidence=0.9,
                                   seed=0)
    assert set(out_good) == set(COMPARISONS)
    floor = out_good[COMPARISONS[2]]
    assert floor["n_a"] + floor["n_b"] == 120
    assert out_good[COMPARISONS[1]]["n_a"] == floor["n_a"] and out_good[COMPARISONS[1]]["n_b"] == floor["n_b"]
    assert out_bad[COMPARISONS[0]]["n_a"] == 100 and out_bad[COMPARISONS[0]]["n_b"] == 100
    assert out_bad[COMPARISONS[1]]["fid"]["value"] > 5 * out_good[COMPARISONS[1]]["fid"]["value"]
    for entry in (out_good[COMPARISONS[1]]["fid"], out_bad[COMPARISONS[0]]["kid"]):
        assert entry["ci_low"] <= entry["ci_high"] and "bootstrap" in entry["ci_method"]
    assert out_bad[COMPARISONS[1]]["fid"]["ci_low"] > out_good[COMPARISONS[1]]["fid"]["ci_high"]


def test_distribution_metrics_prdc_with_intervals():
    reference = features(120, 8, 12)
    groups = np.repeat(np.arange(60), 2)
    prdc_cfg = {"k": 5, "bootstrap_resamples": 20}
    good = distribution_metrics(features(120, 8, 13), reference, groups, n=None, kid_cfg=KID_CFG, resamples=5,
                                confidence=0.9, seed=0, prdc_cfg=prdc_cfg)
    bad = distribution_metrics(features(120, 8, 14, shift=1.5), reference, groups, n=None, kid_cfg=KID_CFG,
                               resamples=5, confidence=0.9, seed=0, prdc_cfg=prdc_cfg)
    for comparison in COMPARISONS:
        for name in ("precision", "recall", "density", "coverage"):
            entry = good[comparison]["prdc"][name]
            assert entry["ci_low"] <= entry["value"] <= entry["ci_high"] and "k=5" in entry["ci_method"]
    assert good[COMPARISONS[0]]["prdc"]["precision"]["value"] > 0.5
    assert bad[COMPARISONS[0]]["prdc"]["coverage"]["ci_high"] < good[COMPARISONS[0]]["prdc"]["coverage"]["ci_low"]


def test_compare_with_two_images_scores_fid_but_not_kid():
    out = compare(features(2, 4, 1), features(5, 4, 2), kid_cfg=KID_CFG, resamples=5, confidence=0.9, seed=0)
    assert out["fid"]["value"] >= 0 and out["kid"]["value"] is None and out["kid"]["subset_size"] == 0


def test_per_pathology_groups_single_finding_prompts_and_flags_small_groups():
    from cxrgen.labels import LABEL_COLUMNS

    def rows(labels: list[dict], sets: list[str] | None = None) -> pd.DataFrame:
        frame = pd.DataFrame([{c: np.nan for c in LABEL_COLUMNS} | d for d in labels])
        frame["set"] = sets or ["class_balanced"] * len(labels)
        return frame

    cardio, effusion = {"lbl_cardiomegaly": 1.0}, {"lbl_pleural_effusion": 1.0}
    both = {"lbl_cardiomegaly": 1.0, "lbl_pleural_effusion": 1.0}
    generated = rows([cardio] * 8 + [effusion] * 2 + [both] * 3 + [cardio] * 4,
                     ["class_balanced"] * 13 + ["test_reports"] * 4)
    reference = rows([cardio] * 6 + [both] * 4 + [{"lbl_cardiomegaly": 0.0}] * 5)
    groups = finding_groups(generated, reference)
    assert list(groups) == ["Cardiomegaly", "Pleural Effusion"]  # CheXpert order, only findings with prompts
    assert np.array_equal(groups["Cardiomegaly"][0], np.arange(8))  # one-finding class-balanced prompts only
    assert np.array_equal(groups["Cardiomegaly"][1], np.arange(10))  # real images positive for it
    assert np.array_equal(groups["Pleural Effusion"][0], [8, 9])
    gen, ref = features(17, 4, 1), features(15, 4, 2)
    out = per_pathology(gen, ref, groups, min_n=5, kid_cfg=KID_CFG, resamples=5, confidence=0.9, seed=0)
    assert out["Cardiomegaly"]["n_generated"] == 8 and out["Cardiomegaly"]["n_real"] == 10
    assert out["Cardiomegaly"]["fid"]["value"] > 0 and out["Cardiomegaly"]["kid"]["subset_size"] == 7
    assert out["Pleural Effusion"] == {"n_generated": 2, "n_real": 4, "skipped": "n too small"}


# ---------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_interval_coverage_of_a_mean():
    """95% percentile intervals of a sample mean cover the true mean in about 95% of repeated experiments."""
    rng = np.random.default_rng(0)
    covered = 0
    trials = 200
    for t in range(trials):
        sample = rng.normal(2.0, 1.0, 60)
        ci = M.mean_interval(sample, resamples=300, confidence=0.95, seed=t)
        covered += ci.low <= 2.0 <= ci.high
    assert 0.88 <= covered / trials <= 0.99


def test_bootstrap_is_seeded_and_reports_its_method():
    values = np.arange(20.0)
    a = M.mean_interval(values, resamples=100, confidence=0.9, seed=3)
    b = M.mean_interval(values, resamples=100, confidence=0.9, seed=3)
    assert a == b and a.value == pytest.approx(9.5) and a.low < 9.5 < a.high
    assert a.method == "percentile bootstrap, 100 resamples, 90%"
    assert M.mean_interval(np.array([np.nan]), resamples=10, confidence=0.9, seed=0).value is None


# ---------------------------------------------------------------------------------------------- pixels


def test_psnr_of_known_pairs_matches_skimage(synthetic_radiograph):
    from skimage.metrics import peak_signal_noise_ratio

    clean = synthetic_radiograph(64, 64, seed=1)
    noisy = np.clip(clean + np.random.default_rng(2).normal(0, 0.05, clean.shape), 0, 1)
    assert M.mse(noisy, clean)[0] == pytest.approx(np.mean((noisy - clean) ** 2))
    assert M.psnr(noisy, clean)[0] == pytest.approx(peak_signal_noise_ratio(clean, noisy, data_range=1.0), rel=1e-9)
    assert np.isinf(M.psnr(clean, clean)[0])
    # a constant offset of 0.1 has MSE 0.01 -> PSNR exactly 20 dB
    assert M.psnr(np.full((8, 8), 0.5), np.full((8, 8), 0.4))[0] == pytest.approx(20.0)


def _distorted_pairs(synthetic_radiograph):
    """Real-looking (radiograph, distorted copy) pairs at several sizes: noise, blur, a 2-px shift."""
    for size in (32, 64, 128):
        clean = synthetic_radiograph(size, size, seed=size)
        blurred = torch.nn.functional.avg_pool2d(torch.tensor(clean)[None, None], 5, 1, 2)[0, 0].numpy()
        for other in (np.clip(clean + np.random.default_rng(size).normal(0, 0.02, clean.shape), 0, 1),
                      np.clip(clean + np.random.default_rng(size).normal(0, 0.1, clean.shape), 0, 1),
                      blurred, np.roll(clean, 2, axis=1)):
            yield clean, other


def test_ssim_matches_the_previous_implementation_on_radiographs(synthetic_radiograph):
    """The hand-written SSIM this replaces equalled skimage's Gaussian SSIM to float precision (measured: at most
    1.1e-16 apart on these pairs), so skimage stands in for it: the torchmetrics-based SSIM agrees within 1e-9."""
    from skimage.metrics import structural_similarity

    for clean, other in _distorted_pairs(synthetic_radiograph):
        expected = structural_similarity(clean, other, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)
        assert M.ssim(other, clean)[0] == pytest.approx(expected, abs=1e-9)


def test_ssim_is_torchmetrics_gaussian_11x11_over_the_inner_window_positions(synthetic_radiograph):
    from torchmetrics.functional.image import structural_similarity_index_measure
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    clean = torch.tensor(synthetic_radiograph(64, 64, seed=4))[None, None]
    noisy = (clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0), dtype=clean.dtype)
             ).clamp(0, 1)
    pair = torch.cat([noisy, clean]), torch.cat([clean, clean])
    _, ssim_map = structural_similarity_index_measure(*pair, gaussian_kernel=True, sigma=1.5, kernel_size=11,
                                                      data_range=1.0, reduction="none", return_full_image=True)
    inner = ssim_map[..., 5:-5, 5:-5].flatten(1).mean(1).numpy()  # window positions fully inside the image
    assert np.array_equal(M.ssim(*pair), inner)
    module = StructuralSimilarityIndexMeasure(gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0,
                                              reduction="none", return_full_image=True)
    assert torch.equal(module(*pair)[1], ssim_map)  # the module and the functional form compute the same map


def test_ssim_identity_symmetry_and_a_known_value(synthetic_radiograph):
    clean = synthetic_radiograph(48, 40, seed=5)
    noisy = np.clip(clean + np.random.default_rng(6).normal(0, 0.05, clean.shape), 0, 1)
    assert M.ssim(clean, clean)[0] == pytest.approx(1.0, abs=1e-12)
    assert M.ssim(noisy, clean)[0] == pytest.approx(M.ssim(clean, noisy)[0], abs=1e-12)
    assert M.ssim(noisy, clean)[0] < 1.0
    # two flat images of means a and b: no variance, so SSIM = (2ab + C1) / (a² + b² + C1) with C1 = (0.01 L)²
    a, b, c1 = 0.5, 0.25, 0.01**2
    assert M.ssim(np.full((16, 16), a), np.full((16, 16), b))[0] == pytest.approx((2 * a * b + c1) / (a**2 + b**2 + c1))
    batch = M.ssim(np.stack([noisy, clean]), np.stack([clean, clean]))  # one value per image
    assert batch.shape == (2,) and batch[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 11 px"):
        M.ssim(np.zeros((8, 8)), np.zeros((8, 8)))


def test_ms_ssim_only_where_five_scales_fit(synthetic_radiograph):
    assert "160" in M.ms_ssim_unavailable_reason(128)
    assert M.ms_ssim_unavailable_reason(192) is None
    small = synthetic_radiograph(64, 64)
    with pytest.raises(ValueError, match="MS-SSIM needs"):
        M.ms_ssim(small, small)
    big = synthetic_radiograph(192, 192, seed=3)
    blurred = torch.nn.functional.avg_pool2d(torch.tensor(big)[None, None], 3, 1, 1)[0, 0].numpy()
    assert M.ms_ssim(big, big)[0] == pytest.approx(1.0, abs=1e-6)
    assert 0.5 < M.ms_ssim(blurred, big)[0] < 1.0


# ---------------------------------------------------------------------------------------------- classification


def test_auroc_hand_made_cases_and_sklearn():
    from sklearn.metrics import roc_auc_score

    assert M.auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert M.auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert M.auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert M.auroc([0, 0, 1], [0.1, 0.4, 0.3]) == 0.5  # one of two negative/positive pairs ordered
    assert M.auroc([1, 1], [0.2, 0.3]) is None
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 200), np.round(rng.random(200), 1)  # with ties
    assert M.auroc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_threshold_rules():
    threshold = M.best_f1_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.7])
    assert 0.3 < threshold <= 0.6
    labels = np.array([[0, 1], [0, np.nan], [1, 1], [1, 1]], dtype=float)
    scores = np.array([[0.1, 0.9], [0.3, 0.5], [0.6, 0.2], [0.7, 0.8]])
    fixed = M.choose_thresholds(labels, scores, "fixed", 0.5)
    assert fixed.tolist() == [0.5, 0.5]
    chosen = M.choose_thresholds(labels, scores, "val_max_f1", 0.5)
    assert 0.3 < chosen[0] <= 0.6 and chosen[1] == 0.5  # second finding has no negative: fallback
    with pytest.raises(ValueError, match="val_max_f1"):
        M.choose_thresholds(labels, scores, "youden", 0.5)


def test_best_f1_threshold_takes_the_highest_of_tied_thresholds():
    # at >= 0.9: tp 1, fn 1 -> F1 2/3; at >= 0.6: tp 2, fp 2 -> F1 4/6, the same; every other threshold is lower
    labels, scores = [1, 0, 0, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.1]
    assert M.best_f1_threshold(labels, scores) == pytest.approx(0.85)  # midway between 0.9 and the next score
    assert M.best_f1_threshold([0, 1, 1], [0.2, 0.4, 0.4]) == pytest.approx(0.3)  # ties in score are not split
    assert M.best_f1_threshold([1, 0, 1], [0.2, 0.1, 0.4]) == pytest.approx(0.15)


def test_f1_at_a_threshold_counts_scores_equal_to_it_as_positive():
    labels = np.array([[1, 1], [0, 1], [1, 0], [0, 0]], dtype=float)
    probs = np.array([[0.5, 0.9], [0.5, 0.3], [0.2, 0.3], [0.1, 0.1]])
    one = M.multilabel_scores(labels, probs, 0.5, ["A", "B"])
    assert one["per_finding"]["A"]["f1"] == pytest.approx(0.5)  # predicted rows 0, 1: tp 1, fp 1, fn 1
    assert one["per_finding"]["B"]["f1"] == pytest.approx(2 / 3)  # predicted row 0: tp 1, fn 1
    assert one["per_finding"]["A"]["threshold"] == 0.5
    per_finding = M.multilabel_scores(labels, probs, np.array([0.5, 0.3]), ["A", "B"])
    assert per_finding["per_finding"]["B"]["f1"] == pytest.approx(0.8)  # rows 0-2 predicted: tp 2, fp 1
    assert per_finding["f1"]["micro"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))  # tp 3, fp 2, fn 1
    alone = M.multilabel_scores(labels[:, :1], probs[:, :1], 0.5, ["A"])  # one finding: F1 of finding A still
    assert alone["per_finding"]["A"]["f1"] == alone["f1"]["micro"] == alone["f1"]["macro"] == pytest.approx(0.5)
    ranking_only = M.multilabel_scores(labels, probs, None, ["A", "B"])
    assert ranking_only["per_finding"]["A"]["f1"] is None and ranking_only["f1"]["macro"] is None
    assert ranking_only["auroc"] == one["auroc"]


def test_multilabel_scores_agree_with_sklearn_per_finding_and_pooled():
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(3)
    labels = (rng.random((120, 5)) < [0.1, 0.3, 0.5, 0.2, 0.4]).astype(float)
    labels[rng.random(labels.shape) < 0.25] = np.nan
    probs = np.clip(np.nan_to_num(labels, nan=0.5) * 0.3 + rng.random(labels.shape) * 0.7, 0, 1)
    thresholds = np.array([0.3, 0.4, 0.5, 0.6, 0.7])
    out = M.multilabel_scores(labels, probs, thresholds, list("ABCDE"))
    assert out["n_evaluable"] == 5
    pooled_y, pooled_p, pooled_hit = [], [], []
    for j, name in enumerate("ABCDE"):
        known = ~np.isnan(labels[:, j])
        y, p = labels[known, j], probs[known, j]
        assert out["per_finding"][name]["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert out["per_finding"][name]["f1"] == pytest.approx(f1_score(y, p >= thresholds[j]), abs=1e-12)
        pooled_y.append(y)
        pooled_p.append(p)
        pooled_hit.append(p >= thresholds[j])
    y, p, hit = np.concatenate(pooled_y), np.concatenate(pooled_p), np.concatenate(pooled_hit)
    assert out["auroc"]["micro"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert out["f1"]["micro"] == pytest.approx(f1_score(y, hit), abs=1e-12)
    aurocs = [out["per_finding"][n]["auroc"] for n in "ABCDE"]
    assert out["auroc"]["macro"] == pytest.approx(np.mean(aurocs))
    support = [out["per_finding"][n]["n_pos"] for n in "ABCDE"]
    assert out["auroc"]["weighted"] == pytest.approx(np.average(aurocs, weights=support))


def test_multilabel_scores_averages_and_skips():
    nan = np.nan
    labels = np.array([[1, 0, 1], [0, 0, nan], [1, 1, 1], [0, 1, 1]], dtype=float)
    probs = np.array([[0.9, 0.2, 0.7], [0.2, 0.6, 0.1], [0.6, 0.7, 0.9], [0.4, 0.4, 0.8]])
    out = M.multilabel_scores(labels, probs, np.full(3, 0.5), ["A", "B", "C"])
    assert out["n_evaluable"] == 2 and out["skipped"] == [{"finding": "C", "n_pos": 3, "n_neg": 0}]
    a, b = out["per_finding"]["A"], out["per_finding"]["B"]
    assert a["auroc"] == 1.0 and a["f1"] == 1.0
    assert b["auroc"] == 0.75  # positives 0.7, 0.4 vs negatives 0.2, 0.6: 3 of 4 pairs ordered
    assert b["f1"] == pytest.approx(0.5)  # predicted {row1, row2}, true {row2, row3}: tp 1, fp 1, fn 1
    assert out["auroc"]["macro"] == pytest.approx(0.875)
    assert out["auroc"]["weighted"] == pytest.approx(0.875)  # 2 positives each
    assert out["f1"]["micro"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # tp 3, fp 1, fn 1 over A and B
    pooled = M.auroc(np.r_[labels[:, 0], labels[:, 1]], np.r_[probs[:, 0], probs[:, 1]])
    assert out["auroc"]["micro"] == pytest.approx(pooled)


def test_a_finding_lacking_a_class_is_skipped_from_every_average_its_f1_too():
    # A: both classes; B: positives only (F1 would be 2/3); C: negatives only (two false positives at 0.5)
    labels = np.array([[1, 1, 0], [0, 1, 0], [1, 1, 0], [0, np.nan, 0]], dtype=float)
    probs = np.array([[0.9, 0.9, 0.7], [0.2, 0.1, 0.8], [0.8, 0.6, 0.1], [0.3, 0.5, 0.2]])
    out = M.multilabel_scores(labels, probs, 0.5, ["A", "B", "C"])
    assert set(out["per_finding"]) == {"A"} and out["n_evaluable"] == 1
    assert out["skipped"] == [{"finding": "B", "n_pos": 3, "n_neg": 0}, {"finding": "C", "n_pos": 0, "n_neg": 4}]
    for key in ("auroc", "f1"):  # every average is finding A's value alone
        assert out[key]["macro"] == out[key]["weighted"] == out[key]["micro"] == out["per_finding"]["A"][key] == 1.0
    nothing = M.multilabel_scores(labels[:, 1:], probs[:, 1:], 0.5, ["B", "C"])
    assert nothing["per_finding"] == {} and nothing["auroc"]["macro"] is None and nothing["f1"]["micro"] is None


def test_evaluator_validation_case_by_hand():
    labels = np.array([[1, 0], [0, 1], [1, np.nan], [0, 1]], dtype=np.float64)
    probs = np.array([[0.9, 0.2], [0.2, 0.1], [0.4, 0.5], [0.6, 0.8]])
    found = M.multilabel_scores(labels, probs, 0.5, ["A", "B"])
    a, b = found["per_finding"]["A"], found["per_finding"]["B"]
    assert a["auroc"] == pytest.approx(0.75)  # pairs (0.9 > 0.2, 0.9 > 0.6, 0.4 > 0.2, 0.4 < 0.6)
    assert b["auroc"] == pytest.approx(0.5) and b["n_pos"] == 2 and b["n_neg"] == 1
    assert a["f1"] == pytest.approx(0.5)  # TP 1, FP 1, FN 1
    assert b["f1"] == pytest.approx(2 / 3)  # TP 1 (0.8), FN 1 (0.1)
    assert found["auroc"]["macro"] == pytest.approx(0.625)
    assert found["auroc"]["weighted"] == pytest.approx(0.625)  # 2 positives each


def test_weighted_average_uses_positive_support():
    # finding A: 1 positive, perfectly ranked; finding B: 3 positives, perfectly reversed
    labels = np.array([[1, 1], [0, 1], [0, 1], [0, 0]], dtype=float)
    probs = np.array([[0.9, 0.1], [0.1, 0.2], [0.2, 0.3], [0.3, 0.9]])
    out = M.multilabel_scores(labels, probs, np.full(2, 0.5), ["A", "B"])
    assert out["per_finding"]["A"]["auroc"] == 1.0 and out["per_finding"]["B"]["auroc"] == 0.0
    assert out["auroc"]["macro"] == pytest.approx(0.5)
    assert out["auroc"]["weighted"] == pytest.approx(0.25)  # (1 * 1.0 + 3 * 0.0) / 4


def test_nearest_neighbours_streamed_in_chunks_and_skipping_self():
    from cxrgen.evaluate.memorisation import nearest, pixel_vectors, unit_rows

    rng = np.random.default_rng(0)
    database = rng.normal(size=(50, 6))
    queries = np.r_[database[[3, 17]] * 2.0, rng.normal(size=(3, 6))]  # two scaled copies: cosine distance 0
    distance, index = nearest(queries, database, chunk=7)
    full = 1 - unit_rows(queries) @ unit_rows(database).T
    assert np.allclose(distance, full.min(axis=1), atol=1e-6) and np.array_equal(index, full.argmin(axis=1))
    assert index[:2].tolist() == [3, 17] and np.allclose(distance[:2], 0, atol=1e-6)
    ids = np.array([f"i{k}" for k in range(50)])
    own, own_index = nearest(database[:5], database, query_ids=ids[:5], database_ids=ids, chunk=4)
    assert (own_index != np.arange(5)).all() and (own > 1e-6).all()  # an image never matches itself
    # pixel distance = 1 - Pearson r: brightness/contrast changes do not move an image
    image = torch.rand(1, 1, 16, 16)
    a, b = pixel_vectors(image, 8), pixel_vectors(0.5 * image + 0.2, 8)
    assert float(1 - (a @ b.T)[0, 0]) == pytest.approx(0.0, abs=1e-6)


def test_findings_below_min_per_class_are_skipped_in_point_and_bootstrap():
    from cxrgen.evaluate.fidelity import scores_with_intervals

    rng = np.random.default_rng(0)
    n = 40
    a = (np.arange(n) % 2).astype(float)  # 20/20: scored
    b = np.zeros(n)
    b[:2] = 1.0  # 2 positives: AUROC over 2 positives would be scored with min_per_class 1, not with 3
    labels = np.stack([a, b], axis=1)
    probs = np.clip(labels * 0.6 + rng.uniform(0, 0.5, labels.shape), 0, 1)
    loose = M.multilabel_scores(labels, probs, np.full(2, 0.5), ["A", "B"])
    strict = M.multilabel_scores(labels, probs, np.full(2, 0.5), ["A", "B"], min_per_class=3)
    assert set(loose["per_finding"]) == {"A", "B"} and set(strict["per_finding"]) == {"A"}
    assert strict["skipped"] == [{"finding": "B", "n_pos": 2, "n_neg": 38}]
    assert strict["auroc"]["macro"] == pytest.approx(strict["per_finding"]["A"]["auroc"])
    boot = scores_with_intervals(labels, probs, np.full(2, 0.5), ["A", "B"], resamples=30, confidence=0.95, seed=0,
                                 min_per_class=3)
    assert set(boot["per_finding"]) == {"A"}
    # a skipped finding stays out of the resampled averages too, so the macro interval is finding A's interval
    assert boot["auroc"]["macro"]["ci_low"] == pytest.approx(boot["per_finding"]["A"]["auroc"]["ci_low"])
    assert boot["auroc"]["macro"]["ci_high"] == pytest.approx(boot["per_finding"]["A"]["auroc"]["ci_high"])


def test_ssim_in_chunks_equals_one_call(synthetic_radiograph, monkeypatch):
    """The pair batches are split into chunks (bounded memory); each image pair's value does not depend on it."""
    import torch

    rng = np.random.default_rng(3)
    base = torch.from_numpy(synthetic_radiograph(32, 32))
    a = torch.stack([base + 0.02 * torch.from_numpy(rng.standard_normal((32, 32))) for _ in range(7)])[:, None]
    b = torch.stack([base + 0.05 * torch.from_numpy(rng.standard_normal((32, 32))) for _ in range(7)])[:, None]
    whole = M.ssim(a, b)
    monkeypatch.setattr(M, "PAIRS_PER_CALL", 3)
    chunked = M.ssim(a, b)
    assert chunked.shape == (7,) and np.allclose(chunked, whole, rtol=0, atol=1e-12)
    assert M.ssim(a[:0], b[:0]).shape == (0,)


def test_clustered_interval_draws_a_clusters_items_together():
    """Four identical seeds per prompt are one observation, not four: the clustered interval is as wide as the
    interval over one value per prompt, and wider than the naive interval over items."""
    per_prompt = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    items = np.repeat(per_prompt, 4)
    prompts = np.repeat(np.arange(len(per_prompt)), 4)
    kwargs = dict(resamples=400, confidence=0.95, seed=3)
    clustered = M.clustered_mean_interval(items, prompts, **kwargs)
    naive = M.mean_interval(items, **kwargs)
    one_per_prompt = M.mean_interval(per_prompt, **kwargs)
    assert clustered.value == naive.value == pytest.approx(0.5)
    assert (clustered.low, clustered.high) == (one_per_prompt.low, one_per_prompt.high)
    assert clustered.high - clustered.low > 1.5 * (naive.high - naive.low)
    singletons = M.clustered_mean_interval(per_prompt, np.arange(len(per_prompt)), **kwargs)
    assert (singletons.low, singletons.high) == (one_per_prompt.low, one_per_prompt.high)
    assert M.clustered_mean_interval(np.array([np.nan]), ["a"], **kwargs).value is None
