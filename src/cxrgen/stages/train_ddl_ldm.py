"""Stage ``train_ddl_ldm``: DDL-CXR's EHR-conditioned latent diffusion model (arXiv 2410.17918, LDM stage) on the
project autoencoder's cached latents of the cohort's ordered image pairs (library: :mod:`cxrgen.icu.ddl_ldm`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cxrgen.icu.ddl_ldm import DdlLdmTrainer, pair_data, save_ddl_ldm
from cxrgen.icu.inputs import load_ehr, read_pairs
from cxrgen.report.figures import plot_loss_history
from cxrgen.train.job import Trained, tracked_training, write_json
from cxrgen.train.loop import seed_everything
from cxrgen.train.sections import loop_config

log = logging.getLogger(__name__)


def train_ddl_ldm(*, cohort_dir: Path | str, latents_dir: Path | str, ae_dir: Path | str, cfg: dict, seed: int,
                  out_dir: Path | str, state_dir: Path | str, tracking_json: Path | str | None = None,
                  job_name: str = "train_ddl_ldm", stop_after_steps: int | None = None) -> dict:
    """Train the LDM of config section ``icu.ldm`` on the pairs of ``cohort_dir`` (rule build_icu_cohort) whose images
    are in the latent cache ``latents_dir`` made by the autoencoder ``ae_dir`` (a stale cache raises; a pair image
    missing from the cache raises).

    Writes ``out_dir`` atomically: ``unet/`` + ``ehr_encoder/`` + ``label_head/`` (EMA weights), ``scheduler/``,
    ``ddl_ldm.json`` (relative path to the AE, latent shape and scaling factor, EHR hours), ``metrics.json``,
    ``loss.png``. Resumable state in ``state_dir``. Data parallel exactly like :func:`cxrgen.stages.train_ldm.train_ldm`
    (``launch(train_ddl_ldm, n, **kwargs)``; rank 0 alone validates and publishes).
    """
    from cxrgen.data.latents import load_latents

    out_dir, state_dir = Path(out_dir), Path(state_dir)
    cache = load_latents(latents_dir, ae_dir=ae_dir)
    ehr = load_ehr(cohort_dir)
    pairs = read_pairs(cohort_dir)
    train_pairs = pairs[pairs["split"].isin(list(cfg["train_splits"]))].reset_index(drop=True)
    val_pairs = pairs[pairs["split"].isin(list(cfg["val_splits"]))].reset_index(drop=True)
    if train_pairs.empty:
        raise ValueError(f"no training pairs in splits {cfg['train_splits']} of {cohort_dir}")
    train_data = pair_data(train_pairs, ehr, cache, with_std=cfg["latent_sampling"] == "posterior")
    val_data = pair_data(val_pairs, ehr, cache, with_std=False) if len(val_pairs) else None

    loop = loop_config(cfg, seed, stop_after_steps=stop_after_steps)
    seed_everything(loop.seed)
    trainer = DdlLdmTrainer(cfg, train_data)

    def publish(trained: Trained) -> dict:
        job, result = trained.job, trained.result
        tmp = job.staging(out_dir)
        trainer.ema.copy_to(trainer.model.parameters())
        latent_shape = list(train_data.later_mean.shape[1:])
        manifest = {"model": "ddl_cxr_ldm", "autoencoder": os.path.relpath(Path(ae_dir).resolve(), out_dir.resolve()),
                    "latent_shape": latent_shape, "scaling_factor": cache.scaling_factor, "ehr_hours": ehr.hours,
                    "ehr_columns": ehr.columns, "mlflow_run_id": job.run_id}
        save_ddl_ldm(trainer.model, trainer.scheduler, tmp, manifest)
        val = trainer.evaluate(val_data, seed=loop.seed, max_items=int(cfg["val_max_items"])) if val_data else {}
        history = job.extra["history"]
        plot_loss_history(history, tmp / "loss.png", title="DDL-CXR LDM training loss",
                          ylabel="ε-MSE + λ₁·label BCE + λ₂·contrastive")
        metrics = {
            "steps": result.steps_done, "resumed_from": result.resumed_from, "n_train_pairs": len(train_pairs),
            "n_val_pairs": len(val_pairs), "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "final_loss": history[-1]["loss"] if history else float("nan"),
            **{f"val_{k}_ema": v for k, v in val.items()},
            "train_seconds_this_run": trained.seconds, "seconds_per_step": trained.seconds_per_step,
            "latent_shape": latent_shape, "mlflow_run_id": job.run_id, "world_size": trained.world.world_size,
        }
        write_json(tmp / "metrics.json", metrics)
        job.log_metrics({f"val_{k}_ema": v for k, v in val.items()}, result.steps_done)
        job.publish(tmp, out_dir, artifacts=["loss.png", "metrics.json"], tags={"cxrgen.weights": str(out_dir.resolve())})
        return metrics

    params = {"icu_ldm": cfg, "seed": seed, "n_train_pairs": len(train_pairs), "n_val_pairs": len(val_pairs)}
    return tracked_training(
        tracking_json, job_name, world=loop.resolved_world(), params=params, tags={"cxrgen.stage": "ddl_cxr:ldm"},
        state_dir=state_dir, fit=lambda job: trainer.fit(loop, state_dir, on_log=job.record, extra_state=job.extra),
        publish=publish)
