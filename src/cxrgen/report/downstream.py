"""The downstream experiments' report (rule ``report_downstream``, :mod:`cxrgen.stages.report_downstream`): mean and
Student-t interval over seeds per experiment and arm, the markdown fragment and the figure."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.evaluate.subgroups import SUBGROUP_COLUMNS

SUBGROUP_TITLES = {"sex": "sex", "age_bucket": "age band"}


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of a Student-t confidence interval over seeds (None with fewer than 2 values)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), None
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None
    from scipy import stats

    sem = float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return mean, float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * sem)


def _mean_ci_text(mean: float, half: float | None, n: int) -> str:
    if not math.isfinite(mean):
        return "–"
    if half is None or not math.isfinite(half):
        return f"{mean:.3f} (n={n}, no CI)"
    return f"{mean:.3f} ± {half:.3f}"


def summarise(results: list[dict]) -> pd.DataFrame:
    """One row per (experiment, arm): seeds, sizes, mean and CI half-width of test AUROC/F1 averages."""
    rows = []
    for res in results:
        for order, (arm, m) in enumerate(res["arms"].items()):
            rows.append({"experiment": res["experiment"], "arm": arm, "order": order, "seed": res["seed"],
                         "n_real": m["n_real"], "n_synthetic": m["n_synthetic"],
                         **{f"auroc_{k}": v for k, v in m["test"]["auroc"].items()},
                         **{f"f1_{k}": v for k, v in m["test"]["f1"].items()},
                         **{f"gap_{column}": (m.get("subgroups") or {}).get(column, {}).get("auroc_macro_gap")
                            for column in SUBGROUP_COLUMNS}})
    frame = pd.DataFrame(rows)
    out = []
    for (experiment, arm), group in frame.groupby(["experiment", "arm"], sort=False):
        row = {"experiment": experiment, "arm": arm, "order": int(group["order"].min()),
               "seeds": sorted(group["seed"].tolist()), "n_real": int(group["n_real"].iloc[0]),
               "n_synthetic": int(group["n_synthetic"].iloc[0])}
        for metric in ("auroc_macro", "auroc_micro", "f1_macro", "f1_micro",
                       *(f"gap_{column}" for column in SUBGROUP_COLUMNS)):
            row[metric], row[metric + "_ci"] = mean_ci([v for v in group[metric] if v is not None])
        out.append(row)
    return pd.DataFrame(out)


TITLES = {"anonymisation": "Anonymisation: real-only vs synthetic-only of equal size (MedCoDi-M Table 8)",
          "imbalance": "Imbalance: real vs real + synthetic minority images (MedCoDi-M Tables 9-10)",
          "scarcity": "Scarcity: synthetic share at fixed total size (MedCoDi-M Table 11)",
          "low_data": "Low data: a fraction of the real set + synthetic vs 100 % real (Diff-CXR)"}


def downstream_markdown(results: list[dict], table: pd.DataFrame, demo_note: bool = True) -> str:
    """The fragment: protocol, then one table per experiment (mean ± 95 % t-CI over seeds; for the imbalance
    experiment also the training positives and the per-finding F1) of the ``run_downstream`` results and their
    :func:`summarise` table."""
    first = results[0]
    clf = first["classifier"]
    n_seeds = len({r["seed"] for r in results})
    lines = ["## Downstream augmentation experiments", "",
             f"Protocol: a torchvision DenseNet (growth {clf['model']['growth_rate']}, blocks "
             f"{clf['model']['block_config']}, {clf['model']['num_init_features']} stem features) trained from scratch "
             f"for {clf['max_steps']} steps (batch {clf['batch_size']}, Adam {clf['lr']:g}) on every training set with "
             f"identical hyperparameters; weights selected by {clf['selection']} on the real val split "
             f"({first['n_val']} images), scored on the real test split ({first['n_test']} images, views "
             f"{first['views'] or 'all'}) at {first['resolution']} px. Synthetic pool: variant `{first['variant']}`. "
             f"Seeds per arm: {n_seeds}; ± is the half-width of a 95 % Student-t interval over seeds"
             + (" (n=1: no CI)." if n_seeds < 2 else "."),
             "AUROC and F1 (threshold 0.5) averages leave out findings whose test labels hold a single class."]
    if demo_note:
        lines.append("Demo-scale numbers (phantom corpus, small network, few steps) are not comparable with the "
                     "papers' numbers.")
    for experiment in dict.fromkeys(table["experiment"]):
        part = table[table["experiment"] == experiment].sort_values("order")
        res = next(r for r in results if r["experiment"] == experiment)
        lines += ["", f"### {TITLES.get(experiment, experiment)}", ""]
        findings = next(iter(res["arms"].values()))["task_findings"]
        if experiment == "imbalance":
            lines.append(f"Findings: {', '.join(findings)} (trained and scored on these only).")
        lines.append(f"Synthetic pool: {res['pool']['n']} images of sets {res['pool']['sets']} (excluded: "
                     f"{res['pool']['excluded']}); real training images: {res['n_real_train']}.")
        lines += ["", "| arm | real | synthetic | macro AUROC | micro AUROC | macro F1 | micro F1 | "
                  "sex gap | age-band gap | seeds |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for _, row in part.iterrows():
            n = len(row["seeds"])
            lines.append(f"| {row['arm']} | {row['n_real']} | {row['n_synthetic']} | "
                         f"{_mean_ci_text(row['auroc_macro'], row['auroc_macro_ci'], n)} | "
                         f"{_mean_ci_text(row['auroc_micro'], row['auroc_micro_ci'], n)} | "
                         f"{_mean_ci_text(row['f1_macro'], row['f1_macro_ci'], n)} | "
                         f"{_mean_ci_text(row['f1_micro'], row['f1_micro_ci'], n)} | "
                         f"{_mean_ci_text(row['gap_sex'], row['gap_sex_ci'], n)} | "
                         f"{_mean_ci_text(row['gap_age_bucket'], row['gap_age_bucket_ci'], n)} | "
                         f"{', '.join(map(str, row['seeds']))} |")
        lines += ["", ci_overlap_sentence(part)]
        lines += _per_finding_auroc_table(results, experiment, list(part["arm"]), findings)
        lines += _subgroup_table(results, experiment, list(part["arm"]))
        if experiment == "imbalance":
            lines += ["", "Training positives per finding (seed " + str(res["seed"]) + "; balanced = all equal):", "",
                      "| arm | " + " | ".join(findings) + " |", "|---|" + "---:|" * len(findings)]
            for arm in part["arm"]:
                counts = res["arms"][arm]["positives"]
                lines.append(f"| {arm} | " + " | ".join(str(counts[f]) for f in findings) + " |")
            lines += ["", "Per-finding test F1 (mean over seeds; MedCoDi-M Table 10 layout):", "",
                      "| arm | " + " | ".join(findings) + " |", "|---|" + "---:|" * len(findings)]
            for arm in part["arm"]:
                cells = []
                for f in findings:
                    values = [(r["arms"][arm]["test"]["per_finding"].get(f) or {}).get("f1") for r in results
                              if r["experiment"] == experiment]
                    values = [v for v in values if v is not None]  # None: skipped (a single class in the test set)
                    cells.append(f"{np.mean(values):.3f}" if values else "–")
                lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ci_overlap_sentence(part: pd.DataFrame) -> str:
    """Whether each arm's macro-AUROC interval overlaps the first arm's (the experiment's reference arm)."""
    rows = list(part.sort_values("order").itertuples())
    reference, others = rows[0], rows[1:]
    if not others:
        return ""
    if any(r.auroc_macro_ci is None or not math.isfinite(r.auroc_macro_ci) for r in rows):
        return (f"Macro AUROC against `{reference.arm}`: fewer than 2 seeds for some arm, so no interval and no "
                "statement on whether arms differ.")
    low, high = reference.auroc_macro - reference.auroc_macro_ci, reference.auroc_macro + reference.auroc_macro_ci
    overlap = [r.arm for r in others if r.auroc_macro - r.auroc_macro_ci <= high and
               r.auroc_macro + r.auroc_macro_ci >= low]
    apart = [r.arm for r in others if r.arm not in overlap]
    parts = []
    if overlap:
        parts.append(f"the 95 % intervals of {', '.join(f'`{a}`' for a in overlap)} overlap it (no difference shown)")
    if apart:
        parts.append(f"those of {', '.join(f'`{a}`' for a in apart)} do not")
    return f"Macro AUROC against `{reference.arm}`: " + "; ".join(parts) + "."


def _mean_of(values: list) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return f"{np.mean(values):.3f}" if values else "–"


def _per_finding_auroc_table(results: list[dict], experiment: str, arms: list[str], findings: list[str]) -> list[str]:
    """Per-finding test AUROC, mean over seeds ("–": a single class in the test set)."""
    runs = [r for r in results if r["experiment"] == experiment]
    shown = [f for f in findings if any(f in r["arms"][a]["test"]["per_finding"] for r in runs for a in arms)]
    if not shown:
        return []
    lines = ["", "Per-finding test AUROC (mean over seeds):", "", "| arm | " + " | ".join(shown) + " |",
             "|---|" + "---:|" * len(shown)]
    for arm in arms:
        cells = [_mean_of([(r["arms"][arm]["test"]["per_finding"].get(f) or {}).get("auroc") for r in runs])
                 for f in shown]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def _subgroup_table(results: list[dict], experiment: str, arms: list[str]) -> list[str]:
    """Macro AUROC per sex and age band (mean over seeds), test images per group in the header."""
    runs = [r for r in results if r["experiment"] == experiment and "subgroups" in next(iter(r["arms"].values()))]
    lines = []
    for column, title in SUBGROUP_TITLES.items():
        groups = sorted({g for r in runs for a in arms for g in r["arms"][a]["subgroups"].get(column, {}).get(
            "groups", {})})
        if not groups:
            continue
        sizes = {g: runs[0]["arms"][arms[0]]["subgroups"][column]["groups"].get(g, {}).get("n", 0) for g in groups}
        lines += ["", f"Test macro AUROC by {title} (mean over seeds; n = test images; gap = best − worst known "
                      "group with enough images):", "",
                  "| arm | " + " | ".join(f"{g} (n={sizes[g]})" for g in groups) + " | gap |",
                  "|---|" + "---:|" * (len(groups) + 1)]
        for arm in arms:
            cells = [_mean_of([r["arms"][arm]["subgroups"][column]["groups"].get(g, {}).get("auroc_macro")
                               for r in runs]) for g in groups]
            gap = _mean_of([r["arms"][arm]["subgroups"][column]["auroc_macro_gap"] for r in runs])
            lines.append(f"| {arm} | " + " | ".join(cells) + f" | {gap} |")
    return lines


def plot_downstream(table: pd.DataFrame, path: Path | str) -> None:
    """Macro AUROC per arm, one panel per experiment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    experiments = list(dict.fromkeys(table["experiment"]))
    fig, axes = plt.subplots(1, len(experiments), figsize=(3.6 * len(experiments), 3.4), squeeze=False)
    for ax, experiment in zip(axes[0], experiments, strict=True):
        part = table[table["experiment"] == experiment].sort_values("order")
        x = np.arange(len(part))
        errors = [e if e is not None and math.isfinite(e) else 0.0 for e in part["auroc_macro_ci"]]
        ax.bar(x, part["auroc_macro"], yerr=errors if any(errors) else None, capsize=3,
               color=["tab:blue" if s == 0 else "tab:orange" if r == 0 else "tab:green"
                      for r, s in zip(part["n_real"], part["n_synthetic"], strict=True)])
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(x)
        ax.set_xticklabels(part["arm"], rotation=35, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(experiment, fontsize=9)
        ax.set_ylabel("test macro AUROC")
    fig.suptitle("Downstream classifiers (blue: real only, orange: synthetic only, green: mixed; dashed: chance)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
