"""Stage ``train_ldm``: the report-conditioned (or unconditional) latent diffusion model (Cheff §5, §7.3.2).

A diffusers ``UNet2DConditionModel`` learns ε-prediction on cached, scaled autoencoder latents (z drawn from the cached
posterior N(mean, std²) each step), with cross-attention to the frozen text tower's token embeddings. Reports are
encoded per batch with the frozen encoder (cheap next to the UNet step, and bit-identical after a resume because the
batch is a function of the step). Classifier-free guidance training replaces a condition by the empty-text embedding
with probability ``cfg_dropout``. EMA weights become the final weights. ``conditioning: none`` trains the
unconditional variant (a ``UNet2DModel``) with the same function.

How to load the result with plain diffusers code: see :mod:`cxrgen.models.diffusion`; the whole cascade:
:class:`cxrgen.pipeline.CxrPipeline`. The sample grid of the saved model is rule ``sample_ldm_grid``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrgen.pipeline import write_pipeline_json
from cxrgen.report.figures import plot_loss_history
from cxrgen.train.data import conditioning_texts
from cxrgen.train.job import Trained, tracked_training, write_json
from cxrgen.train.latent_diffusion import LatentDiffusionTrainer
from cxrgen.train.loop import seed_everything
from cxrgen.train.sections import loop_config

log = logging.getLogger(__name__)


def _training_rows(cache, cfg: dict, splits: list[str], views: list[str] | None,
                   keep_ids: set[str] | None) -> pd.DataFrame:
    """Cache rows of ``splits``/``views`` (restricted to ``keep_ids`` if given, e.g. the LNFS-kept images) with their
    conditioning ``text``; without text conditioning or with ``require_report`` false every row stays."""
    rows = cache.rows(splits, views).copy()
    if keep_ids is not None:
        rows = rows[rows["image_id"].isin(keep_ids)]
    conditional = cfg["conditioning"] == "text"
    rows["text"] = conditioning_texts(rows, cfg["unreported_text"]).to_numpy() if conditional else ""
    if conditional and cfg["require_report"]:
        rows = rows[rows["text"].str.len() > 0]
    return rows.reset_index(drop=True)


def _scaled_latents(cache, rows, with_std: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    positions = rows["row"].to_numpy()
    scale = cache.scaling_factor
    mean = torch.from_numpy(np.asarray(cache.mean[positions], dtype=np.float32)) * scale
    std = torch.from_numpy(np.asarray(cache.std[positions], dtype=np.float32)) * scale if with_std else None
    return mean, std


def train_ldm(*, latents_dir: Path | str, ae_dir: Path | str, clip_dir: Path | str | None, cfg: dict, seed: int,
              out_dir: Path | str, state_dir: Path | str, tracking_json: Path | str | None = None,
              job_name: str = "train_ldm", sr_dir: Path | str | None = None,
              keep_ids: set[str] | None = None, stop_after_steps: int | None = None) -> dict:
    """Train the LDM of config section ``ldm`` on the latent cache ``latents_dir`` (rule cache_latents, made by the
    autoencoder ``ae_dir``; a stale cache raises) conditioned on the text tower in ``clip_dir`` (rule train_clip;
    unused and may be ``None`` when ``ldm.conditioning`` is ``none``). ``keep_ids`` restricts training to those image
    ids (the LNFS-kept images of rule filter_noise); ``None`` = all.

    Writes ``out_dir`` atomically (``<out_dir>.tmp`` then rename): ``unet/`` (EMA weights), ``unet_raw/`` (if
    ``save_raw``), ``scheduler/`` (DDPMScheduler), ``cxrgen_pipeline.json`` (relative paths to the AE, text encoder and
    optional SR dir ``sr_dir``, conditioning), ``metrics.json``, ``loss.png``. Resumable state
    (checkpoints) goes to ``state_dir``; rerunning resumes. ``tracking_json`` (rule init_tracking) → an MLflow child run
    ``job_name``; ``None`` disables tracking. Returns the metrics dict.

    Data parallel: run on every rank by :func:`cxrgen.train.distributed.launch` (``launch(train_ldm, n, **kwargs)``;
    the arguments must pickle) or torchrun, the ranks train one model together, each on its slice of every global
    batch of ``batch_size`` items, and end with the weights of a single-process run (up to float summation order).
    Rank 0 alone opens the MLflow run, computes the validation loss and writes ``out_dir``; the
    other ranks return ``{"rank": r, "steps": n}`` once training is done.
    """
    from cxrgen.data.latents import load_latents

    out_dir, state_dir = Path(out_dir), Path(state_dir)
    conditional = cfg["conditioning"] == "text"
    cache = load_latents(latents_dir, ae_dir=ae_dir)
    views = list(cfg["views"]) or None
    train_rows = _training_rows(cache, cfg, list(cfg["train_splits"]), views, keep_ids)
    val_rows = _training_rows(cache, cfg, list(cfg["val_splits"]), views, None)
    if train_rows.empty:
        raise ValueError(f"no training latents in splits {cfg['train_splits']} / views {views} of {latents_dir}")
    train_mean, train_std = _scaled_latents(cache, train_rows, with_std=cfg["latent_sampling"] == "posterior")
    val_mean, _ = _scaled_latents(cache, val_rows, with_std=False)
    texts, val_texts = train_rows["text"].tolist(), val_rows["text"].tolist()

    text_encoder = None
    if conditional:
        from cxrgen.models.clip import load_text_encoder

        if clip_dir is None:
            raise ValueError("ldm.conditioning is 'text': pass clip_dir (the text encoder from rule train_clip)")
        text_encoder = load_text_encoder(clip_dir)

    loop = loop_config(cfg, seed, stop_after_steps=stop_after_steps)
    seed_everything(loop.seed)
    trainer = LatentDiffusionTrainer(cfg, latent_mean=train_mean, latent_std=train_std, texts=texts,
                                     text_encoder=text_encoder)

    def publish(trained: Trained) -> dict:
        job, result = trained.job, trained.result
        tmp = job.staging(out_dir)
        if cfg["save_raw"]:
            trainer.unet.save_pretrained(tmp / "unet_raw")
        trainer.ema.copy_to(trainer.unet.parameters())
        trainer.unet.save_pretrained(tmp / "unet")
        trainer.scheduler.save_pretrained(tmp / "scheduler")
        write_pipeline_json(tmp, final_dir=out_dir, conditioning=cfg["conditioning"], ae_dir=ae_dir,
                            clip_dir=clip_dir if conditional else None, sr_dir=sr_dir,
                            extra={"latent_resolution": int(train_mean.shape[-1]), "mlflow_run_id": job.run_id})

        val_loss = trainer.validation_loss(val_mean, val_texts, seed=loop.seed, max_items=int(cfg["val_max_items"]))
        history = job.extra["history"]
        plot_loss_history(history, tmp / "loss.png", title="LDM training loss", ylabel="MSE to the prediction target")
        metrics = {
            "steps": result.steps_done, "resumed_from": result.resumed_from, "n_train": len(train_rows),
            "n_val": len(val_rows), "parameters": sum(p.numel() for p in trainer.unet.parameters()),
            "final_loss": history[-1]["loss"] if history else float("nan"), "val_loss_ema": val_loss,
            "train_seconds_this_run": trained.seconds,
            "seconds_per_step": trained.seconds_per_step,
            "text_encoding_seconds": trainer.text_seconds,
            "latent_shape": list(train_mean.shape[1:]), "conditioning": cfg["conditioning"],
            "mlflow_run_id": job.run_id, "world_size": trained.world.world_size,
        }
        write_json(tmp / "metrics.json", metrics)
        job.log_metrics({"val_loss_ema": val_loss}, result.steps_done)
        job.publish(tmp, out_dir, artifacts=["loss.png", "metrics.json"],
                    tags={"cxrgen.weights": str(out_dir.resolve())})
        return metrics

    params = {"ldm": cfg, "seed": seed, "n_train": len(train_rows), "n_val": len(val_rows)}
    return tracked_training(
        tracking_json, job_name, world=loop.resolved_world(), params=params,
        tags={"cxrgen.stage": f"ldm:{cfg['conditioning']}"},
        state_dir=state_dir, fit=lambda job: trainer.fit(loop, state_dir, on_log=job.record, extra_state=job.extra),
        publish=publish)

