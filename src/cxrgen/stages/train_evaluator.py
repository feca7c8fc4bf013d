"""Rule ``train_evaluator``: the in-domain DenseNet classifier on the real train split, selected on the val split
(:mod:`cxrgen.evaluate.classifier`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.evaluate.classifier import (
    predict_rows,
    save_curve,
    save_evaluator,
    train_classifier,
    with_store_root,
)
from cxrgen.evaluate.metrics import multilabel_scores
from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS
from cxrgen.train.data import select_rows
from cxrgen.train.distributed import current_world
from cxrgen.train.job import tracked_job, write_json
from cxrgen.train.tracking import config_digest

log = logging.getLogger(__name__)


def labelled_rows(index: pd.DataFrame, split: str, cfg: dict) -> pd.DataFrame:
    """Rows of ``split`` (restricted to ``cfg`` views/sources) with at least one known label, by image id."""
    rows = select_rows(index, splits=[split], views=list(cfg["views"]) or None, sources=list(cfg["sources"]) or None)
    return rows[rows[list(LABEL_COLUMNS)].notna().any(axis=1)].reset_index(drop=True)


def train_evaluator(*, index_path: Path | str, store_root: Path | str, resolution: int, cfg: dict, seed: int,
                    state_dir: Path | str, out_dir: Path | str, tracking_json: Path | str | None, job_name: str,
                    stop_after_steps: int | None = None) -> dict:
    """Train (or resume) the evaluator and publish ``out_dir`` atomically.

    Inputs: the unified index + store (``resolution`` px); train = train-split rows with at least one known label,
    val = the same for the val split (model selection and the reported AUROC); ``cfg`` = the validated
    ``evaluator`` section; ``state_dir`` = resumable checkpoints (not an output).
    Outputs in ``out_dir``: ``evaluator.json`` + ``model.safetensors`` (:func:`~cxrgen.evaluate.classifier.
    load_evaluator`), ``metrics.json`` (val AUROC/F1 per finding with micro/macro/weighted averages of the selected
    weights, the selected step, sizes, timings, MLflow run id) and ``loss_curve.png``. Returns the metrics.

    Data parallel: run on every rank by :func:`cxrgen.train.distributed.launch` (``launch(train_evaluator, n,
    **kwargs)``; the arguments must pickle) or torchrun, the ranks train one model on slices of every global batch
    with the global batch's augmentations and batch statistics (:func:`~cxrgen.evaluate.classifier.
    train_classifier`). Rank 0 alone opens the MLflow run, validates, selects and writes ``out_dir``; the other ranks
    return ``{"rank": r, "steps": n}`` once training is done.
    """
    state_dir, out_dir = Path(state_dir), Path(out_dir)
    index = pd.read_parquet(index_path)
    train = with_store_root(labelled_rows(index, "train", cfg), store_root)
    val = with_store_root(labelled_rows(index, "val", cfg), store_root)
    if train.empty:
        raise ValueError("train_evaluator: no labelled train-split images among the selected "
                         f"views {list(cfg['views']) or 'all'} / sources {list(cfg['sources']) or 'all'}")
    if val.empty:
        log.warning("train_evaluator: no labelled val images; the last weights are kept and no val AUROC is given")
    params = {"evaluator": cfg, "resolution": resolution, "seed": seed, "n_train": len(train), "n_val": len(val)}
    world = current_world()
    tags = {"snakemake.rule": "train_evaluator", "config.sha256": config_digest(cfg),
            "cxrgen.world_size": str(world.world_size)}
    with tracked_job(tracking_json, job_name, params=params, state_dir=state_dir, tags=tags,
                     main=world.is_main) as job:
        trained = train_classifier(train, cfg=cfg, resolution=resolution, seed=seed, state_dir=state_dir,
                                   val_rows=val if len(val) else None, extra_state=job.extra,
                                   on_log=lambda metrics, step: job.log_metrics(metrics, step, prefix="train/"),
                                   on_eval=job.log_metrics, stop_after_steps=stop_after_steps, desc="evaluator")
        if not world.is_main:  # rank 0 alone validates and writes
            return {"rank": world.rank, "steps": trained.steps}
        val_metrics = None
        if len(val):
            val_rows = val.sort_values("image_id").head(int(cfg["val_max_images"]))
            probs = predict_rows(trained.evaluator, val_rows)
            val_metrics = multilabel_scores(val_rows[list(LABEL_COLUMNS)].to_numpy(np.float64), probs,
                                            thresholds=0.5, findings=CHEXPERT_LABELS)
        metrics = {
            "steps": trained.steps, "resumed_from": trained.resumed_from, "selection": trained.selection,
            "selected_step": trained.selected_step, "n_train": len(train), "n_val": len(val),
            "resolution": resolution, "parameters": sum(p.numel() for p in trained.evaluator.model.parameters()),
            "feature_dim": trained.evaluator.feature_dim, "train_seconds_this_run": trained.seconds,
            "seconds_per_step_this_run": trained.seconds / max(1, trained.steps - (trained.resumed_from or 0)),
            "final_train_loss": trained.history[-1]["loss"] if trained.history else None,
            "val": val_metrics, "mlflow_run_id": job.run_id, "world_size": world.world_size,
        }
        tmp = job.staging(out_dir)
        save_evaluator(trained.evaluator, tmp, extra={"selected_step": trained.selected_step, "seed": seed,
                                                       "n_train": len(train)})
        write_json(tmp / "metrics.json", metrics)
        save_curve(trained.history, trained.evals, tmp / "loss_curve.png",
                   title=f"evaluator: {len(train)} train images, {resolution} px")
        if val_metrics:
            final = {f"val_selected/auroc/{k}": v["auroc"] for k, v in val_metrics["per_finding"].items()}
            final.update({f"val_selected/auroc_{k}": v for k, v in val_metrics["auroc"].items()})
            job.log_metrics(final, trained.selected_step)
        job.publish(tmp, out_dir, artifacts=["loss_curve.png", "metrics.json"])
    return metrics
