"""Rule ``train_dkim``: Diff-CXR's second training stage (arXiv 2410.20165 §3) — the DKIM adapter
(:mod:`cxrgen.models.dkim`) trained on the cached latents with the base LDM frozen.

Stage 1 is rule ``train_ldm`` (the report-conditioned LDM). Here the base UNet's weights never change (no gradients, not
in the optimizer; verified by a hash before and after); the adapter — a copy of the base encoder with zero-initialised
outputs — learns to add disease knowledge (template sentences of the image's labels, embedded by the frozen text
encoder) to the base's skip connections, with the base's ε-prediction loss. The training images and texts are the
base LDM's (section ``ldm``: splits, views, report-less text policy); section ``dkim`` adds the adapter's settings.
Data parallel like rule ``train_ldm`` (:func:`train_dkim`). The sample grid (template prompts without / with DKIM) is
rule ``sample_dkim_grid``, drawn from the saved adapter.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cxrgen.hashing import dir_digest, module_digest
from cxrgen.labels import CHEXPERT_LABELS, label_column
from cxrgen.models.diffusion import cfg_drop_mask, denoise, drop_condition, load_unet
from cxrgen.models.dkim import DkimAdapter, build_controlnet, build_knowledge_bank, knowledge_states, save_dkim
from cxrgen.pipeline import read_pipeline_json
from cxrgen.report.figures import plot_loss_history
from cxrgen.train.job import TrackedJob, Trained, tracked_training, write_json
from cxrgen.train.latent_diffusion import draw_noised, global_draws
from cxrgen.train.loop import (
    LoopConfig,
    LoopResult,
    attach_ema,
    index_batches,
    latest_checkpoint,
    run_training,
    seed_everything,
)
from cxrgen.train.sections import loop_config

log = logging.getLogger(__name__)


class DkimTrainer:
    """Frozen base UNet + trainable adapter: optimizer (AdamW with linear warm-up), EMA and the ε-MSE train step.

    ``states`` [N, F] are the knowledge states of the training latents (:func:`cxrgen.models.dkim.knowledge_states`);
    ``texts`` their conditioning texts. Build after :func:`seed_everything` (the adapter's conditioning path is
    randomly initialised)."""

    def __init__(self, cfg: dict, *, unet, scheduler, text_encoder, adapter: DkimAdapter, latent_mean: torch.Tensor,
                 latent_std: torch.Tensor | None, texts: list[str], states: torch.Tensor):
        self.cfg = cfg
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler, self.text_encoder, self.adapter = scheduler, text_encoder, adapter
        self.mean, self.std, self.texts, self.states = latent_mean, latent_std, texts, states.long()
        params = list(adapter.controlnet.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]),
                                           betas=tuple(cfg["adam_betas"]))
        warmup = int(cfg["warmup_steps"])
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        self.ema = attach_ema("adapter", adapter.controlnet, decay=float(cfg["ema_decay"]))
        with torch.no_grad():
            self.null_tokens, self.null_mask = text_encoder.encode([""])
        self.text_seconds = 0.0

    def _noisy(self, indices: list[int], generator: torch.Generator, ctx=None):
        """Noisy latents, timesteps and targets of ``indices``, drawn as the LDM trainer draws them
        (:func:`~cxrgen.train.latent_diffusion.draw_noised`; for the global batch with several ranks)."""
        return draw_noised(self.scheduler, self.mean, self.std, indices, generator, ctx)

    def _eps(self, noisy, t, indices: list[int], drop: torch.Tensor, device, use_adapter: bool = True):
        started = time.perf_counter()
        with torch.no_grad():
            tokens, mask = self.text_encoder.encode([self.texts[i] for i in indices])
        self.text_seconds += time.perf_counter() - started
        context, mask = drop_condition(tokens, mask, self.null_tokens, self.null_mask, drop)
        noisy, t = noisy.to(device), t.to(device)
        residuals = None
        if use_adapter:
            states = torch.where(drop[:, None], torch.zeros_like(self.states[indices]), self.states[indices])
            residuals = self.adapter.residuals(noisy, t, self.adapter.condition_from_states(states))
        return denoise(self.unet, noisy, t, context.to(device), mask.to(device), residuals)

    def loss(self, indices: list[int], generator: torch.Generator, device, autocast=None, ctx=None) -> torch.Tensor:
        """MSE to the base's prediction target (ε unless the base LDM predicts v or x₀) of base + adapter; randomness
        (posterior sample, t, ε, joint report/knowledge drop) from ``generator``, in the same order as the LDM
        trainer, drawn for the global batch with several ranks (``ctx``, see :meth:`_noisy`)."""
        noisy, t, target = self._noisy(indices, generator, ctx)
        world_size, mine = global_draws(ctx)
        drop = mine(cfg_drop_mask(len(indices) * world_size, float(self.cfg["cfg_dropout"]), generator))
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            eps = self._eps(noisy, t, indices, drop, device)
        return F.mse_loss(eps.float(), target.to(device))

    def train_step(self, indices: list[int], ctx) -> dict[str, float]:
        loss = self.loss(indices, ctx.generator, ctx.device, autocast=ctx.autocast, ctx=ctx)
        grad_norm = ctx.backward_step(loss, self.adapter.controlnet, self.optimizer, self.cfg["grad_clip"])
        return {"loss": float(loss.detach()), "grad_norm": grad_norm, "lr": self.optimizer.param_groups[0]["lr"]}

    def fit(self, loop: LoopConfig, state_dir: Path, *, on_log=None, extra_state: dict | None = None):
        """Run (or resume) the training loop; with several ranks each trains on its slice of every global batch of
        ``batch_size`` items (the frozen base, loaded from the same directory, is the same on every rank)."""
        self.unet.to(loop.resolved_device())

        return run_training(loop, modules={"adapter": self.adapter.controlnet}, optimizers={"adapter": self.optimizer},
                            schedulers={"adapter": self.lr_scheduler}, emas={"adapter": self.ema},
                            loader_for=index_batches(loop, len(self.mean), self.cfg["batch_size"]),
                            train_step=self.train_step, state_dir=Path(state_dir), on_log=on_log,
                            extra_state=extra_state, desc="train_dkim", distributed_ready=True)

    @torch.no_grad()
    def validation_losses(self, mean: torch.Tensor, texts: list[str], states: torch.Tensor, seed: int) -> dict:
        """ε-MSE on held-out latents without and with the adapter, on identical noise and timesteps (no dropout):
        over all items and over the items with at least one positive finding other than "No Finding"."""
        if len(mean) == 0:
            return {"val_loss_base": float("nan"), "val_loss_dkim": float("nan")}
        saved = self.mean, self.std, self.texts, self.states
        self.mean, self.std, self.texts, self.states = mean, None, texts, states.long()
        generator = torch.Generator().manual_seed(seed)
        device = next(self.adapter.controlnet.parameters()).device
        self.adapter.controlnet.eval()
        per_item = {"base": [], "dkim": []}
        try:
            batch = int(self.cfg["batch_size"])
            for start in range(0, len(mean), batch):
                idx = list(range(start, min(len(mean), start + batch)))
                noisy, t, target = self._noisy(idx, generator)
                drop = torch.zeros(len(idx), dtype=torch.bool)
                for name, use in (("base", False), ("dkim", True)):
                    eps = self._eps(noisy, t, idx, drop, device, use_adapter=use)
                    per_item[name].append(((eps.float().cpu() - target) ** 2).flatten(1).mean(1))
        finally:
            self.mean, self.std, self.texts, self.states = saved
            self.adapter.controlnet.train()
        base, dkim = torch.cat(per_item["base"]), torch.cat(per_item["dkim"])
        diseased = _diseased(states, self.adapter.findings)
        out = {"val_loss_base": float(base.mean()), "val_loss_dkim": float(dkim.mean()),
               "n_val_diseased": int(diseased.sum())}
        if diseased.any():
            out["val_loss_diseased_base"] = float(base[diseased].mean())
            out["val_loss_diseased_dkim"] = float(dkim[diseased].mean())
        return out


def _diseased(states: torch.Tensor, findings: list[str]) -> torch.Tensor:
    columns = [i for i, f in enumerate(findings) if f != "No Finding"]
    return (states[:, columns] == 1).any(dim=1) if columns else torch.zeros(len(states), dtype=torch.bool)


def _rows(cache, ldm_cfg: dict, cfg: dict, splits: list[str], keep_ids: set[str] | None) -> pd.DataFrame:
    """The base LDM's rows of ``splits`` (its views, report-less text policy and report requirement, optionally only
    ``keep_ids``) with their conditioning ``text``; with ``dkim.require_labels`` only rows with any known label."""
    from cxrgen.train.data import conditioning_texts

    rows = cache.rows(splits, list(ldm_cfg["views"]) or None).copy()
    if keep_ids is not None:
        rows = rows[rows["image_id"].isin(keep_ids)]
    rows["text"] = conditioning_texts(rows, ldm_cfg.get("unreported_text", "empty")).to_numpy()
    if ldm_cfg["require_report"]:
        rows = rows[rows["text"].str.len() > 0]
    if cfg["require_labels"]:
        rows = rows[rows[[label_column(f) for f in cfg["findings"]]].notna().any(axis=1)]
    return rows.reset_index(drop=True)


def _scaled(cache, rows: pd.DataFrame, with_std: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    positions, scale = rows["row"].to_numpy(), cache.scaling_factor
    mean = torch.from_numpy(np.asarray(cache.mean[positions], dtype=np.float32)) * scale
    std = torch.from_numpy(np.asarray(cache.std[positions], dtype=np.float32)) * scale if with_std else None
    return mean, std


def train_dkim(*, ldm_dir: Path | str, latents_dir: Path | str, cfg: dict, ldm_cfg: dict, seed: int,
               out_dir: Path | str, state_dir: Path | str, clip_dir: Path | str | None = None,
               tracking_json: Path | str | None = None, job_name: str = "train_dkim",
               keep_ids: set[str] | None = None, stop_after_steps: int | None = None) -> dict:
    """Train the DKIM adapter (section ``dkim``) for the text-conditioned LDM in ``ldm_dir`` (rule train_ldm; frozen)
    on the latent cache ``latents_dir`` (rule cache_latents of the LDM's autoencoder; a stale cache raises), with the
    training rows/texts the LDM used (section ``ldm``, restricted to ``keep_ids`` if given, e.g. the LNFS-kept images).
    Templates are embedded by the LDM's text encoder (named in its ``cxrgen_pipeline.json``; ``clip_dir``, if given,
    must be the same directory).

    Writes ``out_dir`` atomically: the adapter as a diffusers model (``config.json`` with the relative path and hash of
    the base LDM, safetensors with the EMA weights; load with :func:`cxrgen.models.dkim.load_dkim`), ``metrics.json``
    (validation ε-MSE without/with the adapter, knowledge coverage, timings), ``loss.png``. Resumable state in
    ``state_dir``; ``tracking_json`` → MLflow child run ``job_name``.

    Data parallel as :func:`cxrgen.stages.train_ldm.train_ldm`: run on every rank by
    :func:`cxrgen.train.distributed.launch` (the arguments must pickle) or torchrun, each rank trains on its slice of
    every global batch and they end with the adapter of a single-process run up to float summation order (which
    AdamW's sign-like first steps of the zero-initialised outputs amplify in a few elements, up to ~lr; measured in
    tests/unit/test_dkim_distributed.py). Rank 0 alone opens the MLflow run, validates and writes ``out_dir``; the
    other ranks return ``{"rank": r, "steps": n}``.
    """
    from diffusers import DDPMScheduler

    from cxrgen.data.latents import load_latents
    from cxrgen.models.clip import load_text_encoder

    ldm_dir, out_dir, state_dir = Path(ldm_dir), Path(out_dir), Path(state_dir)
    info = read_pipeline_json(ldm_dir)
    if info.get("conditioning") != "text" or not info.get("text_encoder"):
        raise ValueError(f"DKIM needs a text-conditioned base LDM; {ldm_dir} has conditioning "
                         f"{info.get('conditioning')!r}")
    text_dir = Path(info["text_encoder"])
    if clip_dir is not None and Path(clip_dir).resolve() != text_dir.resolve():
        raise ValueError(f"clip_dir {clip_dir} is not the text encoder of the base LDM {ldm_dir} ({text_dir})")
    findings = list(cfg["findings"]) or list(CHEXPERT_LABELS)
    cfg = {**cfg, "findings": findings}
    cache = load_latents(latents_dir, ae_dir=info["autoencoder"])
    train_rows = _rows(cache, ldm_cfg, cfg, list(ldm_cfg["train_splits"]), keep_ids)
    val_rows = _rows(cache, ldm_cfg, cfg, list(ldm_cfg["val_splits"]), None).head(int(cfg["val_max_items"]))
    if train_rows.empty:
        raise ValueError(f"no labelled training latents for DKIM in splits {ldm_cfg['train_splits']} of {latents_dir}")
    train_mean, train_std = _scaled(cache, train_rows, with_std=cfg["latent_sampling"] == "posterior")
    val_mean, _ = _scaled(cache, val_rows, with_std=False)
    train_states = torch.from_numpy(knowledge_states(train_rows, findings, cfg["negatives"]).astype(np.int64))
    val_states = torch.from_numpy(knowledge_states(val_rows, findings, cfg["negatives"]).astype(np.int64))

    unet = load_unet(ldm_dir / "unet")
    base_sha = dir_digest(ldm_dir / "unet")
    base_before = module_digest(unet)
    scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(ldm_dir / "scheduler"))
    text_encoder = load_text_encoder(text_dir)
    if int(text_encoder.dim) != int(unet.config.cross_attention_dim):
        raise ValueError(f"text encoder width {text_encoder.dim} ≠ the base UNet's cross-attention dim "
                         f"{unet.config.cross_attention_dim}")
    bank = build_knowledge_bank(text_encoder, findings)

    loop = loop_config(cfg, seed, stop_after_steps=stop_after_steps)
    seed_everything(loop.seed)
    adapter = DkimAdapter(build_controlnet(unet, len(findings), int(cfg["cond_channels"])), bank, findings,
                          cfg["negatives"], float(cfg["conditioning_scale"]))
    trainer = DkimTrainer(cfg, unet=unet, scheduler=scheduler, text_encoder=text_encoder, adapter=adapter,
                          latent_mean=train_mean, latent_std=train_std, texts=train_rows["text"].tolist(),
                          states=train_states)

    previous = latest_checkpoint(state_dir)
    if previous is not None:
        saved = torch.load(previous, map_location="cpu", weights_only=False).get("extra", {})
        if saved.get("base_unet_sha") != base_sha:
            raise ValueError(f"the checkpoints in {state_dir} belong to base UNet {saved.get('base_unet_sha')}, not "
                             f"{base_sha} ({ldm_dir}); delete {state_dir} to retrain the adapter")

    def fit(job: TrackedJob) -> LoopResult:
        job.extra["base_unet_sha"] = base_sha
        result = trainer.fit(loop, state_dir, on_log=job.record, extra_state=job.extra)
        if module_digest(trainer.unet) != base_before:
            raise RuntimeError("the base UNet changed during DKIM training (it must stay frozen)")
        return result

    def publish(trained: Trained) -> dict:
        job, result = trained.job, trained.result
        tmp = job.staging(out_dir)
        trainer.ema.copy_to(adapter.controlnet.parameters())
        adapter.controlnet.eval()
        val = trainer.validation_losses(val_mean, val_rows["text"].tolist(), val_states, seed=loop.seed)
        adapter.cpu()
        save_dkim(adapter, tmp, {
            "base_ldm": os.path.relpath(ldm_dir.resolve(), out_dir.resolve()), "base_unet_sha": base_sha,
            "text_encoder": os.path.relpath(text_dir.resolve(), out_dir.resolve()),
            "text_encoder_sha": dir_digest(text_dir), "cfg": cfg, "mlflow_run_id": job.run_id})
        history = job.extra["history"]
        plot_loss_history(history, tmp / "loss.png", title="DKIM adapter training (base LDM frozen)",
                          ylabel="MSE to the prediction target (base + DKIM)")
        positives = {f: int((train_states[:, i] == 1).sum()) for i, f in enumerate(findings)}
        metrics = {
            "steps": result.steps_done, "resumed_from": result.resumed_from, "n_train": len(train_rows),
            "n_val": len(val_rows), "adapter_parameters": sum(p.numel() for p in adapter.controlnet.parameters()),
            "base_parameters": sum(p.numel() for p in unet.parameters()), "base_unet_sha": base_sha,
            "base_unchanged": True, "final_loss": history[-1]["loss"] if history else float("nan"), **val,
            "train_positives_per_finding": positives,
            "train_fraction_diseased": float(_diseased(train_states, findings).float().mean()),
            "train_seconds_this_run": trained.seconds, "seconds_per_step": trained.seconds_per_step,
            "text_encoding_seconds": trainer.text_seconds, "knowledge_tokens": len(findings),
            "mlflow_run_id": job.run_id, "world_size": trained.world.world_size,
        }
        write_json(tmp / "metrics.json", metrics)
        job.log_metrics(val, result.steps_done)
        job.publish(tmp, out_dir, artifacts=["loss.png", "metrics.json"],
                    tags={"cxrgen.weights": str(out_dir.resolve())})
        return metrics

    params = {"dkim": cfg, "seed": seed, "n_train": len(train_rows), "n_val": len(val_rows),
              "base_unet_sha": base_sha}
    return tracked_training(tracking_json, job_name, world=loop.resolved_world(), params=params,
                            tags={"cxrgen.stage": "dkim"}, state_dir=state_dir, fit=fit, publish=publish)

