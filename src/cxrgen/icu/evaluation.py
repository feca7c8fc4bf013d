"""ICU outcome metrics of the DDL-CXR evaluation (arXiv 2410.17918 poster tables): AUROC and AUPRC for in-hospital
mortality and macro over the phenotypes, pooled over training seeds (mean of the seeds' metric on the same stays),
with percentile bootstrap intervals over the test stays, overall and by hours since the last CXR, plus paired
differences between arms (the same bootstrap draws for both arms).

AUROC and AUPRC are the project's vectorised definitions (:func:`cxrgen.evaluate.metrics.auroc_columns`,
:func:`~cxrgen.evaluate.metrics.average_precision_columns`): the bootstrap evaluates them ~10⁵ times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrgen.evaluate.metrics import (
    Interval,
    auroc_columns,
    average_precision_columns,
    describe_bootstrap,
    percentile_interval,
)
from cxrgen.icu.inputs import LAST_IMAGE_BINS, MORTALITY

METRICS = ("mortality_auroc", "mortality_auprc", "phenotype_macro_auroc", "phenotype_macro_auprc")


def outcome_metrics(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """[4] = :data:`METRICS` for labels/probabilities [n, K] with column 0 mortality, 1.. phenotypes (macro =
    mean over phenotypes with both classes)."""
    return _metrics_of_models(y, p[None])[0]


def _metrics_of_models(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """[M, 4] metrics of M models' probabilities ``p`` [M, n, K] on the same labels ``y`` [n, K], in one pass."""
    models, n, k = p.shape
    flat_p = p.transpose(1, 0, 2).reshape(n, models * k)
    flat_y = np.tile(y, (1, models))
    auc = auroc_columns(flat_y, flat_p).reshape(models, k)
    ap = average_precision_columns(flat_y, flat_p).reshape(models, k)
    out = np.full((models, len(METRICS)), np.nan)
    out[:, 0], out[:, 1] = auc[:, 0], ap[:, 0]
    with np.errstate(all="ignore"):
        for j, values in ((2, auc[:, 1:]), (3, ap[:, 1:])):
            known = np.isfinite(values)
            out[:, j] = np.where(known.any(1), np.where(known, values, 0).sum(1) / known.sum(1), np.nan)
    return out


@dataclass
class ArmPredictions:
    """Test predictions of every arm and seed on the same stays: truth [n, K], probabilities per arm [S, n, K]."""

    stay_keys: np.ndarray
    bins: np.ndarray
    truth: np.ndarray
    probabilities: dict[str, np.ndarray]
    seeds: dict[str, list[int]]
    tasks: list[str]


def align_predictions(frame: pd.DataFrame, split: str = "test") -> ArmPredictions:
    """Stack predictions.parquet rows (columns stay_key, split, arm, seed, last_image_bin, p_<task>, y_<task>) of
    ``split``; every arm × seed must cover the same stays with the same truth."""
    frame = frame[frame["split"] == split]
    if frame.empty:
        raise ValueError(f"no {split} predictions")
    tasks = [c.removeprefix("p_") for c in frame.columns if c.startswith("p_")]
    if not tasks or tasks[0] != MORTALITY:
        raise ValueError(f"prediction columns must start with p_{MORTALITY}, found {tasks[:3]}")
    keys = np.sort(frame["stay_key"].astype(str).unique())
    reference = None
    probabilities, seeds = {}, {}
    for arm, arm_rows in frame.groupby("arm", sort=True):
        stacked = []
        seeds[arm] = sorted(int(s) for s in arm_rows["seed"].unique())
        for seed in seeds[arm]:
            rows = arm_rows[arm_rows["seed"] == seed].set_index("stay_key")
            if rows.index.has_duplicates or set(rows.index) != set(keys):
                raise ValueError(f"arm {arm} seed {seed} does not predict each {split} stay exactly once")
            rows = rows.loc[keys]
            truth = rows[[f"y_{t}" for t in tasks]].to_numpy(np.float64)
            if reference is None:
                reference = (truth, rows["last_image_bin"].astype(str).to_numpy())
            elif not np.array_equal(truth, reference[0]):
                raise ValueError(f"arm {arm} seed {seed} has other labels for the same stays")
            stacked.append(rows[[f"p_{t}" for t in tasks]].to_numpy(np.float64))
        probabilities[arm] = np.stack(stacked)
    return ArmPredictions(stay_keys=keys, bins=reference[1], truth=reference[0], probabilities=probabilities,
                          seeds=seeds, tasks=tasks)


def _pooled(predictions: ArmPredictions, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Per arm, the mean over its seeds of each seed's :data:`METRICS` on the stays ``idx``."""
    arms = sorted(predictions.probabilities)
    stacked = np.concatenate([predictions.probabilities[arm][:, idx] for arm in arms])
    metrics = _metrics_of_models(predictions.truth[idx], stacked)
    out, first = {}, 0
    for arm in arms:
        count = len(predictions.probabilities[arm])
        out[arm] = metrics[first:first + count].mean(0)
        first += count
    return out


def _interval(value: float, draws: np.ndarray, resamples: int, confidence: float) -> dict:
    draws = draws[np.isfinite(draws)]
    if not np.isfinite(value):
        return Interval(None, None, None, describe_bootstrap(resamples, confidence)).as_dict()
    low, high = percentile_interval(draws, confidence)
    return Interval(float(value), low, high, describe_bootstrap(resamples, confidence)).as_dict()


def evaluate_group(predictions: ArmPredictions, idx: np.ndarray, comparisons: Sequence[Sequence[str]], *,
                   resamples: int, confidence: float, seed: int) -> dict:
    """Pooled metrics with bootstrap intervals per arm and paired differences for the stays ``idx``."""
    arms = sorted(predictions.probabilities)
    y = predictions.truth[idx]
    point = _pooled(predictions, idx)
    rng = np.random.default_rng(seed)
    draws = {arm: [] for arm in arms}
    for _ in range(int(resamples)):
        pooled = _pooled(predictions, idx[rng.integers(0, len(idx), len(idx))])
        for arm in arms:
            draws[arm].append(pooled[arm])
    draws = {arm: np.asarray(v).reshape(-1, len(METRICS)) for arm, v in draws.items()}
    result = {"n": int(len(idx)), "mortality_prevalence": float(y[:, 0].mean()) if len(idx) else None,
              "arms": {arm: {m: _interval(point[arm][j], draws[arm][:, j], resamples, confidence)
                             for j, m in enumerate(METRICS)} for arm in arms},
              "comparisons": {}}
    for a, b in comparisons:
        if a not in point or b not in point:
            continue
        result["comparisons"][f"{a} vs {b}"] = {
            m: _interval(point[a][j] - point[b][j], draws[a][:, j] - draws[b][:, j], resamples, confidence)
            for j, m in enumerate(METRICS)}
    return result


def evaluate_arms(frame: pd.DataFrame, cfg: dict) -> dict:
    """icu_results.json content: overall and per last-image bin (<12, 12–24, 24–36, ≥36 h)."""
    predictions = align_predictions(frame, cfg["split"])
    resamples, confidence, seed = int(cfg["bootstrap"]["resamples"]), float(cfg["bootstrap"]["confidence"]), \
        int(cfg["bootstrap"]["seed"])
    comparisons = [tuple(pair) for pair in cfg["comparisons"]]
    groups = {"overall": np.arange(len(predictions.stay_keys))}
    for name in LAST_IMAGE_BINS:
        groups[name] = np.flatnonzero(predictions.bins == name)
    results = {}
    for k, (name, idx) in enumerate(groups.items()):
        if len(idx) == 0:
            results[name] = {"n": 0, "arms": {}, "comparisons": {}}
            continue
        results[name] = evaluate_group(predictions, idx, comparisons, resamples=resamples, confidence=confidence,
                                       seed=seed + k)
    return {"split": cfg["split"], "metrics": list(METRICS), "tasks": predictions.tasks,
            "seeds": predictions.seeds, "bootstrap": describe_bootstrap(resamples, confidence),
            "pooling": "mean over seeds of each seed's metric on the same (resampled) stays", "groups": results}


def _cell(entry: dict) -> str:
    if entry.get("value") is None:
        return "n/a"
    if entry.get("ci_low") is None:
        return f"{entry['value']:.3f}"
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def results_markdown(results: dict) -> str:
    """The poster's tables: arms × metrics per group, then the paired differences per group."""
    header = "| group | n | arm | " + " | ".join(results["metrics"]) + " |"
    rule = "|" + "---|" * (3 + len(results["metrics"]))
    lines = [f"ICU outcome prediction ({results['split']} split; {results['bootstrap']}; seeds pooled: "
             f"{results['pooling']})", "", header, rule]
    for group, entry in results["groups"].items():
        for arm, metrics in entry["arms"].items():
            cells = " | ".join(_cell(metrics[m]) for m in results["metrics"])
            lines.append(f"| {group} | {entry['n']} | {arm} | {cells} |")
    lines += ["", "Paired differences (same bootstrap draws for both arms):", "",
              header.replace("| arm |", "| comparison |"), rule]
    for group, entry in results["groups"].items():
        for name, metrics in entry["comparisons"].items():
            cells = " | ".join(_cell(metrics[m]) for m in results["metrics"])
            lines.append(f"| {group} | {entry['n']} | {name} | {cells} |")
    return "\n".join(lines) + "\n"
