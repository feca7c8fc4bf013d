"""Rule ``train_reid``: the Siamese patient-verification network (Packhäuser et al. 2022) on pairs of real train-split
images of the same vs different pseudonymised patients, with its verification AUC on held-out patients and the
decision threshold the re-identification audit uses (:mod:`cxrgen.evaluate.reidentification`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.evaluate import reidentification as reid
from cxrgen.evaluate.classifier import with_store_root
from cxrgen.evaluate.metrics import auroc
from cxrgen.report.figures import plot_loss_history
from cxrgen.train.data import select_rows
from cxrgen.train.distributed import current_world
from cxrgen.train.job import Trained, tracked_training, write_json
from cxrgen.train.tracking import config_digest


def split_rows(index: pd.DataFrame, split: str, cfg: dict, store_root: Path | str) -> pd.DataFrame:
    """Rows of ``split`` in ``cfg["views"]`` (empty = all) with a pseudonymous patient id, by image id."""
    rows = select_rows(index, splits=[split], views=list(cfg["views"]) or None)
    rows = rows[rows["patient_pid"].notna() & (rows["patient_pid"].astype(str) != "")]
    return with_store_root(rows.sort_values("image_id").reset_index(drop=True), store_root)


def held_out_scores(model, rows: pd.DataFrame, n_pairs: int, seed: int, resolution: int) -> dict | None:
    """Balanced pairs within one held-out split: labels, scores, AUC; None without a patient with two images."""
    if rows.empty or reid.pair_counts(rows["patient_pid"])["patients_with_2plus_images"] == 0:
        return None
    pairs = reid.patient_pairs(rows["patient_pid"], n_pairs, seed)
    scores = reid.score_pairs(model, reid.PairImages(rows, resolution), pairs)
    return {"labels": pairs[:, 2], "scores": scores, "auc": auroc(pairs[:, 2], scores), "pairs": len(pairs),
            **reid.pair_counts(rows["patient_pid"])}


def train_reid(*, index_path: Path | str, store_root: Path | str, resolution: int, cfg: dict, seed: int,
               state_dir: Path | str, out_dir: Path | str, tracking_json: Path | str | None = None,
               job_name: str = "train_reid", stop_after_steps: int | None = None) -> dict:
    """Train (or resume) the verifier (config section ``reid``) and publish ``out_dir`` atomically.

    Train pairs: the train split's images (views ``reid.views``) by ``patient_pid``; model selection on val pairs.
    Outputs: ``verifier/`` (:class:`~cxrgen.evaluate.reidentification.SiameseVerifier`, ``save_pretrained``),
    ``metrics.json`` (pair counts, val and test verification AUC on pairs within each held-out split, the threshold
    at ``reid.operating_point`` chosen on val and its FPR/TPR on val and test, timings, MLflow run id) and
    ``loss.png``. Data parallel like the other trainers (``launch(train_reid, n, **kwargs)``); rank 0 alone
    validates and publishes, the others return ``{"rank": r, "steps": n}``."""
    state_dir, out_dir = Path(state_dir), Path(out_dir)
    index = pd.read_parquet(index_path)
    train, val, test = (split_rows(index, split, cfg, store_root) for split in ("train", "val", "test"))
    counts = {name: reid.pair_counts(rows["patient_pid"]) for name, rows in (("train", train), ("val", val),
                                                                           ("test", test))}
    if counts["train"]["patients_with_2plus_images"] == 0:
        raise ValueError(f"train_reid: no train-split patient has two images in views {list(cfg['views']) or 'all'};"
                         " same-patient pairs need at least one")
    if counts["val"]["patients_with_2plus_images"] == 0:
        raise ValueError("train_reid: no val-split patient has two images; the decision threshold is chosen on val "
                         "pairs")
    world = current_world()
    params = {"reid": cfg, "resolution": resolution, "seed": seed, **{f"n_{k}": v["images"] for k, v in counts.items()}}
    trained_box: dict = {}

    def fit(job):
        trained, result = reid.train_verifier(train, cfg=cfg, resolution=resolution, seed=seed, state_dir=state_dir,
                                              val_rows=val, extra_state=job.extra,
                                              on_log=lambda m, step: job.log_metrics(m, step, prefix="train/"),
                                              on_eval=job.log_metrics, stop_after_steps=stop_after_steps)
        trained_box["trained"] = trained
        return result

    def publish(done: Trained) -> dict:
        job, trained = done.job, trained_box["trained"]
        n_pairs = int(cfg["eval_pairs"])
        held_out = {name: held_out_scores(trained.model, rows, n_pairs, seed + k, resolution)
                    for k, (name, rows) in enumerate((("val", val), ("test", test)), start=11)}
        chosen = reid.operating_threshold(held_out["val"]["labels"], held_out["val"]["scores"],
                                          str(cfg["operating_point"]), float(cfg["target_fpr"]))
        verification = {name: None if h is None else {
            "auc": h["auc"], "pairs": h["pairs"], "patients": h["patients"],
            "patients_with_2plus_images": h["patients_with_2plus_images"],
            "at_threshold": reid.rates_at(h["labels"], h["scores"], chosen["threshold"])}
            for name, h in held_out.items()}
        metrics = {
            "steps": trained.steps, "resumed_from": trained.resumed_from, "selected_step": trained.selected_step,
            "pair_counts": counts, "resolution": resolution, "threshold": chosen, "verification": verification,
            "parameters": sum(p.numel() for p in trained.model.parameters()),
            "embedding_dim": trained.model.embedding_dim, "train_seconds_this_run": done.seconds,
            "seconds_per_step": done.seconds_per_step,
            "final_train_loss": trained.history[-1]["loss"] if trained.history else None,
            "protocol": ("Siamese verification network (Packhäuser et al. 2022, Sci. Rep. 12): shared residual "
                         f"trunk {dict(cfg['model'])}, |f(a) - f(b)| -> linear -> sigmoid, BCE on balanced pairs "
                         f"of the train split's images ({list(cfg['views']) or 'all views'}); AUC on {n_pairs} "
                         "balanced pairs within each held-out split (patients never seen in training); threshold at "
                         f"{cfg['operating_point']} on val pairs"),
            "mlflow_run_id": job.run_id, "world_size": done.world.world_size,
        }
        tmp = job.staging(out_dir)
        trained.model.save_pretrained(tmp / "verifier", safe_serialization=True)
        write_json(tmp / "metrics.json", metrics)
        plot_loss_history(trained.history, tmp / "loss.png", title=f"re-identification verifier: "
                          f"{counts['train']['images']} train images, {resolution} px", ylabel="pair BCE", log=False)
        job.log_metrics({f"{name}/auc": v["auc"] for name, v in verification.items()
                         if v is not None and v["auc"] is not None and np.isfinite(v["auc"])}, trained.selected_step)
        job.publish(tmp, out_dir, artifacts=["loss.png", "metrics.json"])
        return metrics

    tags = {"snakemake.rule": "train_reid", "config.sha256": config_digest(cfg), "cxrgen.stage": "train_reid"}
    return tracked_training(tracking_json, job_name, world=world, params=params, tags=tags, state_dir=state_dir,
                            fit=fit, publish=publish)
