"""Stage ``train_medcodi_ldm``: a MedCoDi-M / XGeM image LDM for one view (frontal or lateral) with multi-prompt
(paper §2.2) or single-prompt (report only: the paper's MedCoDi ablation) conditioning on the frozen prompt encoders'
embeddings (library: :mod:`cxrgen.medcodi.ldm`, :mod:`cxrgen.medcodi.prompting`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cxrgen.medcodi.ldm import load_embeddings, manifest, save_view_ldm, view_trainer, view_training_data
from cxrgen.medcodi.prompting import MultiPromptConditioner, prompt_modalities
from cxrgen.report.figures import plot_loss_history
from cxrgen.train.job import Trained, tracked_training, write_json
from cxrgen.train.loop import seed_everything
from cxrgen.train.sections import loop_config

log = logging.getLogger(__name__)


def train_medcodi_ldm(*, studies: Path | str, embeddings: Path | str, latents_dir: Path | str, ae_dir: Path | str,
                      cfg: dict, view: str, prompting: str, seed: int, out_dir: Path | str, state_dir: Path | str,
                      tracking_json: Path | str | None = None, job_name: str = "train_medcodi_ldm",
                      stop_after_steps: int | None = None) -> dict:
    """Train the ``view`` LDM of config section ``medcodi.ldm`` with ``prompting`` (multi | single) on the studies of
    ``studies`` (rule build_study_table) that have an image of that view in the latent cache ``latents_dir`` (made by
    the autoencoder ``ae_dir``; a stale cache raises), prompted by ``embeddings`` (rule embed_prompts).

    Writes ``out_dir`` atomically: ``unet/`` (EMA weights), ``scheduler/``, ``medcodi_ldm.json``, ``metrics.json``,
    ``loss.png``. Resumable state in ``state_dir``. Data parallel like :func:`cxrgen.stages.train_ldm.train_ldm`
    (``launch(train_medcodi_ldm, n, **kwargs)``; the subset and CFG draws are made for the global batch; rank 0 alone
    validates and publishes, the other ranks return ``{"rank": r, "steps": n}``)."""
    from cxrgen.data.latents import load_latents

    out_dir, state_dir = Path(out_dir), Path(state_dir)
    cache = load_latents(latents_dir, ae_dir=ae_dir)
    table = pd.read_parquet(studies)
    prompts = load_embeddings(embeddings)
    common = {"view": view, "prompting": prompting}
    train = view_training_data(table, prompts, cache, splits=cfg["train_splits"],
                               with_std=cfg["latent_sampling"] == "posterior", **common)
    val = view_training_data(table, prompts, cache, splits=cfg["val_splits"], with_std=False, **common)
    if len(train) == 0:
        raise ValueError(f"no {view} training images with a {prompting}-prompt in splits {cfg['train_splits']} of "
                         f"{studies}")

    loop = loop_config(cfg, seed, stop_after_steps=stop_after_steps)
    seed_everything(loop.seed)
    trainer = view_trainer(cfg, train, **common)

    def publish(trained: Trained) -> dict:
        job, result = trained.job, trained.result
        tmp = job.staging(out_dir)
        trainer.ema.copy_to(trainer.unet.parameters())
        latent_shape = list(train.mean.shape[1:])
        info = manifest(dim=trainer.conditioner.dim, latent_shape=latent_shape, scaling_factor=cache.scaling_factor,
                        ae_dir=ae_dir, out_dir=out_dir, extra={"mlflow_run_id": job.run_id}, **common)
        save_view_ldm(trainer, tmp, info)
        val_loss = float("nan")
        if len(val):
            n_val = min(len(val), int(cfg["val_max_items"]))
            val_conditioner = MultiPromptConditioner(val.embeddings[:n_val], prompt_modalities(view, prompting),
                                                     prompting, 0.0)
            val_loss = trainer.validation_loss(val.mean, [], seed=loop.seed, max_items=n_val,
                                               conditioner=val_conditioner)
        history = job.extra["history"]
        plot_loss_history(history, tmp / "loss.png", title=f"MedCoDi-M {view} LDM ({prompting}-prompt) loss",
                          ylabel="MSE to the prediction target")
        metrics = {
            "steps": result.steps_done, "resumed_from": result.resumed_from, "n_train": len(train),
            "n_val": len(val), "skipped_no_prompt": train.skipped_no_prompt + val.skipped_no_prompt,
            "parameters": sum(p.numel() for p in trainer.unet.parameters()),
            "final_loss": history[-1]["loss"] if history else float("nan"), "val_loss_ema": val_loss,
            "train_seconds_this_run": trained.seconds, "seconds_per_step": trained.seconds_per_step,
            "latent_shape": latent_shape, "embedding_dim": trainer.conditioner.dim, "mlflow_run_id": job.run_id,
            "world_size": trained.world.world_size, **common,
        }
        write_json(tmp / "metrics.json", metrics)
        job.log_metrics({"val_loss_ema": val_loss}, result.steps_done)
        job.publish(tmp, out_dir, artifacts=["loss.png", "metrics.json"],
                    tags={"cxrgen.weights": str(out_dir.resolve())})
        return metrics

    params = {"medcodi_ldm": cfg, "seed": seed, "n_train": len(train), "n_val": len(val), **common}
    return tracked_training(
        tracking_json, job_name, world=loop.resolved_world(), params=params,
        tags={"cxrgen.stage": f"medcodi:ldm:{view}-{prompting}"},
        state_dir=state_dir, fit=lambda job: trainer.fit(loop, state_dir, on_log=job.record, extra_state=job.extra),
        publish=publish)
