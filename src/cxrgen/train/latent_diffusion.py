"""The latent diffusion trainer shared by the LDM stages (Cheff's report-conditioned LDM, rule ``train_ldm``; the
MedCoDi-M / XGeM view LDMs, rule ``train_medcodi_ldm``).

A diffusers UNet learns the scheduler's prediction target on in-memory, scaled autoencoder latents (z drawn from the
cached posterior N(mean, std²) each step). The condition enters through cross-attention: by default the frozen text
tower's token embeddings of each item's report (empty-text embedding for classifier-free guidance), or whatever a
``conditioner`` hook returns (see :class:`LatentDiffusionTrainer`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

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
from cxrgen.train.loop import LoopConfig, attach_ema, index_batches, run_training


def global_draws(ctx=None) -> tuple[int, Callable[[torch.Tensor], torch.Tensor]]:
    """(world size, ``mine``) for random numbers drawn for a step's global batch: ``mine(drawn)`` keeps this rank's
    rows (``ctx.local`` of the loop's :class:`~cxrgen.train.loop.TrainContext`); without ``ctx``, one process
    keeps every row."""
    if ctx is None:
        return 1, lambda drawn: drawn
    return ctx.world_size, ctx.local


def draw_noised(scheduler, mean: torch.Tensor, std: torch.Tensor | None, indices: list[int],
                generator: torch.Generator, ctx=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents, timesteps, prediction target) of the items ``indices`` of the scaled latents ``mean``: from
    ``generator``, in this order, z = mean + std·N(0, I) (a posterior sample; z = mean when ``std`` is None),
    t ~ U{0, …, T−1}, ε ~ N(0, I); noisy = the ``scheduler``'s forward process at t, target = its prediction target
    (ε, v or x₀). With ``ctx`` and several ranks, ``indices`` are this rank's share of the global batch; every draw
    is made for the whole global batch, as one process makes it, and this rank keeps its rows."""
    world_size, mine = global_draws(ctx)
    n, shape = len(indices) * world_size, tuple(mean.shape[1:])
    z = mean[indices]
    if std is not None:
        z = z + std[indices] * mine(torch.randn((n, *shape), generator=generator))
    t = mine(torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator))
    noise = mine(torch.randn((n, *shape), generator=generator))
    return scheduler.add_noise(z, noise, t), t, diffusion_target(scheduler, z, noise, t)


class Conditioner(Protocol):
    """The conditioning hook of :class:`LatentDiffusionTrainer`: ``dim`` = the cross-attention width, and a call
    ``(indices, n_global, generator, mine, drop) -> (context [b, L, dim], mask [b, L] or None)`` for this rank's items
    ``indices``. Random numbers are drawn from ``generator`` for all ``n_global`` rows of the step's global batch and
    this rank keeps its rows with ``mine``; ``drop`` ([b] bool) forces the classifier-free-guidance drops (None = draw
    them)."""

    dim: int

    def __call__(self, indices: list[int], n_global: int, generator: torch.Generator, mine,
                 drop: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class LatentDiffusionTrainer:
    """Model, optimizer, EMA and train step for latents (in memory, scaled) and their conditions.

    ``text_encoder`` has ``encode(texts) -> (tokens [B,L,D], mask [B,L])`` and ``dim`` (cxrgen.models.clip), or is
    ``None`` for ``conditioning: none``. ``conditioner`` (a :class:`Conditioner`) replaces the text encoder as the
    source of the cross-attention context (``texts``/``text_encoder`` are then unused). ``lr_schedule(optimizer)``
    builds an optional per-step learning-rate scheduler (checkpointed with the run). ``desc`` names the progress bar.
    Build after :func:`seed_everything` so initial weights are reproducible.
    """

    def __init__(self, cfg: dict, *, latent_mean: torch.Tensor, latent_std: torch.Tensor | None, texts: list[str],
                 text_encoder=None, conditioner: Conditioner | None = None,
                 lr_schedule: Callable[[torch.optim.Optimizer], object] | None = None, desc: str = "train_ldm"):
        self.cfg, self.desc = cfg, desc
        self.conditioner = conditioner
        self.conditional = conditioner is not None or cfg["conditioning"] == "text"
        if self.conditional and conditioner is None and text_encoder is None:
            raise ValueError("ldm.conditioning is 'text' but no text encoder was given")
        self.mean, self.std, self.texts = latent_mean, latent_std, texts
        self.text_encoder = text_encoder if self.conditional and conditioner is None else None
        self.scheduler = make_train_scheduler(cfg["schedule"])
        channels, size = int(latent_mean.shape[1]), int(latent_mean.shape[-1])
        context_dim = None
        if conditioner is not None:
            context_dim = int(conditioner.dim)
        elif self.conditional:
            context_dim = int(text_encoder.dim)
        self.unet = build_unet(cfg["unet"], latent_channels=channels, sample_size=size,
                               cross_attention_dim=context_dim)
        # Cheff §7.3: Adam (AdamW with weight_decay 0 is the same update)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=float(cfg["lr"]),
                                           weight_decay=float(cfg["weight_decay"]))
        self.lr_scheduler = lr_schedule(self.optimizer) if lr_schedule is not None else None
        self.ema = attach_ema("unet", self.unet, decay=float(cfg["ema_decay"]))
        self.null_tokens = self.null_mask = None
        if self.text_encoder is not None:
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
        """MSE to the prediction target (ε, v or x₀) for the given items; all randomness (posterior sample, t, ε, then
        the condition's draws: CFG drop, or the conditioner's) from ``generator``, in this order.

        ``ctx`` (the loop's :class:`~cxrgen.train.loop.TrainContext`) with several ranks: ``indices`` are this rank's
        share of the step's global batch; every draw is made for the whole global batch, as one process makes it, and
        this rank keeps its rows (``ctx.local``), so the ranks together use the single-process run's random numbers."""
        noisy, t, target = draw_noised(self.scheduler, self.mean, self.std, indices, generator, ctx)
        world_size, mine = global_draws(ctx)
        n = len(indices) * world_size
        context = mask = None
        if self.conditioner is not None:
            context, mask = self.conditioner(indices, n, generator, mine, drop)
            context = context.to(device)
            mask = mask.to(device) if mask is not None else None
        elif self.conditional:
            if drop is None:
                drop = mine(cfg_drop_mask(n, float(self.cfg["cfg_dropout"]), generator))
            tokens, mask = self.encode([self.texts[i] for i in indices])  # this rank's rows only
            context, mask = drop_condition(tokens, mask, self.null_tokens, self.null_mask, drop)
            context, mask = context.to(device), mask.to(device)
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            eps = denoise(self.unet, noisy.to(device), t.to(device), context, mask)
        return F.mse_loss(eps.float(), target.to(device))

    def train_step(self, indices: list[int], ctx) -> dict[str, float]:
        loss = self.loss(indices, ctx.generator, ctx.device, autocast=ctx.autocast, ctx=ctx)
        grad_norm = ctx.backward_step(loss, self.unet, self.optimizer, self.cfg["grad_clip"])
        metrics = {"loss": float(loss.detach()), "grad_norm": grad_norm}
        if self.lr_scheduler is not None:
            metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        return metrics

    def fit(self, loop: LoopConfig, state_dir: Path, *, on_log=None, extra_state: dict | None = None):
        """Run (or resume) the training loop; with several ranks (:func:`cxrgen.train.distributed.launch`, torchrun)
        each rank trains on its slice of every global batch of ``batch_size`` items."""
        schedulers = {"unet": self.lr_scheduler} if self.lr_scheduler is not None else None
        return run_training(loop, modules={"unet": self.unet}, optimizers={"unet": self.optimizer},
                            loader_for=index_batches(loop, len(self.mean), self.cfg["batch_size"]),
                            train_step=self.train_step, state_dir=Path(state_dir),
                            emas={"unet": self.ema}, schedulers=schedulers, on_log=on_log, extra_state=extra_state,
                            desc=self.desc, distributed_ready=True)

    @torch.no_grad()
    def validation_loss(self, mean: torch.Tensor, texts: list[str], seed: int, max_items: int,
                        conditioner: Conditioner | None = None) -> float:
        """MSE to the prediction target on held-out latents with fixed noise/timesteps (no CFG drop), batches of
        ``batch_size``; ``conditioner``: the held-out items' conditioner (when training with one)."""
        if len(mean) == 0:
            return float("nan")
        saved = self.mean, self.std, self.texts, self.conditioner
        self.mean, self.std, self.texts = mean[:max_items], None, texts[:max_items]
        if self.conditioner is not None:
            self.conditioner = conditioner
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
            self.mean, self.std, self.texts, self.conditioner = saved
            self.unet.train()
