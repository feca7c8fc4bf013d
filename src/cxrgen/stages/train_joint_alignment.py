"""Stage ``train_joint_alignment``: MedCoDi-M / XGeM's third training stage (arXiv 2501.04614 §2.3, cross-modal
latent alignment): environment encoders and cross-flow attention for the frozen multi-prompt generators (library:
:mod:`cxrgen.medcodi.joint`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrgen.medcodi.joint import PAIRS, JointTrainer, joint_training_data, load_generators, write_manifest
from cxrgen.report.figures import plot_loss_history
from cxrgen.train.job import Trained, tracked_training, write_json
from cxrgen.train.loop import seed_everything
from cxrgen.train.sections import loop_config


def train_joint_alignment(*, studies: Path | str, embeddings: Path | str, latents_dir: Path | str,
                          ae_dir: Path | str, frontal_dir: Path | str, lateral_dir: Path | str,
                          report_dir: Path | str, vae_dir: Path | str, cfg: dict, seed: int, out_dir: Path | str,
                          state_dir: Path | str, tracking_json: Path | str | None = None,
                          job_name: str = "train_joint_alignment", stop_after_steps: int | None = None) -> dict:
    """Train the joint layers (config section ``medcodi.joint``) over the frozen multi-prompt frontal/lateral LDMs
    (rule train_medcodi_ldm), report diffusion model (rule train_report_diffusion) and its VAE ``vae_dir`` on the
    studies of ``cfg["train_splits"]`` that have a frontal image, a lateral image and a report (latents from the cache
    ``latents_dir`` of the autoencoder ``ae_dir``, conditions from ``embeddings``).

    Writes ``out_dir`` atomically: ``alignment/`` (:class:`~cxrgen.medcodi.joint.JointAlignment`,
    ``save_pretrained``), ``joint_alignment.json`` (generator paths), ``metrics.json``, ``loss.png``; resumable state in
    ``state_dir``. Data parallel like the generators' trainers (``launch(train_joint_alignment, n, **kwargs)``: every
    draw is made for the global batch, rank 0 alone publishes; the others return ``{"rank": r, "steps": n}``)."""
    from cxrgen.data.latents import load_latents
    from cxrgen.medcodi.ldm import load_embeddings
    from cxrgen.medcodi.text_vae import load_text_vae

    out_dir, state_dir = Path(out_dir), Path(state_dir)
    generators = load_generators(frontal_dir, lateral_dir, report_dir)
    for view, info in generators.image_manifests.items():
        if info["prompting"] != "multi":
            raise ValueError(f"joint generation needs the multi-prompt {view} LDM; {info['prompting']} given")
    if generators.report_manifest["prompting"] != "multi":
        raise ValueError("joint generation needs the multi-prompt report diffusion model")
    cache = load_latents(latents_dir, ae_dir=ae_dir)
    data = joint_training_data(pd.read_parquet(studies), load_embeddings(embeddings), cache, load_text_vae(vae_dir),
                               float(generators.report_manifest["latent_scale"]), cfg["train_splits"])
    if len(data) == 0:
        raise ValueError(f"no study of splits {cfg['train_splits']} in {studies} has a frontal image, a lateral image "
                         "and a report; joint training needs all three")

    loop = loop_config(cfg, seed, stop_after_steps=stop_after_steps)
    seed_everything(loop.seed)
    trainer = JointTrainer(cfg, generators, data)
    params = {"joint": cfg, "seed": seed, "n_train": len(data)}

    def publish(trained: Trained) -> dict:
        job, result = trained.job, trained.result
        tmp = job.staging(out_dir)
        trainer.joint.save_pretrained(tmp / "alignment")
        write_manifest(tmp, final_dir=out_dir, generator_dirs={"frontal": frontal_dir, "lateral": lateral_dir,
                                                                "report": report_dir, "vae": vae_dir},
                       extra={"mlflow_run_id": job.run_id})
        history = job.extra["history"]
        plot_loss_history(history, tmp / "loss.png", title="MedCoDi-M joint alignment loss (sum of both flows)",
                          ylabel="MSE to the generators' targets")
        gates = {name: float(p.detach().abs().mean()) for name, p in trainer.joint.named_parameters()
                 if name.endswith("gate") or name.endswith("gates")}
        metrics = {
            "steps": result.steps_done, "resumed_from": result.resumed_from, "n_train": len(data),
            "pairs": [list(p) for p in PAIRS],
            "trainable_parameters": sum(p.numel() for p in trainer.joint.parameters()),
            "final_loss": history[-1]["loss"] if history else float("nan"),
            "mean_abs_gate": sum(gates.values()) / max(1, len(gates)),
            "train_seconds_this_run": trained.seconds, "seconds_per_step": trained.seconds_per_step,
            "mlflow_run_id": job.run_id, "world_size": trained.world.world_size,
        }
        write_json(tmp / "metrics.json", metrics)
        job.publish(tmp, out_dir, artifacts=["loss.png", "metrics.json"],
                    tags={"cxrgen.weights": str(out_dir.resolve())})
        return metrics

    return tracked_training(
        tracking_json, job_name, world=loop.resolved_world(), params=params, tags={"cxrgen.stage": "medcodi:joint"},
        state_dir=state_dir, fit=lambda job: trainer.fit(loop, state_dir, on_log=job.record, extra_state=job.extra),
        publish=publish)
