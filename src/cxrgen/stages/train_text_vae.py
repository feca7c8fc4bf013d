"""Stage ``train_text_vae``: MedCoDi-M / XGeM's report VAE (arXiv 2501.04614 §3.2.2, Optimus-style), from scratch on
the study table's training reports, or a user's pretrained Optimus fine-tuned on them (library:
:mod:`cxrgen.medcodi.text_vae`, :mod:`cxrgen.medcodi.optimus`)."""

from __future__ import annotations

import logging
from pathlib import Path

from cxrgen.medcodi.optimus import LoadedOptimusVAE, optimus_trainer, resolve_pretrained
from cxrgen.medcodi.text_vae import (
    LoadedTextVAE,
    TextVAETrainer,
    WordTokenizer,
    reconstruction_metrics,
    study_reports,
)
from cxrgen.report.figures import plot_loss_history
from cxrgen.train.job import Trained, tracked_training, write_json
from cxrgen.train.loop import seed_everything
from cxrgen.train.sections import loop_config

log = logging.getLogger(__name__)


def train_text_vae(*, studies: Path | str, cfg: dict, seed: int, out_dir: Path | str, state_dir: Path | str,
                   tracking_json: Path | str | None = None, job_name: str = "train_text_vae",
                   stop_after_steps: int | None = None) -> dict:
    """Train the report VAE of config section ``medcodi.text_vae`` on the non-empty reports of ``studies`` (rule
    build_study_table) in ``train_splits``; the tokenizer's vocabulary comes from the same reports. With
    ``pretrained`` set, fine-tune that Optimus checkpoint instead (:mod:`cxrgen.medcodi.optimus`; its own BERT/GPT-2
    vocabularies, the ``model`` sizes other than ``latent_dim`` unused), with the same schedule and loop.

    Writes ``out_dir`` atomically: ``config.json`` + safetensors (:class:`~cxrgen.medcodi.text_vae.TextVAE`, or
    :class:`~cxrgen.medcodi.optimus.OptimusVAE` with ``backend: optimus``), its tokenizer files, ``metrics.json`` (held-out reconstruction, KL, active units), ``reconstructions.json`` (a few
    validation reports and their greedy reconstructions), ``loss.png``. Resumable state in ``state_dir``;
    ``tracking_json`` → an MLflow child run ``job_name``. Data parallel like :func:`cxrgen.stages.train_ldm.train_ldm`
    (``launch(train_text_vae, n, **kwargs)``; rank 0 alone validates and publishes).
    """
    source = resolve_pretrained(cfg["pretrained"])
    out_dir, state_dir = Path(out_dir), Path(state_dir)
    texts = study_reports(studies, list(cfg["train_splits"]))
    val_texts = study_reports(studies, list(cfg["val_splits"]))[:int(cfg["val_max_items"])]
    if not texts:
        raise ValueError(f"no reports in splits {cfg['train_splits']} of {studies}")

    loop = loop_config(cfg, seed, stop_after_steps=stop_after_steps)
    if source is None:
        tokenizer = WordTokenizer.build(texts, min_count=int(cfg["tokenizer"]["min_count"]),
                                        max_vocab=cfg["tokenizer"]["max_vocab"])
        seed_everything(loop.seed)
        trainer = TextVAETrainer(cfg, tokenizer, texts)
    else:
        seed_everything(loop.seed)
        trainer = optimus_trainer(cfg, source, texts)
        tokenizer = trainer.tokenizer

    def publish(trained: Trained) -> dict:
        job, result = trained.job, trained.result
        tmp = job.staging(out_dir)
        trainer.model.save_pretrained(tmp)
        tokenizer.save(tmp)
        loaded = LoadedTextVAE if source is None else LoadedOptimusVAE
        vae = loaded(trainer.model.cpu(), tokenizer)
        held_out = reconstruction_metrics(vae, val_texts)
        shown = val_texts[:int(cfg["examples"])]
        examples = [{"report": t, "reconstruction": r} for t, r in
                    zip(shown, vae.decode(vae.encode_means(shown)), strict=True)] if shown else []
        write_json(tmp / "reconstructions.json", {"examples": examples})
        history = job.extra["history"]
        plot_loss_history(history, tmp / "loss.png", title="report VAE loss",
                          ylabel="token NLL per report + β·KL")
        metrics = {
            "steps": result.steps_done, "resumed_from": result.resumed_from, "n_train": len(texts),
            "n_val": len(val_texts), "vocab_size": len(tokenizer),
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "final_loss": history[-1]["loss"] if history else float("nan"),
            "final_kl": history[-1]["kl"] if history else float("nan"),
            "val": held_out, "train_seconds_this_run": trained.seconds,
            "seconds_per_step": trained.seconds_per_step,
            "mlflow_run_id": job.run_id, "world_size": trained.world.world_size,
            "backend": "gru" if source is None else "optimus",
        }
        if source is not None:
            metrics["pretrained"] = {"path": str(source.path), "step": source.step}
        write_json(tmp / "metrics.json", metrics)
        job.log_metrics({k: v for k, v in held_out.items() if k != "n"}, result.steps_done, prefix="val_")
        job.publish(tmp, out_dir, artifacts=["loss.png", "metrics.json", "reconstructions.json"],
                    tags={"cxrgen.weights": str(out_dir.resolve())})
        return metrics

    params = {"text_vae": cfg, "seed": seed, "n_train": len(texts), "n_val": len(val_texts),
              "vocab_size": len(tokenizer)}
    return tracked_training(
        tracking_json, job_name, world=loop.resolved_world(), params=params, tags={"cxrgen.stage": "medcodi:text_vae"},
        state_dir=state_dir, fit=lambda job: trainer.fit(loop, state_dir, on_log=job.record, extra_state=job.extra),
        publish=publish)
