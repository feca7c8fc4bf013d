"""Rules ``run_downstream`` (one experiment, one seed: every arm trained and scored on the real test split) and
``report_downstream`` (all experiments and seeds: mean ± CI table, figure, markdown fragment)."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pandas as pd

from cxrgen.evaluate.classifier import predict_rows, train_classifier
from cxrgen.evaluate.experiments import build_arms, label_frame, positives, real_rows, synthetic_pool
from cxrgen.evaluate.metrics import multilabel_scores
from cxrgen.evaluate.subgroups import subgroup_scores
from cxrgen.labels import CHEXPERT_LABELS
from cxrgen.report.figures import Panel, plot_curves, series
from cxrgen.train.distributed import current_world
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

    Data parallel: run on every rank by :func:`cxrgen.train.distributed.launch` (``launch(run_downstream, n,
    **kwargs)``) or torchrun, the ranks train every arm together (:func:`~cxrgen.evaluate.classifier.
    train_classifier`); rank 0 alone opens the MLflow run, scores the arms and writes the results; the other ranks
    return ``{"rank": r, "steps": n}`` (n: steps trained in this run, over all arms).
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
    world = current_world()
    tags = {"snakemake.rule": "run_downstream", "cxrgen.experiment": experiment,
            "config.sha256": config_digest({"downstream": cfg, "evaluator": evaluator_cfg}),
            "cxrgen.world_size": str(world.world_size)}
    results, curves = {}, {}
    steps_trained = 0
    with tracked_job(tracking_json, job_name, params=params, tags=tags, state_dir=state_dir,
                     main=world.is_main) as job:
        for k, arm in enumerate(arms):
            arm_dir = state_dir / _slug(arm.name)
            done = arm_dir / "result.json"
            # every rank sees the same finished arms: rank 0 writes an arm's result only after all ranks trained it
            if done.is_file():
                results[arm.name] = json.loads(done.read_text())
                curves[arm.name] = results[arm.name].pop("_curve", {})
                log.info("arm %s already trained (%s)", arm.name, done)
                continue
            log.info("arm %d/%d %s: %s", k + 1, len(arms), arm.name, arm.description)
            prefix = f"{_slug(arm.name)}/"
            init_state, pretrain_steps = None, 0
            if arm.pretrain is not None:  # pre-train on the synthetic rows, then fine-tune from those weights
                pretrained = train_classifier(
                    arm.pretrain, cfg=train_cfg, resolution=resolution, seed=train_seed,
                    state_dir=arm_dir / "pretrain", val_rows=val if len(val) else None,
                    task_findings=arm.task_findings,
                    on_log=lambda metrics, step, prefix=prefix: job.log_metrics(metrics, step,
                                                                                prefix + "pretrain/train/"),
                    stop_after_steps=stop_after_steps, desc=f"{experiment}:{arm.name}:pretrain")
                steps_trained += pretrained.steps - (pretrained.resumed_from or 0)
                init_state, pretrain_steps = pretrained.evaluator.model.state_dict(), pretrained.steps
            trained = train_classifier(
                arm.rows, cfg=train_cfg, resolution=resolution, seed=train_seed, state_dir=arm_dir,
                val_rows=val if len(val) else None, task_findings=arm.task_findings,
                on_log=lambda metrics, step, prefix=prefix: job.log_metrics(metrics, step, prefix + "train/"),
                on_eval=lambda metrics, step, prefix=prefix: job.log_metrics(metrics, step, prefix),
                stop_after_steps=stop_after_steps, desc=f"{experiment}:{arm.name}", init_state=init_state)
            steps_trained += trained.steps - (trained.resumed_from or 0)
            if not world.is_main:  # rank 0 alone scores and writes
                continue
            columns = [CHEXPERT_LABELS.index(f) for f in arm.task_findings]
            probs = predict_rows(trained.evaluator, test)[:, columns]
            truth = label_frame(test)[:, columns]
            scores = multilabel_scores(truth, probs, thresholds=0.5, findings=arm.task_findings)
            result = {"description": arm.description, "n": len(arm.rows), "n_real": arm.n_real,
                      "n_synthetic": arm.n_synthetic, "task_findings": arm.task_findings,
                      "pretrain": None if arm.pretrain is None else {
                          "n": len(arm.pretrain), "steps": pretrain_steps,
                          "positives": positives(arm.pretrain, arm.task_findings)},
                      "positives": positives(arm.rows, arm.task_findings), "steps": trained.steps,
                      "selected_step": trained.selected_step, "selection": trained.selection,
                      "train_seconds": trained.seconds, "test": scores,
                      "subgroups": subgroup_scores(test, truth, probs, arm.task_findings)}
            curve = {"history": trained.history, "evals": trained.evals}
            done.write_text(json.dumps({**result, "_curve": curve}))
            results[arm.name], curves[arm.name] = result, curve
            for ckpt in arm_dir.glob("**/ckpt-*.pt"):  # the arm is finished: its result is all a rerun needs
                ckpt.unlink()
            final = {f"test/auroc_{a}": v for a, v in scores["auroc"].items()}
            final.update({f"test/f1_{a}": v for a, v in scores["f1"].items()})
            job.log_metrics(final, trained.steps, prefix)
        if not world.is_main:
            return {"rank": world.rank, "steps": steps_trained}
        metrics = {"experiment": experiment, "seed": int(seed), "train_seed": train_seed, "variant": cfg["variant"],
                   "resolution": resolution, "views": views, "classifier": {
                       "model": train_cfg["model"], "max_steps": train_cfg["max_steps"],
                       "batch_size": train_cfg["batch_size"], "lr": train_cfg["lr"],
                       "selection": train_cfg["selection"], "eval_every": train_cfg["eval_every"]},
                   "experiment_cfg": cfg[experiment], "pool": {"sets": sets, "n": len(pool), "excluded": excluded},
                   "n_real_train": len(real), "n_val": len(val), "n_test": len(test), "arms": results,
                   "mlflow_run_id": job.run_id, "world_size": world.world_size}
        curves_png = out_path.parent / "curves.png"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        _save_curves(curves, curves_png, experiment)
        staged = write_json(out_path.with_name(out_path.name + ".tmp"), metrics)
        job.publish(staged, out_path, artifacts=[out_path, curves_png])
    return metrics


def _slug(name: str) -> str:
    return name.replace("->", "_then_").replace("+", "_plus_").replace("%", "pct")


def _save_curves(curves: dict[str, dict], path: Path, experiment: str) -> None:
    """One panel per arm: train and val BCE over steps."""
    panels = [Panel(f"{experiment}: {name}", [series(curve.get("history", []), "loss", "train BCE"),
                                              series(curve.get("evals", []), "val/loss", "val BCE", marker="o")],
                    ylabel="BCE") for name, curve in curves.items()]
    plot_curves(path, panels, panel_size=(3.2, 2.8), dpi=90)
