"""One explicit training loop shared by every trainer (config dataclass in, weights out).

Resumability: the state directory (passed by the workflow through ``params``, never a declared output) receives an
atomic checkpoint every ``checkpoint_every`` steps holding model, optimizer, EMA, loss-scaler and RNG states. The data
order is a pure function of (seed, step) (:class:`StepBatchSampler`), so a run killed at any point and restarted
continues with exactly the batches and random numbers it would have seen: on CPU, interrupted + resumed ==
uninterrupted, bit for bit.

Mixed precision (``LoopConfig.mixed_precision``): ``bf16`` and ``fp16`` make ``ctx.autocast()`` autocast on the
training device, CPU included (CPU autocast is real: bf16/fp16 matmuls and convolutions; on CPUs without bf16 units it
is slower than fp32, so it is for testing the GPU path and for bf16-capable CPUs). ``fp16`` also scales the loss with a
``torch.amp.GradScaler`` per optimizer: scale → backward → unscale → clip → step (skipped when a gradient overflowed)
→ update. The scalers' state is in every checkpoint, so a resumed fp16 run equals an uninterrupted one. bf16 has fp32's
exponent range and needs no scaler: prefer it on GPUs that have it (A100 and newer).

Data parallel: with a world size W > 1 (ranks started by :func:`cxrgen.train.distributed.launch` or ``torchrun``)
every rank holds all modules; ``run_training`` broadcasts rank 0's parameters and buffers after (re)starting and rank
0's buffers before every step (what DDP's ``broadcast_buffers`` does). :class:`StepBatchSampler` gives each rank its
contiguous 1/W slice of the global batch (``batch_size`` stays the global batch of the single-process run), and the
backward step divides the rank's loss (a mean over its rows) by W and sums the gradients over the ranks before
unscaling and clipping: every rank applies the update of the global batch's mean loss, and backward's activation
gradients have the single-process magnitudes (an fp16 overflow there is one here; only a parameter gradient summed over
fewer rows in fp16 can stay finite where the whole batch's sum overflowed). An overflow on any rank reaches every rank
through the sum, so all ranks skip the same steps. That is DDP's arithmetic (mean of the ranks' gradients) without the
``DistributedDataParallel`` wrapper: trainers call their own module references
(and diffusers attributes) in ``forward``, and DDP only synchronises when ``forward`` goes through the wrapper, so
wrapping would silently train W different models. ``ctx.generator`` is the same stream on every rank (the one of the
single-process run): a distributed-ready trainer draws its random numbers for the global batch and keeps its rows with
``ctx.local(...)``; the weights then equal the single-process run's up to float summation order. Randomness inside
modules (dropout) uses the global torch RNG, which is seeded per rank and checkpointed per rank. Only rank 0 writes
checkpoints and calls ``on_log``/``on_checkpoint`` (with metrics averaged over the ranks); every rank resumes from the
checkpoint rank 0 picked. A checkpoint resumes with any W (the data order does not depend on W); exactness needs the
same W.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from cxrgen.train.distributed import World, current_world, ensure_process_group

log = logging.getLogger(__name__)

_CKPT = re.compile(r"^ckpt-(\d{8})\.pt$")
MIXED_PRECISION = ("no", "bf16", "fp16")
_BUCKET_ELEMENTS = 2**24  # gradients/buffers are all-reduced/broadcast in flat buckets of up to this many elements


@dataclass
class LoopConfig:
    max_steps: int
    checkpoint_every: int = 100
    log_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0
    grad_clip: float | None = 1.0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16": autocast on the training device (CPU too); fp16 + GradScaler
    grad_scale_init: float = 2.0**16  # fp16 only: GradScaler(init_scale, growth_interval), torch's defaults
    grad_scale_growth_interval: int = 2000
    channels_last: bool = False  # memory format for conv nets on GPU
    device: str = "auto"  # "auto" | "cpu" | "cuda" (with several ranks: cuda:<local rank>)
    world_size: int | None = None  # data-parallel ranks; None: the process group / torchrun's WORLD_SIZE, else 1
    rank: int | None = None  # None: the process group / RANK
    local_rank: int | None = None  # None: LOCAL_RANK (the GPU index on this node)
    stop_after_steps: int | None = None  # stop (as if killed) once this many steps ran in this process; tests

    def __post_init__(self):
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision = {self.mixed_precision!r}; allowed: {', '.join(MIXED_PRECISION)}")

    def resolved_world(self) -> World:
        found = current_world()
        world = World(found.rank if self.rank is None else self.rank,
                      found.world_size if self.world_size is None else self.world_size,
                      found.local_rank if self.local_rank is None else self.local_rank)
        if not 0 <= world.rank < world.world_size:
            raise ValueError(f"rank {world.rank} outside a world of {world.world_size}")
        return world

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(self.device)
        world = self.resolved_world()
        if device.type == "cuda" and device.index is None and world.world_size > 1:
            device = torch.device("cuda", world.local_rank)
        return device


class Interrupted(RuntimeError):
    """Raised when ``stop_after_steps`` is reached: the run stops like a killed job (last checkpoint stays)."""


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of indices as a pure function of (seed, step): epoch e uses permutation(seed, e); batches never cross
    epochs' boundaries in a way that depends on history. Starts at ``start_step``.

    ``batch_size`` is the global batch. With several ranks (``rank``/``world_size``; None: those of the running
    :func:`run_training`, else of the process group or torchrun environment) each rank gets its contiguous
    1/world_size slice of the step's global batch, a pure function of (seed, step, rank)."""

    def __init__(self, n_items: int, batch_size: int, seed: int, start_step: int, max_steps: int, *,
                 rank: int | None = None, world_size: int | None = None):
        if n_items < 1:
            raise ValueError("cannot train on an empty dataset")
        active = _ACTIVE_LOOP.get()
        found = active.world if active is not None else current_world()
        self.rank = found.rank if rank is None else rank
        self.world_size = found.world_size if world_size is None else world_size
        if batch_size % self.world_size:
            raise ValueError(f"global batch size {batch_size} is not divisible by {self.world_size} ranks")
        self.n, self.batch_size, self.seed = n_items, batch_size, seed
        self.start_step, self.max_steps = start_step, max_steps

    def global_indices_for_step(self, step: int) -> list[int]:
        out = []
        for k in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, offset = divmod(k, self.n)
            out.append(int(self._permutation(epoch)[offset]))
        return out

    def indices_for_step(self, step: int) -> list[int]:
        """This rank's share of the step's global batch (all of it in a single process)."""
        local = self.batch_size // self.world_size
        return self.global_indices_for_step(step)[self.rank * local:(self.rank + 1) * local]

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


def index_batches(loop: LoopConfig, n_items: int, batch_size: int) -> Callable[[int], Iterator[list[int]]]:
    """The ``loader_for`` of :func:`run_training` for a trainer that indexes its own ``n_items`` items: from step
    ``start`` on, this rank's slice of every global batch of ``batch_size`` indices (:class:`StepBatchSampler` seeded
    with the loop's seed, the rank and world of ``loop``)."""
    world = loop.resolved_world()

    def loader_for(start: int) -> Iterator[list[int]]:
        return iter(StepBatchSampler(n_items, int(batch_size), seed=loop.seed, start_step=start,
                                     max_steps=loop.max_steps, rank=world.rank, world_size=world.world_size))

    return loader_for


@dataclass
class _Runtime:
    """What the backward step needs from the running loop: ranks, device, grad clip and one scaler per optimizer."""

    world: World
    device: torch.device
    grad_clip: float | None
    mixed_precision: str
    scalers: dict[int, torch.amp.GradScaler]  # id(optimizer) -> its scaler (disabled unless fp16)


_ACTIVE_LOOP: ContextVar[_Runtime | None] = ContextVar("cxrgen_active_loop", default=None)
_FROM_CONFIG: Any = object()


@dataclass
class TrainContext:
    """What a train_step gets: the step number, a dedicated RNG for noise/timesteps (the same stream on every rank),
    the device, autocast, the rank and world size, and :meth:`backward_step`."""

    step: int
    generator: torch.Generator
    device: torch.device
    autocast: Callable[[], Any]
    rank: int = 0
    world_size: int = 1
    _runtime: _Runtime | None = field(default=None, repr=False)

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def backward_step(self, loss: torch.Tensor, module: nn.Module, optimizer: torch.optim.Optimizer,
                      grad_clip: float | None = _FROM_CONFIG) -> float:
        """zero_grad → backward (loss scaled under fp16; divided by the world size, gradients summed over ranks:
        the global batch's mean when ``loss`` is this rank's mean) → unscale → clip at
        ``grad_clip`` (default: ``LoopConfig.grad_clip``; None: no clipping) → optimizer step (skipped when an fp16
        gradient overflowed) → scaler update. Returns the (unscaled) gradient norm before clipping."""
        runtime = self._runtime if self._runtime is not None else _ACTIVE_LOOP.get()
        if grad_clip is _FROM_CONFIG:
            grad_clip = runtime.grad_clip if runtime is not None else None
        return _backward_step(runtime, loss, module, optimizer, grad_clip)

    def local(self, batch):
        """This rank's rows of something drawn for the global batch (tensor: first dimension; or a list): draw
        random numbers for ``len(local batch) * ctx.world_size`` items, keep ``ctx.local(draw)``."""
        n = len(batch)
        if n % self.world_size:
            raise ValueError(f"{n} rows cannot be split over {self.world_size} ranks")
        size = n // self.world_size
        return batch[self.rank * size:(self.rank + 1) * size]


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


def _seed_rank_rngs(seed: int, rank: int, step: int) -> None:
    """Global RNGs (dropout, …) of ranks > 0: their own streams, a function of (seed, rank, step)."""
    derived = int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


def _global_rng_states() -> tuple:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _set_global_rng_states(states: tuple) -> None:
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])


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


def _buckets(tensors: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Tensors grouped by (device, dtype) into runs of at most ``_BUCKET_ELEMENTS`` elements (one collective each)."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        bucket, size = [], 0
        for t in group:
            if bucket and size + t.numel() > _BUCKET_ELEMENTS:
                yield bucket
                bucket, size = [], 0
            bucket.append(t)
            size += t.numel()
        if bucket:
            yield bucket


def _flat_collective(tensors: list[torch.Tensor], collective: Callable[[torch.Tensor], None]) -> None:
    for bucket in _buckets(tensors):
        flat = torch.cat([t.reshape(-1) for t in bucket])
        collective(flat)
        for t, chunk in zip(bucket, flat.split([t.numel() for t in bucket]), strict=True):
            t.copy_(chunk.view_as(t))


def _sum_gradients(parameters: Iterable[nn.Parameter], device: torch.device) -> None:
    """Every rank's gradients become the sum over ranks. A parameter without a gradient on every rank keeps none;
    one with a gradient on some ranks only counts zeros for the others."""
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    present = torch.tensor([float(p.grad is not None) for p in params], device=device)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    grads = []
    for p, flag in zip(params, present.tolist(), strict=True):
        if flag:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    _flat_collective(grads, dist.all_reduce)


def _broadcast_from_main(tensors: list[torch.Tensor]) -> None:
    with torch.no_grad():
        _flat_collective([t.data for t in tensors], lambda flat: dist.broadcast(flat, src=0))


def _backward_step(runtime: _Runtime | None, loss: torch.Tensor, module: nn.Module,
                   optimizer: torch.optim.Optimizer, grad_clip: float | None) -> float:
    scaler = None
    if runtime is not None:
        scaler = runtime.scalers.get(id(optimizer))
        if scaler is None and (runtime.mixed_precision == "fp16" or runtime.world.world_size > 1):
            raise ValueError("this optimizer was not passed to run_training(optimizers=...): it has no fp16 loss "
                             "scaler / is not synchronised over ranks")
    distributed = runtime is not None and runtime.world.world_size > 1
    if distributed:
        # this rank's share of the global batch's mean loss: backward's activation gradients get the magnitudes of
        # the single-process run (fp16 overflows alike), and the sum over ranks is the global mean's gradient
        loss = loss / runtime.world.world_size
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if distributed:
        _sum_gradients(module.parameters(), runtime.device)
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip if grad_clip else float("inf"))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return float(norm)


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
    distributed_ready: bool = False,
) -> LoopResult:
    """Run (or resume) ``cfg.max_steps`` optimisation steps.

    ``loader_for(start_step)`` yields batches for steps start_step, start_step+1, … (use :class:`StepBatchSampler`;
    with several ranks, this rank's share of each global batch).
    ``train_step(batch, ctx)`` does forward/backward/optimizer step(s) (:meth:`TrainContext.backward_step`, or
    :func:`clip_and_step`) and returns scalar metrics.
    ``extra_state`` (e.g. the MLflow run id) is stored in checkpoints and updated in place on resume.
    Call :func:`seed_everything` before building the modules so that initial weights are reproducible.
    ``distributed_ready``: the caller declares that its ``train_step`` draws random numbers for the global batch and
    keeps its rows (:meth:`TrainContext.local`; otherwise every rank would reuse the same noise for different
    samples), and that only the main process writes outputs after training
    (:func:`cxrgen.train.distributed.is_main_process`). Required when the world size is > 1.
    """
    state_dir = Path(state_dir)
    world = cfg.resolved_world()
    distributed = world.world_size > 1
    if distributed and not distributed_ready:
        raise ValueError(f"{desc}: {world.world_size} ranks, but this trainer is not declared distributed_ready "
                         "(see run_training's docstring)")
    ensure_process_group(world)
    device = cfg.resolved_device()
    emas, schedulers = emas or {}, schedulers or {}
    seed_everything(cfg.seed)
    if world.rank > 0:
        _seed_rank_rngs(cfg.seed, world.rank, 0)
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    scalers = {name: torch.amp.GradScaler(device.type, init_scale=cfg.grad_scale_init,
                                          growth_interval=cfg.grad_scale_growth_interval,
                                          enabled=cfg.mixed_precision == "fp16")
               for name in optimizers}
    start, resumed_from = 0, None
    ckpt = latest_checkpoint(state_dir) if world.is_main else None
    if distributed:  # every rank resumes from the checkpoint rank 0 found
        chosen = [str(ckpt) if ckpt else None]
        dist.broadcast_object_list(chosen, src=0)
        ckpt = Path(chosen[0]) if chosen[0] else None
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
        for name, state in payload.get("scalers", {}).items():
            if scalers[name].is_enabled():
                scalers[name].load_state_dict(state)
        generator.set_state(payload["generator"])
        start = resumed_from = int(payload["step"])
        rank_rngs = payload.get("rank_rngs")
        if world.rank == 0:
            _set_global_rng_states((payload["torch_rng"], payload["numpy_rng"], payload["python_rng"]))
        elif rank_rngs is not None and len(rank_rngs) == world.world_size:
            _set_global_rng_states(rank_rngs[world.rank])
        else:
            _seed_rank_rngs(cfg.seed, world.rank, start)
            log.warning("checkpoint written by %d rank(s), resuming with %d: rank %d's dropout stream restarts",
                        len(rank_rngs or [None]), world.world_size, world.rank)
        if extra_state is not None:
            extra_state.update(payload.get("extra", {}))
        log.info("resumed from %s (step %d of %d)", ckpt.name, start, cfg.max_steps)
    for module in modules.values():
        module.to(device)
        if cfg.channels_last and device.type == "cuda":
            module.to(memory_format=torch.channels_last)
        module.train()
    if distributed:
        _broadcast_from_main([t for m in modules.values() for t in [*m.parameters(), *m.buffers()]])
    buffers = [b for m in modules.values() for b in m.buffers()]

    def autocast():
        if cfg.mixed_precision == "no":
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float16)

    def checkpoint(step: int) -> None:
        rank_rngs = None
        if distributed:
            rank_rngs = [None] * world.world_size
            dist.all_gather_object(rank_rngs, _global_rng_states())
        if not world.is_main:
            return
        torch_rng, numpy_rng, python_rng = _global_rng_states()
        _save_checkpoint(state_dir, step, {
            "step": step, "config": asdict(cfg), "world_size": world.world_size,
            "modules": {k: v.state_dict() for k, v in modules.items()},
            "optimizers": {k: v.state_dict() for k, v in optimizers.items()},
            "emas": {k: v.state_dict() for k, v in emas.items()},
            "schedulers": {k: v.state_dict() for k, v in schedulers.items()},
            "scalers": {k: v.state_dict() for k, v in scalers.items() if v.is_enabled()},
            "generator": generator.get_state(), "torch_rng": torch_rng,
            "numpy_rng": numpy_rng, "python_rng": python_rng, "rank_rngs": rank_rngs,
            "extra": dict(extra_state or {}),
        }, cfg.keep_checkpoints)
        if on_checkpoint:
            on_checkpoint(step)

    runtime = _Runtime(world, device, cfg.grad_clip, cfg.mixed_precision,
                       {id(opt): scalers[name] for name, opt in optimizers.items()})
    history: list[dict[str, float]] = []
    step, ran = start, 0
    started = time.perf_counter()
    token = _ACTIVE_LOOP.set(runtime)
    try:
        batches = loader_for(start)
        with tqdm(total=cfg.max_steps, initial=start, desc=desc, mininterval=5.0, disable=not world.is_main) as bar:
            while step < cfg.max_steps:
                if cfg.stop_after_steps is not None and ran >= cfg.stop_after_steps:
                    raise Interrupted(f"stopped after {ran} steps at step {step}")
                batch = next(batches)
                if distributed and buffers:
                    _broadcast_from_main(buffers)
                ctx = TrainContext(step, generator, device, autocast, world.rank, world.world_size, runtime)
                metrics = train_step(batch, ctx)
                for ema in emas.values():
                    ema.step(_ema_parameters(ema, modules))
                for sched in schedulers.values():
                    sched.step()
                step += 1
                ran += 1
                bar.update(1)
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    metrics = _mean_over_ranks({k: float(v) for k, v in metrics.items()}, world, device)
                    metrics["steps_per_second"] = ran / max(1e-9, time.perf_counter() - started)
                    history.append({"step": step, **metrics})
                    bar.set_postfix({k: f"{v:.4g}" for k, v in list(metrics.items())[:3]})
                    if on_log and world.is_main:
                        on_log(metrics, step)
                if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                    checkpoint(step)
    finally:
        _ACTIVE_LOOP.reset(token)
    if distributed:
        dist.barrier()  # the final checkpoint exists when any rank returns
    return LoopResult(steps_done=step, resumed_from=resumed_from, history=history)


def _mean_over_ranks(metrics: dict[str, float], world: World, device: torch.device) -> dict[str, float]:
    if world.world_size == 1 or not metrics:
        return metrics
    values = torch.tensor(list(metrics.values()), dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {k: float(v) / world.world_size for k, v in zip(metrics, values.tolist(), strict=True)}


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
    """Backward, optional gradient clipping, optimizer step; returns the gradient norm (before clipping).

    Inside :func:`run_training` this is :meth:`TrainContext.backward_step` with an explicit ``grad_clip``: the fp16
    loss scaler of ``optimizer`` and the gradient synchronisation over ranks apply (the loop is found through a context
    variable, so trainers written before ``ctx.backward_step`` get both). Outside the loop: a plain fp32 step."""
    return _backward_step(_ACTIVE_LOOP.get(), loss, module, optimizer, grad_clip)


class BestOnValidation:
    """A trainer's training-loss history, validation records and best-scoring weights, kept in the loop's
    ``extra_state`` dict so that all three survive a resume. The trainer calls :meth:`record` after each validation,
    passes :meth:`log_hook` to :func:`run_training` as ``on_log``, and :meth:`restore_best` at the end (the published
    evaluators and verifiers stop early on validation)."""

    def __init__(self, model: nn.Module, extra_state: dict | None = None, on_log=None, on_eval=None):
        self.model = model
        self.extra = extra_state if extra_state is not None else {}
        for key, empty in (("history", []), ("evals", []), ("best", None)):
            self.extra.setdefault(key, empty)
        self._on_log, self._on_eval = on_log, on_eval

    @staticmethod
    def due(done: int, eval_every: int | None, max_steps: int) -> bool:
        """Validate every ``eval_every`` steps (0/None: never in between) and after the last step."""
        return bool(eval_every and done % int(eval_every) == 0) or done == max_steps

    def record(self, step: int, metrics: dict[str, float], score: float) -> None:
        """Keep the validation metrics; the weights are kept when ``score`` (higher = better) beats the best so far."""
        best = self.extra["best"]
        if not math.isnan(score) and (best is None or score > best["score"]):
            self.extra["best"] = {"step": step, "score": score,
                                  "state": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}}
        self.extra["evals"].append({"step": step, **metrics})
        if self._on_eval:
            self._on_eval(metrics, step)

    def log_hook(self, metrics: dict[str, float], step: int) -> None:
        self.extra["history"].append({"step": step, **metrics})
        if self._on_log:
            self._on_log(metrics, step)

    def restore_best(self, steps_done: int) -> int:
        """Load the best validated weights into the model; returns the step they come from (``steps_done`` when
        nothing was validated)."""
        if self.extra["best"] is None:
            return steps_done
        self.model.load_state_dict(self.extra["best"]["state"], strict=True)
        return int(self.extra["best"]["step"])

    @property
    def history(self) -> list[dict]:
        return list(self.extra["history"])

    @property
    def evals(self) -> list[dict]:
        return list(self.extra["evals"])
