"""Image quality of DDL-CXR's generated later images against the real later images (issue 13 "Evaluation"; the paper
reports none): for held-out image pairs (prior image, EHR between, real later image) the LDM generates the later latent
from the prior latent and the EHR, the project autoencoder decodes it, and the result is compared with the real later
image — always next to the **prior-image baseline** (the last CXR carried forward, what a clinician has without the
generator), because a generated image is worth something only where it beats the image it started from.

Per pair and seed: pixel MSE and SSIM against the real later image, latent MSE against the real later image's latent,
and the in-domain evaluator's probabilities. Over pairs: the evaluator's macro AUROC against the real later image's
known CheXpert labels, FID/KID against the real later images, each with a percentile bootstrap over pairs; generated
minus prior uses the same draws for both (paired). Several samples per pair are pooled like the ICU predictors' seeds:
per-pair errors are averaged over samples, AUROC is averaged over samples on the same resampled pairs.

No torch at import: the statistics are numpy; generation and decoding import torch inside.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrgen.evaluate.metrics import Interval, auroc_columns, describe_bootstrap, percentile_interval
from cxrgen.evaluate.tables import fmt, with_ci
from cxrgen.labels import CHEXPERT_LABELS

GENERATED, PRIOR, RECONSTRUCTION, REAL_LATER = "generated", "prior", "ae_reconstruction", "real_later"
ARM_TITLES = {GENERATED: "generated later image (DDL-CXR LDM → AE decoder)",
              PRIOR: "prior image carried forward (baseline)",
              RECONSTRUCTION: "AE reconstruction of the real later image (ceiling for any decoded latent)",
              REAL_LATER: "real later image (the evaluator's own ceiling)"}
ERROR_METRICS = {"pixel_mse": "pixel MSE ↓", "ssim": "SSIM ↑", "latent_mse": "latent MSE ↓",
                 "probability_distance": "evaluator prob. distance ↓"}


# ---------------------------------------------------------------------------------------------- paired statistics


def _interval(value: float, draws: np.ndarray, resamples: int, confidence: float) -> dict:
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if value is None or not np.isfinite(value):
        return Interval(None, None, None, describe_bootstrap(resamples, confidence)).as_dict()
    low, high = percentile_interval(draws, confidence)
    return Interval(float(value), low, high, describe_bootstrap(resamples, confidence)).as_dict()


def per_pair(values: np.ndarray) -> np.ndarray:
    """[P] from per-pair values [P] or per-pair-and-sample values [P, S] (mean over samples, NaN-aware)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        return values
    flat = values.reshape(len(values), -1)
    known = np.isfinite(flat)
    with np.errstate(all="ignore"):
        return np.where(known.any(1), np.where(known, flat, 0.0).sum(1) / known.sum(1), np.nan)


def paired_means(arms: dict[str, np.ndarray], baseline: str, *, resamples: int, confidence: float,
                 seed: int) -> dict:
    """Mean of a per-pair value for every arm (values [P] or [P, S]) with bootstrap intervals over pairs, and the
    paired difference ``arm − baseline`` (the same resampled pairs for both; pairs where either is undefined are
    dropped from that difference). ``{"arms": {arm: interval}, "vs_<baseline>": {arm: interval}, "n_pairs"}``."""
    values = {arm: per_pair(v) for arm, v in arms.items()}
    n = {len(v) for v in values.values()}
    if len(n) != 1:
        raise ValueError(f"every arm needs one value per pair, got lengths {sorted(n)}")
    n_pairs = n.pop()
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, n_pairs, n_pairs) for _ in range(int(resamples))]

    def mean_with_ci(v: np.ndarray) -> dict:
        keep = np.isfinite(v)
        if not keep.any():
            return _interval(np.nan, np.array([]), resamples, confidence)
        boot = np.array([np.nanmean(v[idx]) if np.isfinite(v[idx]).any() else np.nan for idx in draws])
        return _interval(float(v[keep].mean()), boot, resamples, confidence)

    out = {"n_pairs": int(n_pairs), "arms": {arm: mean_with_ci(v) for arm, v in values.items()},
           f"vs_{baseline}": {}}
    if baseline not in values:
        return out
    for arm, v in values.items():
        if arm == baseline:
            continue
        out[f"vs_{baseline}"][arm] = mean_with_ci(v - values[baseline])
    return out


def masked_auroc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC [K] of each finding over its known (finite) labels; NaN without both classes."""
    labels, scores = np.asarray(labels, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    out = np.full(labels.shape[1], np.nan)
    for j in range(labels.shape[1]):
        known = np.isfinite(labels[:, j])
        if known.any():
            out[j] = auroc_columns(labels[known, j:j + 1] == 1, scores[known, j:j + 1])[0]
    return out


def _macro(per_finding: np.ndarray) -> float:
    finite = per_finding[np.isfinite(per_finding)]
    return float(finite.mean()) if len(finite) else np.nan


def evaluable_findings(labels: np.ndarray, findings: Sequence[str] = CHEXPERT_LABELS) -> tuple[list[int], list[dict]]:
    """Findings with at least one known positive and one known negative (the macro averages over these), and the
    others with their counts (reported, never averaged)."""
    labels = np.asarray(labels, dtype=np.float64)
    keep, skipped = [], []
    for j, name in enumerate(findings):
        pos, neg = int((labels[:, j] == 1).sum()), int((labels[:, j] == 0).sum())
        (keep.append(j) if pos and neg else skipped.append({"finding": name, "n_pos": pos, "n_neg": neg}))
    return keep, skipped


def classifier_agreement(labels: np.ndarray, probs: dict[str, np.ndarray], baseline: str, *, resamples: int,
                         confidence: float, seed: int, findings: Sequence[str] = CHEXPERT_LABELS) -> dict:
    """The evaluator's macro AUROC against the real later image's known labels ``labels`` [P, K] (NaN = unknown) for
    each arm's probabilities ([P, K], or [S, P, K] for S samples per pair: mean over samples of each sample's macro
    AUROC on the same pairs), with bootstrap intervals over pairs, paired differences ``arm − baseline`` and the
    per-finding AUROC (mean over samples)."""
    labels = np.asarray(labels, dtype=np.float64)
    keep, skipped = evaluable_findings(labels, findings)
    stacked = {arm: np.asarray(p, dtype=np.float64)[None] if np.ndim(p) == 2 else np.asarray(p, dtype=np.float64)
               for arm, p in probs.items()}
    for arm, p in stacked.items():
        if p.shape[1:] != labels.shape:
            raise ValueError(f"{arm}: probabilities {p.shape[1:]} do not match labels {labels.shape}")

    def macro(arm: str, idx: np.ndarray) -> float:
        values = [_macro(masked_auroc(labels[idx][:, keep], s[idx][:, keep])) for s in stacked[arm]]
        values = np.asarray(values)
        return float(np.nanmean(values)) if np.isfinite(values).any() else np.nan

    n = len(labels)
    every = np.arange(n)
    point = {arm: macro(arm, every) if keep else np.nan for arm in stacked}
    rng = np.random.default_rng(seed)
    draws = {arm: [] for arm in stacked}
    for _ in range(int(resamples) if keep else 0):
        idx = rng.integers(0, n, n)
        for arm in stacked:
            draws[arm].append(macro(arm, idx))
    draws = {arm: np.asarray(v, dtype=np.float64) for arm, v in draws.items()}
    per_finding = {}
    for arm, p in stacked.items():
        by_sample = np.stack([masked_auroc(labels[:, keep], s[:, keep]) for s in p]) if keep else np.zeros((1, 0))
        per_finding[arm] = {findings[j]: float(by_sample[:, k].mean()) for k, j in enumerate(keep)}
    out = {"n_pairs": int(n), "samples": {arm: int(len(p)) for arm, p in stacked.items()},
           "evaluable_findings": [findings[j] for j in keep], "skipped_findings": skipped,
           "macro_auroc": {arm: _interval(point[arm], draws[arm], resamples, confidence) for arm in stacked},
           f"vs_{baseline}": {}, "per_finding_auroc": per_finding}
    if baseline in stacked:
        for arm in stacked:
            if arm != baseline:
                out[f"vs_{baseline}"][arm] = _interval(point[arm] - point[baseline], draws[arm] - draws[baseline],
                                                       resamples, confidence)
    return out


def probability_distance(probs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per pair (and sample) mean absolute difference of the 14 evaluator probabilities to the reference image's:
    [P, K] or [S, P, K] against [P, K] -> [P] or [P, S]."""
    probs, reference = np.asarray(probs, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if probs.ndim == 2:
        return np.abs(probs - reference).mean(axis=1)
    return np.abs(probs - reference[None]).mean(axis=2).T


def finding_changes(prior: np.ndarray, later: np.ndarray, findings: Sequence[str] = CHEXPERT_LABELS,
                    skip: Sequence[str] = ("No Finding", "Support Devices")) -> str:
    """The findings that appear (+) or resolve (−) from the prior to the later image, by their known labels
    (1/0; unknown on either side = not named). "no change" when none."""
    changes = []
    for j, name in enumerate(findings):
        if name in skip:
            continue
        a, b = prior[j], later[j]
        if not (np.isfinite(a) and np.isfinite(b)) or a == b:
            continue
        changes.append(f"{'+' if b == 1 else '−'}{name}")
    return ", ".join(changes) if changes else "no change"


# ----------------------------------------------------------------------------------------------- markdown


def image_quality_markdown(payload: dict) -> str:
    """The image-quality tables (errors, classifier agreement, FID/KID) with their protocol; also the section the
    DDL-CXR report embeds."""
    arms = [GENERATED, PRIOR, RECONSTRUCTION]
    lines = [f"Image quality of generated later images: {payload['n_pairs']} {payload['split']} image pairs "
             f"({payload['n_stays']} stays, {payload['n_patients']} patients), {payload['samples_per_pair']} "
             f"sample(s) per pair, DDIM {payload['sampling']['steps']} steps η={payload['sampling']['eta']}; images "
             f"compared at {payload['resolution']} px (the autoencoder's resolution; the evaluator reads "
             f"{payload['evaluator_resolution']} px); {payload['ci']}.", ""]
    lines += ["| arm | " + " | ".join(ERROR_METRICS.values()) + " |", "|---|" + "---|" * len(ERROR_METRICS)]
    for arm in arms:
        cells = [with_ci(payload["errors"][m]["arms"].get(arm), 4) for m in ERROR_METRICS]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    for arm in (GENERATED, RECONSTRUCTION):
        cells = [with_ci(payload["errors"][m][f"vs_{PRIOR}"].get(arm), 4) for m in ERROR_METRICS]
        lines.append(f"| {arm} − prior (paired) | " + " | ".join(cells) + " |")
    classifier = payload["classifier"]
    lines += ["", f"Evaluator macro AUROC against the real later image's known labels ({len(classifier['evaluable_findings'])}"
              f" evaluable finding(s): {', '.join(classifier['evaluable_findings']) or 'none'}):", "",
              "| arm | macro AUROC | − prior (paired) |", "|---|---|---|"]
    for arm in (REAL_LATER, RECONSTRUCTION, GENERATED, PRIOR):
        paired = classifier[f"vs_{PRIOR}"].get(arm)
        lines.append(f"| {arm} | {with_ci(classifier['macro_auroc'].get(arm))} | "
                     f"{with_ci(paired) if paired else ''} |")
    if classifier["skipped_findings"]:
        lines += ["", "Findings without both classes among the pairs' known later labels (not averaged): "
                  + ", ".join(f"{s['finding']} ({s['n_pos']}+/{s['n_neg']}−)" for s in classifier["skipped_findings"])
                  + "."]
    for backbone, entry in payload["distribution"].items():
        lines += ["", f"FID / KID against the real later images — backbone {backbone}: {entry['description']}.", "",
                  "| arm | n (arm, real later) | FID [CI] | KID×10³ [CI] |", "|---|---|---|---|"]
        for arm, result in entry["vs_real_later"].items():
            if "skipped" in result:
                lines.append(f"| {arm} | {result['n_a']}, {result['n_b']} | {result['skipped']} | |")
                continue
            lines.append(f"| {arm} | {result['n_a']}, {result['n_b']} | {with_ci(result['fid'], 2)} | "
                         f"{with_ci(result['kid'], 2, scale=1e3)} |")
    for line in payload["skipped_backbones"]:
        lines += ["", f"Backbone {line}"]
    lines += ["", f"{payload['pairs_with_finding_changes']} of {payload['n_pairs']} pairs change a known finding "
              f"between the prior and the later image; timing {fmt(payload['seconds'], 1)} s "
              f"(generation {fmt(payload['seconds_generation'], 1)} s).", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- generation (torch)


def pair_sample_seeds(seed: int, pair_keys: Sequence[str], samples: int) -> list[list[int]]:
    """[P][S] noise seeds: one per pair and sample index, from the run seed and the pair key (never from the batch)."""
    from cxrgen.icu.ddl_ldm import sample_seed

    return [[sample_seed(seed, f"{key}:image-quality:{s}") for s in range(int(samples))] for key in pair_keys]


def generate_pair_latents(model, scheduler_config, *, prior, values, static, start, end, seeds: list[list[int]],
                          steps: int, eta: float, batch_size: int):
    """[S, P, C, h, w] later latents (scaled LDM space, on the CPU) for P pairs × S samples, DDIM with each sample's
    own seed (:func:`cxrgen.icu.ddl_ldm.sample_later_latents`, the sampler of rule generate_ddl_latents). The P·S
    samples are batched together (sample-major); a sample never depends on its batch."""
    import torch

    from cxrgen.icu.ddl_ldm import sample_later_latents

    n_pairs, samples = len(seeds), len(seeds[0]) if seeds else 0
    pair_of = torch.arange(n_pairs).repeat(samples)  # item k = sample k // P of pair k % P
    flat_seeds = [seeds[p][s] for s in range(samples) for p in range(n_pairs)]
    chunks = []
    for first in range(0, len(flat_seeds), batch_size):
        rows = pair_of[first:first + batch_size]
        chunks.append(sample_later_latents(model, scheduler_config, prior=prior[rows], values=values[rows],
                                           static=static[rows], start=start[rows], end=end[rows],
                                           seeds=flat_seeds[first:first + batch_size], steps=steps, eta=eta).cpu())
    if not chunks:
        return prior.new_zeros((samples, n_pairs, *prior.shape[1:]))
    return torch.cat(chunks).reshape(samples, n_pairs, *prior.shape[1:])


def decode_scaled(autoencoder, latents, scaling_factor: float, batch_size: int = 32):
    """Images [N, 1, H, W] in [0, 1] from latents in the LDM's scaled space (divided by the cache's scaling factor
    before the AE decoder, as the latent cache prescribes), on the CPU; decoded on the autoencoder's device."""
    import torch

    device = next(autoencoder.parameters()).device
    out = []
    with torch.no_grad():
        for first in range(0, len(latents), batch_size):
            z = latents[first:first + batch_size].to(device) / float(scaling_factor)
            out.append(((autoencoder.decode(z).sample.clamp(-1.0, 1.0) + 1.0) / 2.0).float().cpu())
    return torch.cat(out) if out else latents.new_zeros((0, 1, 1, 1))
