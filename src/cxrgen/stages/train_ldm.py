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
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cxrgen.models.diffusion import (
    build_unet,
    cfg_drop_mask,
    denoise,
    diffusion_target,
    drop_condition,
    make_train_scheduler,
)
from cxrgen.pipeline import write_pipeline_json
from cxrgen.report.figures import plot_loss_history
from cxrgen.train.data import conditioning_texts
from cxrgen.train.job import tracked_job, write_json
from cxrgen.train.loop import LoopConfig, attach_ema, index_batches, run_training, seed_everything
from cxrgen.train.sections import loop_config

log = logging.getLogger(__name__)


class LatentDiffusionTrainer:
    """Model, optimizer, EMA and train step for latents (in memory, scaled) and their report texts.

    ``text_encoder`` has ``encode(texts) -> (tokens [B,L,D], mask [B,L])`` and ``dim`` (cxrgen.models.clip), or is
    ``None`` for ``conditioning: none``. Build after :func:`seed_everything` so initial weights are reproducible.
    """

    def __init__(self, cfg: dict, *, latent_mean: torch.Tensor, latent_std: torch.Tensor | None, texts: list[str],
                 text_encoder=None):
        self.cfg = cfg
        self.conditional = cfg["conditioning"] == "text"
        if self.conditional and text_encoder is None:
            raise ValueError("ldm.conditioning is 'text' but no text encoder was given")
        self.mean, self.std, self.texts = latent_mean, latent_std, texts
        self.text_encoder = text_encoder if self.conditional else None
        self.scheduler = make_train_scheduler(cfg["schedule"])
        channels, size = int(latent_mean.shape[1]), int(latent_mean.shape[-1])
        self.unet = build_unet(cfg["unet"], latent_channels=channels, sample_size=size,
                               cross_attention_dim=int(text_encoder.dim) if self.conditional else None)
        # Cheff §7.3: Adam (AdamW with weight_decay 0 is the same update)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=float(cfg["lr"]),
                                           weight_decay=float(cfg["weight_decay"]))
        self.ema = attach_ema("unet", self.unet, decay=float(cfg["ema_decay"]))
        self.null_tokens = self.null_mask = None
        if self.conditional:
            with torch.no_grad():
                self.null_tokens, self.null_mask = text_encoder.encode([""])
        self.text_seconds = 0.0

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        started = time.perf_counter()
        with torch.no_grad():
            tokens, mask = self.text_encoder.encode(texts)
        self.text_seconds += time.perf_counter() - started
        return tokens, mask

    def loss(self, indices: list[int], generator: torch.Generator, device: torch.device,
             drop: torch.Tensor | None = None, autocast=None, ctx=None) -> torch.Tensor:
        """MSE to the prediction target (ε, v or x₀) for the given items; all randomness (posterior sample, t, ε, CFG
        drop) from ``generator``, in this order.

        ``ctx`` (the loop's :class:`~cxrgen.train.loop.TrainContext`) with several ranks: ``indices`` are this rank's
        share of the step's global batch; every draw is made for the whole global batch, as one process makes it, and
        this rank keeps its rows (``ctx.local``), so the ranks together use the single-process run's random numbers."""
        world_size = ctx.world_size if ctx is not None else 1
        mine = ctx.local if ctx is not None else (lambda drawn: drawn)
        n, shape = len(indices) * world_size, tuple(self.mean.shape[1:])
        z = self.mean[indices]
        if self.std is not None:
            z = z + self.std[indices] * mine(torch.randn((n, *shape), generator=generator))
        t = mine(torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=generator))
        noise = mine(torch.randn((n, *shape), generator=generator))
        noisy = self.scheduler.add_noise(z, noise, t)
        context = mask = None
        if self.conditional:
            if drop is None:
                drop = mine(cfg_drop_mask(n, float(self.cfg["cfg_dropout"]), generator))
            tokens, mask = self.encode([self.texts[i] for i in indices])  # this rank's rows only
            context, mask = drop_condition(tokens, mask, self.null_tokens, self.null_mask, drop)
            context, mask = context.to(device), mask.to(device)
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            eps = denoise(self.unet, noisy.to(device), t.to(device), context, mask)
        target = diffusion_target(self.scheduler, z, noise, t)
        return F.mse_loss(eps.float(), target.to(device))

    def train_step(self, indices: list[int], ctx) -> dict[str, float]:
        loss = self.loss(indices, ctx.generator, ctx.device, autocast=ctx.autocast, ctx=ctx)
        grad_norm = ctx.backward_step(loss, self.unet, self.optimizer, self.cfg["grad_clip"])
        return {"loss": float(loss.detach()), "grad_norm": grad_norm}

    def fit(self, loop: LoopConfig, state_dir: Path, *, on_log=None, extra_state: dict | None = None):
        """Run (or resume) the training loop; with several ranks (:func:`cxrgen.train.distributed.launch`, torchrun)
        each rank trains on its slice of every global batch of ``batch_size`` items."""
        return run_training(loop, modules={"unet": self.unet}, optimizers={"unet": self.optimizer},
                            loader_for=index_batches(loop, len(self.mean), self.cfg["batch_size"]),
                            train_step=self.train_step, state_dir=Path(state_dir), emas={"unet": self.ema},
                            on_log=on_log, extra_state=extra_state, desc="train_ldm", distributed_ready=True)

    @torch.no_grad()
    def validation_loss(self, mean: torch.Tensor, texts: list[str], seed: int, max_items: int) -> float:
        """MSE to the prediction target on held-out latents with fixed noise/timesteps (no CFG drop), batches of ``batch_size``."""
        if len(mean) == 0:
            return float("nan")
        saved = self.mean, self.std, self.texts
        self.mean, self.std, self.texts = mean[:max_items], None, texts[:max_items]
        generator = torch.Generator().manual_seed(seed)
        device = next(self.unet.parameters()).device
        self.unet.eval()
        try:
            losses = []
            batch = int(self.cfg["batch_size"])
            for start in range(0, len(self.mean), batch):
                idx = list(range(start, min(len(self.mean), start + batch)))
                drop = torch.zeros(len(idx), dtype=torch.bool)
                losses.append(float(self.loss(idx, generator, device, drop=drop)) * len(idx))
            return sum(losses) / len(self.mean)
        finally:
            self.mean, self.std, self.texts = saved
            self.unet.train()


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
    params = {"ldm": cfg, "seed": seed, "n_train": len(train_rows), "n_val": len(val_rows)}
    world = loop.resolved_world()
    tags = {"cxrgen.stage": f"ldm:{cfg['conditioning']}", "cxrgen.world_size": str(world.world_size)}
    with tracked_job(tracking_json, job_name, params=params, tags=tags, state_dir=state_dir,
                     main=world.is_main) as job:
        started = time.perf_counter()
        result = trainer.fit(loop, state_dir, on_log=job.record, extra_state=job.extra)
        train_seconds = time.perf_counter() - started
        if not world.is_main:  # rank 0 alone validates and writes
            return {"rank": world.rank, "steps": result.steps_done}

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
            "train_seconds_this_run": train_seconds,
            "seconds_per_step": train_seconds / max(1, result.steps_done - (result.resumed_from or 0)),
            "text_encoding_seconds": trainer.text_seconds,
            "latent_shape": list(train_mean.shape[1:]), "conditioning": cfg["conditioning"],
            "mlflow_run_id": job.run_id, "world_size": world.world_size,
        }
        write_json(tmp / "metrics.json", metrics)
        job.log_metrics({"val_loss_ema": val_loss}, result.steps_done)
        job.publish(tmp, out_dir, artifacts=["loss.png", "metrics.json"],
                    tags={"cxrgen.weights": str(out_dir.resolve())})
    return metrics

