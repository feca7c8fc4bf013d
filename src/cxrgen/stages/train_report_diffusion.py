"""Stage ``train_report_diffusion``: MedCoDi-M / XGeM's report diffusion model (arXiv 2501.04614 §3.2.2) on the
frozen report VAE's latents, prompted by the X-ray views with multi-prompt training (§2.2) or frontal only (``single``,
the MedCoDi ablation). Library: :mod:`cxrgen.medcodi.text_diffusion`."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from cxrgen.medcodi.bleu import corpus_bleu
from cxrgen.medcodi.text_diffusion import (
    IMAGE_VIEWS,
    ReportDiffusionTrainer,
    condition_options,
    embedding_matrix,
    latent_scale,
    pick_conditions,
    prompt_views,
    sample_latents,
    study_conditions,
    write_manifest,
)
from cxrgen.medcodi.text_vae import load_text_vae
from cxrgen.report.figures import plot_loss_history
from cxrgen.train.job import Trained, tracked_training, write_json
from cxrgen.train.loop import seed_everything
from cxrgen.train.sections import loop_config

log = logging.getLogger(__name__)


def train_report_diffusion(*, studies: Path | str, embeddings: Path | str, vae_dir: Path | str, cfg: dict,
                           prompting: str, seed: int, out_dir: Path | str, state_dir: Path | str,
                           tracking_json: Path | str | None = None, job_name: str = "train_report_diffusion",
                           stop_after_steps: int | None = None) -> dict:
    """Train the report diffusion model of config section ``medcodi.report_diffusion`` with ``prompting`` (multi |
    single) on the study table ``studies`` (rule build_study_table), the prompt embeddings ``embeddings`` (rule
    embed_prompts) and the report VAE ``vae_dir`` (rule train_text_vae, frozen). Training studies need a report and at
    least one prompting view (``single``: the frontal one).

    Writes ``out_dir`` atomically: ``denoiser/`` (EMA weights), ``scheduler/`` (DDPMScheduler), ``report_diffusion.json``
    (relative VAE path, latent scale, prompting, condition dim), ``metrics.json`` (with BLEU-1..4 of reports generated
    for up to ``val_max_items`` held-out studies from all their views), ``samples.json``, ``loss.png``. Resumable state
    in ``state_dir``. Data parallel like :func:`cxrgen.stages.train_ldm.train_ldm` (rank 0 validates and publishes).
    """
    out_dir, state_dir = Path(out_dir), Path(state_dir)
    views = prompt_views(prompting)
    vae = load_text_vae(vae_dir)
    train = study_conditions(studies, embeddings, list(cfg["train_splits"]))
    if train.empty:
        raise ValueError(f"no training studies with a report in splits {cfg['train_splits']} of {studies}")
    options, counts = condition_options({v: embedding_matrix(train, v) for v in IMAGE_VIEWS}, prompting)
    if not bool((counts > 0).any()):
        raise ValueError(f"no training studies with a report and a {' or '.join(views)} view in splits "
                         f"{cfg['train_splits']} of {studies}")
    keep = counts > 0
    train = train[keep.numpy()].reset_index(drop=True)
    options, counts = options[keep], counts[keep]
    means = vae.encode_means(train["report"].tolist())
    scale = latent_scale(means)

    loop = loop_config(cfg, seed, stop_after_steps=stop_after_steps)
    seed_everything(loop.seed)
    trainer = ReportDiffusionTrainer(cfg, means * scale, options, counts)

    def publish(trained: Trained) -> dict:
        job, result = trained.job, trained.result
        tmp = job.staging(out_dir)
        trainer.ema.copy_to(trainer.model.parameters())
        trainer.model.save_pretrained(tmp / "denoiser")
        trainer.scheduler.save_pretrained(tmp / "scheduler")
        write_manifest(tmp, final_dir=out_dir, vae_dir=vae_dir, scale=scale, prompting=prompting,
                       cond_dim=int(options.shape[2]), extra={"mlflow_run_id": job.run_id})
        started_val = time.perf_counter()
        held_out, samples = _held_out_bleu(trainer, vae, scale, studies, embeddings, cfg, prompting, loop.seed)
        write_json(tmp / "samples.json", {"samples": samples[:16]})
        history = job.extra["history"]
        plot_loss_history(history, tmp / "loss.png", title=f"report diffusion loss ({prompting} prompting)",
                          ylabel=f"MSE to {trainer.scheduler.config.prediction_type}")
        metrics = {
            "steps": result.steps_done, "resumed_from": result.resumed_from, "prompting": prompting,
            "n_train": len(train), "latent_scale": scale,
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "final_loss": history[-1]["loss"] if history else float("nan"), "val": held_out,
            "train_seconds_this_run": trained.seconds, "validation_seconds": time.perf_counter() - started_val,
            "seconds_per_step": trained.seconds_per_step,
            "mlflow_run_id": job.run_id, "world_size": trained.world.world_size,
        }
        write_json(tmp / "metrics.json", metrics)
        job.log_metrics({k: v for k, v in held_out.items() if k != "n"}, result.steps_done, prefix="val_")
        job.publish(tmp, out_dir, artifacts=["loss.png", "metrics.json", "samples.json"],
                    tags={"cxrgen.weights": str(out_dir.resolve())})
        return metrics

    params = {"report_diffusion": cfg, "prompting": prompting, "seed": seed, "n_train": len(train),
              "latent_scale": scale}
    return tracked_training(
        tracking_json, job_name, world=loop.resolved_world(), params=params,
        tags={"cxrgen.stage": f"medcodi:report_diffusion:{prompting}"},
        state_dir=state_dir, fit=lambda job: trainer.fit(loop, state_dir, on_log=job.record, extra_state=job.extra),
        publish=publish)


def _held_out_bleu(trainer: ReportDiffusionTrainer, vae, scale: float, studies, embeddings, cfg: dict,
                   prompting: str, seed: int) -> tuple[dict, list[dict]]:
    """BLEU-1..4 of reports generated (EMA weights) for held-out studies prompted with all their prompting views."""
    limit = int(cfg["val_max_items"])
    val = study_conditions(studies, embeddings, list(cfg["val_splits"])) if limit else None
    if val is None or val.empty:
        return {"n": 0}, []
    options, counts = condition_options({v: embedding_matrix(val, v) for v in IMAGE_VIEWS}, prompting)
    usable = (counts > 0).numpy()
    val, options, counts = val[usable].head(limit).reset_index(drop=True), options[usable][:limit], counts[usable][:limit]
    if val.empty:
        return {"n": 0}, []
    all_views = pick_conditions(options, counts, torch.full((len(val),), 1.0 - 1e-6))  # the largest subset
    sample = cfg["sample"]
    trainer.model.eval()
    z = sample_latents(trainer.model, trainer.scheduler.config, all_views, [seed + i for i in range(len(val))],
                       int(sample["steps"]), float(sample["guidance_scale"]), float(sample["eta"]))
    trainer.model.train()
    generated = vae.decode(z.cpu() / scale)
    references = val["report"].tolist()
    scores = corpus_bleu(generated, references)
    samples = [{"study_pid": str(pid), "reference": ref, "generated": gen}
               for pid, ref, gen in zip(val["study_pid"], references, generated, strict=True)]
    return {"n": len(val), **scores}, samples
