"""Stage ``train_icu_predictor``: one DDL-CXR prediction arm (ehr | ehr_last_cxr | ddl_cxr) × seed for in-hospital
mortality and the 25 phenotypes (arXiv 2410.17918, prediction stage; library: :mod:`cxrgen.icu.predictor`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrgen.icu.inputs import (
    PREDICTIONS_FILE,
    cache_rows,
    last_image_bin,
    load_ehr,
    prediction_window,
    read_stays,
    scaled_latents,
    task_columns,
)
from cxrgen.icu.predictor import PredictorTrainer, StayData, arm_inputs
from cxrgen.report.figures import plot_loss_history
from cxrgen.train.job import Trained, tracked_training, write_json
from cxrgen.train.loop import seed_everything
from cxrgen.train.sections import loop_config

log = logging.getLogger(__name__)


def _generated(path: Path | str, stay_keys: list[str]) -> torch.Tensor:
    with np.load(path, allow_pickle=False) as data:
        keys, latents = np.asarray(data["stay_keys"]).astype(str), np.asarray(data["latents"], dtype=np.float32)
    position = {k: i for i, k in enumerate(keys.tolist())}
    missing = [k for k in stay_keys if k not in position]
    if missing:
        raise KeyError(f"{len(missing)} stay(s) have no generated latent in {path}, e.g. {missing[:3]}; rerun rule "
                       "generate_ddl_latents")
    return torch.from_numpy(latents[[position[k] for k in stay_keys]])


def stay_data(cohort_dir, arm: str, *, latents_dir=None, ae_dir=None, generated_path=None
              ) -> tuple[StayData, pd.DataFrame, list[str], tuple[int, int, int]]:
    """The arm's inputs for every stay of stays.parquet: (data, stays, task columns, latent shape)."""
    use_last, use_generated = arm_inputs(arm)
    stays = read_stays(cohort_dir)
    ehr = load_ehr(cohort_dir)
    keys = stays["stay_key"].astype(str).tolist()
    tasks = task_columns(stays)
    _, end = prediction_window(stays, ehr.hours)
    last = generated = None
    latent_shape = (4, 8, 8)  # unused by the ehr arm (its patchifiers never see a latent)
    if use_last or use_generated:
        from cxrgen.data.latents import load_latents

        if latents_dir is None:
            raise ValueError(f"arm {arm} fuses CXR latents: pass latents_dir and ae_dir")
        cache = load_latents(latents_dir, ae_dir=ae_dir)
        last, _ = scaled_latents(cache, cache_rows(cache, stays["last_image_id"].tolist()), with_std=False)
        latent_shape = tuple(int(s) for s in last.shape[1:])
    if use_generated:
        if generated_path is None:
            raise ValueError("arm ddl_cxr fuses the generated latents: pass generated_path (rule generate_ddl_latents)")
        generated = _generated(generated_path, keys)
        if tuple(generated.shape[1:]) != latent_shape:
            raise ValueError(f"generated latents {tuple(generated.shape[1:])} != cache latents {latent_shape}")
    # the predictor sees the whole series up to the prediction time (the LDM saw the window since the last image)
    data = StayData(values=ehr.values, static=ehr.static, rows=ehr.rows(keys), start=np.zeros_like(end), end=end,
                    targets=stays[tasks].to_numpy(np.float32), splits=stays["split"].to_numpy(),
                    last_latent=last, generated_latent=generated)
    return data, stays, tasks, latent_shape


def train_icu_predictor(*, cohort_dir: Path | str, arm: str, cfg: dict, seed: int, out_dir: Path | str,
                        state_dir: Path | str, latents_dir: Path | str | None = None,
                        ae_dir: Path | str | None = None, generated_path: Path | str | None = None,
                        tracking_json: Path | str | None = None, job_name: str | None = None,
                        stop_after_steps: int | None = None) -> dict:
    """Train arm ``arm`` with seed ``seed`` (config section ``icu.predictor``) and write ``out_dir``: ``model/``
    (IcuPredictor), ``predictions.parquet`` (stay_key, split, arm, seed, hours_since_last_image, last_image_bin,
    ``p_<task>`` probability and ``y_<task>`` truth per task, for the stays of ``cfg.predict_splits``),
    ``metrics.json``, ``loss.png``. ``latents_dir``/``ae_dir``: the latent cache (arms with a CXR);
    ``generated_path``: latents.npz of rule generate_ddl_latents (arm ddl_cxr). Resumable in ``state_dir``; data
    parallel like train_ldm (rank 0 alone predicts and publishes)."""
    out_dir, state_dir = Path(out_dir), Path(state_dir)
    data, stays, tasks, latent_shape = stay_data(cohort_dir, arm, latents_dir=latents_dir, ae_dir=ae_dir,
                                                 generated_path=generated_path)
    loop = loop_config(cfg, seed, stop_after_steps=stop_after_steps)
    seed_everything(loop.seed)
    trainer = PredictorTrainer(cfg, arm, data, latent_shape=latent_shape)

    def publish(trained: Trained) -> dict:
        job, result = trained.job, trained.result
        tmp = job.staging(out_dir)
        trainer.model.save_pretrained(tmp / "model")
        chosen = np.flatnonzero(np.isin(data.splits, list(cfg["predict_splits"])))
        probabilities = trainer.predict(chosen, int(cfg["batch_size"]))
        frame = pd.DataFrame({"stay_key": stays["stay_key"].to_numpy()[chosen], "split": data.splits[chosen],
                              "arm": arm, "seed": int(seed),
                              "hours_since_last_image": stays["hours_since_last_image"].to_numpy(np.float64)[chosen]})
        frame["last_image_bin"] = (stays["last_image_bin"].to_numpy()[chosen] if "last_image_bin" in stays
                                   else last_image_bin(frame["hours_since_last_image"]))
        for k, task in enumerate(tasks):
            frame[f"p_{task}"] = probabilities[:, k].astype(np.float64)
            frame[f"y_{task}"] = data.targets.numpy()[chosen, k].astype(np.int64)
        frame.to_parquet(tmp / PREDICTIONS_FILE, index=False)
        history = job.extra["history"]
        plot_loss_history(history, tmp / "loss.png", title=f"ICU predictor ({arm}) training loss",
                          ylabel="BCE (pos-weighted)")
        metrics = {"arm": arm, "seed": int(seed), "steps": result.steps_done, "resumed_from": result.resumed_from,
                   "n_train": len(trainer.train_index), "n_predicted": len(chosen), "tasks": tasks,
                   "pos_weight": trainer.pos_weight.tolist(),
                   "parameters": sum(p.numel() for p in trainer.model.parameters()),
                   "final_loss": history[-1]["loss"] if history else float("nan"),
                   "train_seconds_this_run": trained.seconds, "seconds_per_step": trained.seconds_per_step,
                   "mlflow_run_id": job.run_id, "world_size": trained.world.world_size}
        write_json(tmp / "metrics.json", metrics)
        job.publish(tmp, out_dir, artifacts=["loss.png", "metrics.json", PREDICTIONS_FILE],
                    tags={"cxrgen.weights": str(out_dir.resolve())})
        return metrics

    params = {"icu_predictor": cfg, "arm": arm, "seed": seed, "n_train": len(trainer.train_index)}
    return tracked_training(
        tracking_json, job_name or f"train_icu_predictor:{arm}:{seed}", world=loop.resolved_world(), params=params,
        tags={"cxrgen.stage": f"ddl_cxr:predictor:{arm}"},
        state_dir=state_dir, fit=lambda job: trainer.fit(loop, state_dir, on_log=job.record, extra_state=job.extra),
        publish=publish)
