"""Rule ``train_prompt_encoders``: MedCoDi-M's (XGeM's) shared latent space, §3.2.1 — one image tower for frontal and
lateral films and one text tower for the report impression (an open_clip CLIP model, :mod:`cxrgen.models.clip`),
aligned with the symmetric InfoNCE loss (Eq. 4) in pairwise rounds; the round schedule is documented in
:mod:`cxrgen.medcodi.prompt_encoders`. Cross-modal retrieval recall@k on the test split for every pair and direction.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from cxrgen.medcodi.prompt_encoders import (
    PairRounds,
    PromptEncoders,
    StudyImages,
    embed_studies,
    pair_members,
    pair_name,
    retrieval_by_pair,
    retrieval_markdown,
    save_manifest,
)
from cxrgen.medcodi.studies import study_counts
from cxrgen.models.clip import (
    ClipConfigError,
    clip_optimizer,
    contrastive_loss,
    encode_images,
    encode_texts,
    pretrained_clip,
    save_clip,
    scratch_clip,
    warmup_cosine,
)
from cxrgen.report.figures import Panel, plot_curves, series
from cxrgen.train.job import TrackedJob, Trained, tracked_training, write_json
from cxrgen.train.loop import LoopResult, run_training, seed_everything
from cxrgen.train.sections import loop_config
from cxrgen.train.tracking import config_digest

log = logging.getLogger(__name__)


def train_prompt_encoders(*, studies_path: Path | str, index_path: Path | str, store_root: Path | str,
                          resolution: int, cfg: dict, seed: int, state_dir: Path | str, out_dir: Path | str,
                          tracking_json: Path | str | None, job_name: str,
                          stop_after_steps: int | None = None) -> dict:
    """Train (or resume) the prompt encoders on the train-split studies of the study table and write ``out_dir``
    atomically: a CLIP model directory (:func:`cxrgen.models.clip.save_clip`) + ``prompt_encoders.json`` (load with
    :func:`cxrgen.medcodi.prompt_encoders.load_prompt_encoders`), ``metrics.json`` (recall@1/5/10 for every pair and
    direction on each of ``cfg["eval_splits"]`` with chance levels, steps, seconds per step, MLflow run id),
    ``retrieval.md`` (the test table) and ``loss_curve.png``. ``cfg`` = the validated ``medcodi.prompt_encoders``
    section (towers as the ``clip`` section; ``max_steps`` null = ``epochs`` passes over every pair's studies).
    ``stop_after_steps`` simulates a kill (tests).

    Data parallel like ``train_clip`` (``launch(train_prompt_encoders, n, **kwargs)``): every rank trains the same
    pair at a step on its slice of the global batch and :func:`cxrgen.models.clip.contrastive_loss` contrasts it with
    every rank's rows; rank 0 alone evaluates and writes ``out_dir``."""
    state_dir, out_dir = Path(state_dir), Path(out_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    studies = pd.read_parquet(studies_path)
    train = studies[studies["split"] == "train"].reset_index(drop=True)
    members = pair_members(train)
    if not members:
        raise ValueError("train_prompt_encoders: no train-split study has two of frontal film, lateral film and "
                         f"report ({study_counts(train)['per_combination']}); check medcodi.sources")
    images = StudyImages(pd.read_parquet(index_path), studies, store_root, resolution)

    probe = PairRounds(members, cfg["batch_size"], seed, 1)
    max_steps = cfg["max_steps"] or cfg["epochs"] * probe.steps_per_epoch()
    cfg = {**cfg, "max_steps": int(max_steps)}
    loop_cfg = loop_config(cfg, seed, stop_after_steps=stop_after_steps)
    world = loop_cfg.resolved_world()
    rounds = PairRounds(members, cfg["batch_size"], seed, cfg["max_steps"], rank=world.rank,
                        world_size=world.world_size)

    seed_everything(seed)
    pretrained = bool(cfg["pretrained_path"] or cfg["pretrained_tag"])
    try:
        bundle = pretrained_clip(cfg) if pretrained else scratch_clip(cfg, resolution)
    except ClipConfigError as err:  # the builders name clip.* keys; here they are medcodi.prompt_encoders.*
        message = str(err).replace("'clip.", "'medcodi.prompt_encoders.").replace(" clip.", " medcodi.prompt_encoders.")
        raise ClipConfigError(message) from err
    model = bundle.model
    optimizer = clip_optimizer({"clip": model}, cfg, loop_cfg.resolved_device())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg["warmup_steps"], cfg["max_steps"]))
    max_logit = math.log(cfg["max_logit_scale"])

    def loader_for(start: int):
        for pair, rows in rounds.iterate(start, cfg["max_steps"]):
            batch = {"pair": pair}
            for modality in pair:
                if modality == "report":
                    batch[modality] = train["report"].iloc[rows].tolist()
                else:
                    batch[modality] = torch.stack([images(i) for i in train[f"{modality}_image_id"].iloc[rows]])
            yield batch

    def embed(modality: str, batch: dict, device: torch.device) -> torch.Tensor:
        if modality == "report":
            return encode_texts(bundle, batch[modality])
        return encode_images(bundle, batch[modality].to(device))

    last_loss: dict[str, float] = {}  # each pair's latest loss, so every logged step shows all rounds

    def train_step(batch: dict, ctx) -> dict[str, float]:
        a, b = batch["pair"]
        with ctx.autocast():
            loss = contrastive_loss(embed(a, batch, ctx.device), embed(b, batch, ctx.device),
                                    model.logit_scale.exp(), rank=ctx.rank, world_size=ctx.world_size)
        grad_norm = ctx.backward_step(loss, model, optimizer)
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_logit)
        last_loss[f"loss_{pair_name((a, b))}"] = loss.item()
        return {"loss": loss.item(), **last_loss, "grad_norm": grad_norm,
                "logit_scale": float(model.logit_scale.detach().exp()), "lr": optimizer.param_groups[0]["lr"]}

    def fit(job: TrackedJob) -> LoopResult:
        return run_training(loop_cfg, modules={"clip": model}, optimizers={"clip": optimizer},
                            schedulers={"clip": scheduler}, loader_for=loader_for, train_step=train_step,
                            state_dir=state_dir, on_log=partial(job.record, prefix="train/"), extra_state=job.extra,
                            desc="prompt_encoders", distributed_ready=True)

    def publish(trained: Trained) -> dict:
        job, result = trained.job, trained.result
        model.eval()
        encoders = PromptEncoders(bundle, resolution)
        retrieval = {}
        for split in cfg["eval_splits"]:
            rows = studies[studies["split"] == split].reset_index(drop=True)
            embeddings = embed_studies(encoders, rows, images, cfg["batch_size"])
            retrieval[split] = retrieval_by_pair(embeddings, rows)
            job.log_metrics({f"{split}/{direction}/{k}": v for direction, r in retrieval[split].items()
                             for k, v in r.items() if "chance" not in k}, result.steps_done)
        history = job.extra["history"]
        metrics = {"steps": result.steps_done, "resumed_from": result.resumed_from,
                   "final_train_loss": history[-1]["loss"] if history else None,
                   "train_pairs": {pair_name(p): int(len(r)) for p, r in members.items()},
                   "round_schedule": [pair_name(p) for p in rounds.pairs], "resolution": resolution,
                   "embed_dim": encoders.dim, "parameters": int(sum(p.numel() for p in model.parameters())),
                   "pretrained": pretrained, "seconds_per_step_this_run": trained.seconds_per_step,
                   "train_seconds_this_run": trained.seconds, "retrieval": retrieval,
                   "mlflow_run_id": job.run_id, "world_size": trained.world.world_size}
        tmp = job.staging(out_dir)
        model.cpu()
        save_clip(bundle, tmp)
        save_manifest(tmp, resolution=resolution, embed_dim=encoders.dim, pairs=rounds.pairs)
        write_json(tmp / "metrics.json", metrics)
        tables = [f"## {split}\n\n{retrieval_markdown(r)}" for split, r in retrieval.items()]
        (tmp / "retrieval.md").write_text("# MedCoDi-M (XGeM) prompt encoders: cross-modal retrieval\n\n"
                                          + "\n".join(tables))
        _save_curve(history, rounds.pairs, tmp / "loss_curve.png")
        job.publish(tmp, out_dir, artifacts=["loss_curve.png", "metrics.json", "retrieval.md"])
        return metrics

    params = {"prompt_encoders": cfg, "resolution": resolution, "seed": seed, "model_cfg": bundle.model_cfg,
              "pairs": {pair_name(p): len(r) for p, r in members.items()}}
    return tracked_training(tracking_json, job_name, world=world, params=params, state_dir=state_dir,
                            tags={"snakemake.rule": "train_prompt_encoders", "config.sha256": config_digest(cfg)},
                            fit=fit, publish=publish)


def _save_curve(history: list[dict], pairs, path: Path) -> None:
    """Train InfoNCE of each round's pair (its latest value at each logged step)."""
    lines = [series(history, f"loss_{pair_name(p)}", f"InfoNCE {pair_name(p)}") for p in pairs]
    plot_curves(path, [Panel(lines=lines)], panel_size=(6, 3.5))
