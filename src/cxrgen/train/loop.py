"""One explicit training loop shared by every trainer (config dataclass in, weights out).

Resumability: the state directory (passed by the workflow through ``params``, never a declared output) receives an
atomic checkpoint every ``checkpoint_every`` steps holding model, optimizer, EMA and RNG states. The data order is a
pure function of (seed, step) (:class:`StepBatchSampler`), so a run killed at any point and restarted continues with
exactly the batches and random numbers it would have seen: on CPU, interrupted + resumed == uninterrupted, bit for bit.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)

_CKPT = re.compile(r"^ckpt-(\d{8})\.pt$")


@dataclass
class LoopConfig:
    max_steps: int
    checkpoint_every: int = 100
    log_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0
    grad_clip: float | None = 1.0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (autocast on CUDA; CPU runs stay fp32)
    channels_last: bool = False  # memory format for conv nets on GPU
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    stop_after_steps: int | None = None  # stop (as if killed) once this many steps ran in this process; tests

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


class Interrupted(RuntimeError):
    """Raised when ``stop_after_steps`` is reached: the run stops like a killed job (last checkpoint stays)."""


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of indices as a pure function of (seed, step): epoch e uses permutation(seed, e); batches never cross
    epochs' boundaries in a way that depends on history. Starts at ``start_step``."""

    def __init__(self, n_items: int, batch_size: int, seed: int, start_step: int, max_steps: int):
        if n_items < 1:
            raise ValueError("cannot train on an empty dataset")
        self.n, self.batch_size, self.seed = n_items, batch_size, seed
        self.start_step, self.max_steps = start_step, max_steps

    def indices_for_step(self, step: int) -> list[int]:
        out = []
        for k in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, offset = divmod(k, self.n)
            out.append(int(self._permutation(epoch)[offset]))
        return out

    def _permutation(self, epoch: int) -> np.ndarray:
        cache = getattr(self, "_cache", None)
        if cache is None or cache[0] != epoch:
            self._cache = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.max_steps):
            yield self.indices_for_step(step)

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step)


@dataclass
class TrainContext:
    """What a train_step gets: the step number, a dedicated RNG for noise/timesteps, the device and autocast."""

    step: int
    generator: torch.Generator
    device: torch.device
    autocast: Callable[[], Any]


@dataclass
class LoopResult:
    steps_done: int
    resumed_from: int | None
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def latest_checkpoint(state_dir: Path) -> Path | None:
    if not Path(state_dir).is_dir():
        return None
    found = sorted(p for p in Path(state_dir).iterdir() if _CKPT.match(p.name))
    return found[-1] if found else None


def _save_checkpoint(state_dir: Path, step: int, payload: dict, keep: int) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / f"ckpt-{step:08d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-write never leaves a corrupt "latest" checkpoint
    for old in sorted(p for p in state_dir.iterdir() if _CKPT.match(p.name))[:-keep]:
        old.unlink()
    return path


def run_training(
    cfg: LoopConfig,
    *,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    loader_for: Callable[[int], Iterator[Any]],
    train_step: Callable[[Any, TrainContext], dict[str, float]],
    state_dir: Path,
    emas: dict[str, Any] | None = None,
    schedulers: dict[str, Any] | None = None,
    on_log: Callable[[dict[str, float], int], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
    extra_state: dict[str, Any] | None = None,
    desc: str = "train",
) -> LoopResult:
    """Run (or resume) ``cfg.max_steps`` optimisation steps.

    ``loader_for(start_step)`` yields batches for steps start_step, start_step+1, … (use :class:`StepBatchSampler`).
    ``train_step(batch, ctx)`` does forward/backward/optimizer step(s) and returns scalar metrics.
    ``extra_state`` (e.g. the MLflow run id) is stored in checkpoints and updated in place on resume.
    Call :func:`seed_everything` before building the modules so that initial weights are reproducible.
    """
    state_dir = Path(state_dir)
    device = cfg.resolved_device()
    emas, schedulers = emas or {}, schedulers or {}
    seed_everything(cfg.seed)
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    start, resumed_from = 0, None
    ckpt = latest_checkpoint(state_dir)
    if ckpt is not None:
        payload = torch.load(ckpt, map_location="cpu", weights_only=False)
        for name, module in modules.items():
            module.load_state_dict(payload["modules"][name], strict=True)
        for name, opt in optimizers.items():
            opt.load_state_dict(payload["optimizers"][name])
        for name, ema in emas.items():
            ema.load_state_dict(payload["emas"][name])
        for name, sched in schedulers.items():
            sched.load_state_dict(payload["schedulers"][name])
        generator.set_state(payload["generator"])
        torch.set_rng_state(payload["torch_rng"])
        np.random.set_state(payload["numpy_rng"])
        random.setstate(payload["python_rng"])
        if extra_state is not None:
            extra_state.update(payload.get("extra", {}))
        start = resumed_from = int(payload["step"])
        log.info("resumed from %s (step %d of %d)", ckpt.name, start, cfg.max_steps)
    for module in modules.values():
        module.to(device)
        if cfg.channels_last and device.type == "cuda":
            module.to(memory_format=torch.channels_last)
        module.train()

    def autocast():
        if device.type == "cuda" and cfg.mixed_precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)

    def checkpoint(step: int) -> None:
        _save_checkpoint(state_dir, step, {
            "step": step, "config": asdict(cfg),
            "modules": {k: v.state_dict() for k, v in modules.items()},
            "optimizers": {k: v.state_dict() for k, v in optimizers.items()},
            "emas": {k: v.state_dict() for k, v in emas.items()},
            "schedulers": {k: v.state_dict() for k, v in schedulers.items()},
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
            "extra": dict(extra_state or {}),
        }, cfg.keep_checkpoints)
        if on_checkpoint:
            on_checkpoint(step)

    history: list[dict[str, float]] = []
    step, ran = start, 0
    started = time.perf_counter()
    batches = loader_for(start)
    with tqdm(total=cfg.max_steps, initial=start, desc=desc, mininterval=5.0) as bar:
        while step < cfg.max_steps:
            if cfg.stop_after_steps is not None and ran >= cfg.stop_after_steps:
                raise Interrupted(f"stopped after {ran} steps at step {step}")
            batch = next(batches)
            metrics = train_step(batch, TrainContext(step, generator, device, autocast))
            for ema in emas.values():
                ema.step(_ema_parameters(ema, modules))
            for sched in schedulers.values():
                sched.step()
            step += 1
            ran += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                metrics = {k: float(v) for k, v in metrics.items()}
                metrics["steps_per_second"] = ran / max(1e-9, time.perf_counter() - started)
                history.append({"step": step, **metrics})
                bar.set_postfix({k: f"{v:.4g}" for k, v in list(metrics.items())[:3]})
                if on_log:
                    on_log(metrics, step)
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                checkpoint(step)
    return LoopResult(steps_done=step, resumed_from=resumed_from, history=history)


def _ema_parameters(ema, modules: dict[str, nn.Module]):
    return modules[ema.cxrgen_module].parameters()


def attach_ema(module_name: str, module: nn.Module, decay: float):
    """A diffusers EMAModel tracking ``module`` (registered under ``module_name`` in the loop's modules)."""
    from diffusers.training_utils import EMAModel

    ema = EMAModel(module.parameters(), decay=decay)
    ema.cxrgen_module = module_name
    return ema


def clip_and_step(loss: torch.Tensor, module: nn.Module, optimizer: torch.optim.Optimizer,
                  grad_clip: float | None) -> float:
    """Backward, optional gradient clipping, optimizer step; returns the gradient norm (before clipping)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip if grad_clip else float("inf"))
    optimizer.step()
    return float(norm)
