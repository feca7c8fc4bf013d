"""Rules ``run_downstream`` (one experiment, one seed: every arm trained and scored on the real test split) and
``report_downstream`` (all experiments and seeds: mean ± CI table, figure, markdown fragment)."""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.evaluate.classifier import predict_rows, train_classifier
from cxrgen.evaluate.experiments import build_arms, label_frame, positives, real_rows, synthetic_pool
from cxrgen.evaluate.metrics import multilabel_scores
from cxrgen.labels import CHEXPERT_LABELS
from cxrgen.report.figures import Panel, plot_curves, series
from cxrgen.train.job import tracked_job, write_json
from cxrgen.train.tracking import config_digest

log = logging.getLogger(__name__)


def training_config(evaluator_cfg: dict, downstream_cfg: dict) -> dict:
    """The evaluator's training settings with the downstream step overrides: identical for every arm."""
    cfg = copy.deepcopy(dict(evaluator_cfg))
    for key in ("max_steps", "eval_every"):
        if downstream_cfg[key] is not None:
            cfg[key] = downstream_cfg[key]
    cfg["checkpoint_every"] = min(int(cfg["checkpoint_every"]), int(cfg["max_steps"]))
    return cfg


def run_downstream(*, real_index_path: Path | str, real_store_root: Path | str, synthetic_store_root: Path | str,
                   experiment: str, seed: int, base_seed: int, cfg: dict, evaluator_cfg: dict, resolution: int,
                   state_dir: Path | str, out_path: Path | str, tracking_json: Path | str | None, job_name: str,
                   stop_after_steps: int | None = None) -> dict:
    """Train every arm of ``experiment`` (sets from :func:`cxrgen.evaluate.experiments.build_arms`) and score it.

    ``cfg`` = the ``downstream`` section, ``evaluator_cfg`` = the ``evaluator`` section (model and training
    hyperparameters, shared by all arms); training seed = ``base_seed + seed``; set sampling seed = ``seed``.
    Model selection on the real val split, scores on the real test split (views ``cfg["views"]``). Finished arms
    are kept in ``state_dir/<arm>/result.json`` so a resubmitted job only trains what is missing.
    Writes ``out_path`` (metrics.json: per arm sizes, composition, positives, test AUROC/F1 per finding with
    micro/macro/weighted averages, selected step, timings; the synthetic pool and its exclusions; the MLflow run id)
    and ``<out dir>/curves.png``. Returns the metrics.
    """
    state_dir, out_path = Path(state_dir), Path(out_path)
    state_dir.mkdir(parents=True, exist_ok=True)
    real_index = pd.read_parquet(real_index_path)
    synthetic = pd.read_parquet(Path(synthetic_store_root) / "index.parquet")
    views = list(cfg["views"]) or None
    sets = list(cfg["imbalance"]["pool_sets"] if experiment == "imbalance" else cfg["pool_sets"])
    pool, excluded = synthetic_pool(synthetic, real_index, synthetic_store_root, sets)
    real = real_rows(real_index, "train", real_store_root, views=views)
    val = real_rows(real_index, "val", real_store_root, views=views)
    test = real_rows(real_index, "test", real_store_root, views=views)
    if test.empty:
        raise ValueError(f"run_downstream: no labelled test-split images with views {views or 'all'}")
    arms = build_arms(experiment, real, pool, cfg[experiment], seed, real_index=real_index)
    train_cfg = training_config(evaluator_cfg, cfg)
    train_seed = int(base_seed) + int(seed)

    params = {"experiment": experiment, "seed": seed, "train_seed": train_seed, "variant": cfg["variant"],
              "resolution": resolution, "classifier": train_cfg, "experiment_cfg": cfg[experiment],
              "pool_sets": sets, "n_pool": len(pool), "n_real_train": len(real), "n_val": len(val),
              "n_test": len(test), **{f"arm.{_slug(a.name)}.n_real": a.n_real for a in arms},
              **{f"arm.{_slug(a.name)}.n_synthetic": a.n_synthetic for a in arms}}
    tags = {"snakemake.rule": "run_downstream", "cxrgen.experiment": experiment,
            "config.sha256": config_digest({"downstream": cfg, "evaluator": evaluator_cfg})}
    results, curves = {}, {}
    with tracked_job(tracking_json, job_name, params=params, tags=tags, state_dir=state_dir) as job:
        for k, arm in enumerate(arms):
            arm_dir = state_dir / _slug(arm.name)
            done = arm_dir / "result.json"
            if done.is_file():
                results[arm.name] = json.loads(done.read_text())
                curves[arm.name] = results[arm.name].pop("_curve", {})
                log.info("arm %s already trained (%s)", arm.name, done)
                continue
            log.info("arm %d/%d %s: %s", k + 1, len(arms), arm.name, arm.description)
            prefix = f"{_slug(arm.name)}/"
            trained = train_classifier(
                arm.rows, cfg=train_cfg, resolution=resolution, seed=train_seed, state_dir=arm_dir,
                val_rows=val if len(val) else None, task_findings=arm.task_findings,
                on_log=lambda metrics, step, prefix=prefix: job.log_metrics(metrics, step, prefix + "train/"),
                on_eval=lambda metrics, step, prefix=prefix: job.log_metrics(metrics, step, prefix),
                stop_after_steps=stop_after_steps, desc=f"{experiment}:{arm.name}")
            columns = [CHEXPERT_LABELS.index(f) for f in arm.task_findings]
            probs = predict_rows(trained.evaluator, test)[:, columns]
            scores = multilabel_scores(label_frame(test)[:, columns], probs, thresholds=0.5,
                                       findings=arm.task_findings)
            result = {"description": arm.description, "n": len(arm.rows), "n_real": arm.n_real,
                      "n_synthetic": arm.n_synthetic, "task_findings": arm.task_findings,
                      "positives": positives(arm.rows, arm.task_findings), "steps": trained.steps,
                      "selected_step": trained.selected_step, "selection": trained.selection,
                      "train_seconds": trained.seconds, "test": scores}
            curve = {"history": trained.history, "evals": trained.evals}
            done.write_text(json.dumps({**result, "_curve": curve}))
            results[arm.name], curves[arm.name] = result, curve
            for ckpt in arm_dir.glob("ckpt-*.pt"):  # the arm is finished: its result is all a rerun needs
                ckpt.unlink()
            final = {f"test/auroc_{a}": v for a, v in scores["auroc"].items()}
            final.update({f"test/f1_{a}": v for a, v in scores["f1"].items()})
            job.log_metrics(final, trained.steps, prefix)
        metrics = {"experiment": experiment, "seed": int(seed), "train_seed": train_seed, "variant": cfg["variant"],
                   "resolution": resolution, "views": views, "classifier": {
                       "model": train_cfg["model"], "max_steps": train_cfg["max_steps"],
                       "batch_size": train_cfg["batch_size"], "lr": train_cfg["lr"],
                       "selection": train_cfg["selection"], "eval_every": train_cfg["eval_every"]},
                   "experiment_cfg": cfg[experiment], "pool": {"sets": sets, "n": len(pool), "excluded": excluded},
                   "n_real_train": len(real), "n_val": len(val), "n_test": len(test), "arms": results,
                   "mlflow_run_id": job.run_id}
        curves_png = out_path.parent / "curves.png"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        _save_curves(curves, curves_png, experiment)
        staged = write_json(out_path.with_name(out_path.name + ".tmp"), metrics)
        job.publish(staged, out_path, artifacts=[out_path, curves_png])
    return metrics


def _slug(name: str) -> str:
    return name.replace("+", "_plus_").replace("%", "pct")


def _save_curves(curves: dict[str, dict], path: Path, experiment: str) -> None:
    """One panel per arm: train and val BCE over steps."""
    panels = [Panel(f"{experiment}: {name}", [series(curve.get("history", []), "loss", "train BCE"),
                                              series(curve.get("evals", []), "val/loss", "val BCE", marker="o")],
                    ylabel="BCE") for name, curve in curves.items()]
    plot_curves(path, panels, panel_size=(3.2, 2.8), dpi=90)


# --------------------------------------------------------------------------------------------------- report
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


def _fmt(mean: float, half: float | None, n: int) -> str:
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
                         **{f"f1_{k}": v for k, v in m["test"]["f1"].items()}})
    frame = pd.DataFrame(rows)
    out = []
    for (experiment, arm), group in frame.groupby(["experiment", "arm"], sort=False):
        row = {"experiment": experiment, "arm": arm, "order": int(group["order"].min()),
               "seeds": sorted(group["seed"].tolist()), "n_real": int(group["n_real"].iloc[0]),
               "n_synthetic": int(group["n_synthetic"].iloc[0])}
        for metric in ("auroc_macro", "auroc_micro", "f1_macro", "f1_micro"):
            row[metric], row[metric + "_ci"] = mean_ci([v for v in group[metric] if v is not None])
        out.append(row)
    return pd.DataFrame(out)


TITLES = {"anonymisation": "Anonymisation: real-only vs synthetic-only of equal size (MedCoDi-M Table 8)",
          "imbalance": "Imbalance: real vs real + synthetic minority images (MedCoDi-M Tables 9-10)",
          "scarcity": "Scarcity: synthetic share at fixed total size (MedCoDi-M Table 11)",
          "low_data": "Low data: a fraction of the real set + synthetic vs 100 % real (Diff-CXR)"}


def report_downstream(*, metrics_paths: list[Path | str], out_md: Path | str, out_png: Path | str,
                      out_json: Path | str, demo_note: bool = True) -> pd.DataFrame:
    """Aggregate ``results/downstream/<experiment>/<seed>/metrics.json`` files into a markdown fragment (protocol +
    one table per experiment, mean ± 95 % t-CI over seeds), a figure (macro AUROC per arm) and a JSON table."""
    results = [json.loads(Path(p).read_text()) for p in metrics_paths]
    if not results:
        raise ValueError("report_downstream: no downstream results")
    table = summarise(results)
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
        lines += ["", "| arm | real | synthetic | macro AUROC | micro AUROC | macro F1 | seeds |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for _, row in part.iterrows():
            n = len(row["seeds"])
            lines.append(f"| {row['arm']} | {row['n_real']} | {row['n_synthetic']} | "
                         f"{_fmt(row['auroc_macro'], row['auroc_macro_ci'], n)} | "
                         f"{_fmt(row['auroc_micro'], row['auroc_micro_ci'], n)} | "
                         f"{_fmt(row['f1_macro'], row['f1_macro_ci'], n)} | {', '.join(map(str, row['seeds']))} |")
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
    Path(out_md).parent.mkdir(parents=True, exist_ok=True)
    Path(out_md).write_text("\n".join(lines) + "\n")
    _plot(table, out_png)
    Path(out_json).write_text(table.to_json(orient="records", indent=1))
    return table


def _plot(table: pd.DataFrame, path: Path | str) -> None:
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
