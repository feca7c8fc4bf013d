"""Data-parallel training on one node: who am I (rank), how many are we (world size), and a launcher.

:func:`launch` runs a plain library function on ``world_size`` processes (one per GPU; gloo processes on CPU). Every
process gets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` like under ``torchrun`` and an initialised process group, then
calls the function; rank 0's return value (or the first rank's exception) comes back to the caller. The processes are
fresh interpreters (``python -m cxrgen.train.distributed``), not ``multiprocessing`` children: a Snakemake ``script:``
adapter runs as ``__main__`` without a ``__name__`` guard, and spawn would re-execute it in every child. So the
function must be importable by name (a module-level library function), and its arguments picklable.

The ranks write to this process's current ``sys.stdout``/``sys.stderr`` (e.g. the job's log file). A SIGTERM to the
launcher (SLURM's time limit, ``scancel``) is passed on to the ranks, and the launcher waits for them to stop.

Under ``torchrun`` (``WORLD_SIZE`` already set) :func:`launch` simply calls the function in this process.
The training loop (:mod:`cxrgen.train.loop`) reads the same environment; see its module docstring for what a rank
does and :func:`is_main_process` for who writes outputs.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# after one rank failed, the others get this long to stop on their own (record their error, rank 0 its run's status)
# before SIGTERM, and as long again before SIGKILL (a rank blocked inside a collective runs no Python signal handler)
STOP_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_world() -> World:
    """The initialised process group if any, else torchrun's environment variables, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return World(rank, world_size, int(os.environ.get("LOCAL_RANK", rank)))


def is_main_process() -> bool:
    """True on rank 0 (and in a single-process run): the one process that writes checkpoints, outputs and MLflow."""
    return current_world().is_main


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def default_backend() -> str:
    """nccl for CUDA tensors (with gloo for CPU tensors) when CUDA is present, else gloo."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def ensure_process_group(world: World, backend: str | None = None) -> None:
    """Make sure a process group matching ``world`` exists: a no-op for one process or when :func:`launch` already
    made one; under ``torchrun`` (``MASTER_ADDR`` set) it is initialised from the environment (``env://``)."""
    if world.world_size <= 1:
        return
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (world.rank, world.world_size):
            raise ValueError(f"configured rank {world.rank} of {world.world_size}, but the process group is rank "
                             f"{dist.get_rank()} of {dist.get_world_size()}")
        return
    if "MASTER_ADDR" not in os.environ:
        raise RuntimeError(f"world size {world.world_size} but no process group and no MASTER_ADDR: start the ranks "
                           "with cxrgen.train.distributed.launch(fn, n) or torchrun")
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend or default_backend(), rank=world.rank, world_size=world.world_size)


def launch(fn, world_size: int, *args, backend: str | None = None, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` on ``world_size`` ranks of this node; returns rank 0's result.

    ``world_size`` <= 1 (e.g. the job's GPU count is 1) or an existing torchrun environment: a plain call here.
    On CUDA every rank uses ``cuda:<LOCAL_RANK>`` (the job must see ``world_size`` GPUs); without CUDA the ranks run
    on CPU with gloo. An exception on any rank stops all ranks and is re-raised here (same type when it pickles,
    e.g. :class:`cxrgen.train.loop.Interrupted`), with the rank's traceback as a note.
    """
    world_size = int(world_size)
    if world_size <= 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return fn(*args, **kwargs)
    if torch.cuda.is_available() and torch.cuda.device_count() < world_size:
        raise ValueError(f"{world_size} ranks asked for but only {torch.cuda.device_count()} GPUs are visible")
    with tempfile.TemporaryDirectory(prefix="cxrgen-ranks-") as tmp:
        tmp = Path(tmp)
        with open(tmp / "call.pkl", "wb") as f:
            pickle.dump({"fn": fn, "args": args, "kwargs": kwargs}, f)
        env = {**os.environ, "WORLD_SIZE": str(world_size), "CXRGEN_RENDEZVOUS": f"file://{tmp / 'rendezvous'}",
               "CXRGEN_BACKEND": backend or default_backend(),
               "CXRGEN_LOG_LEVEL": str(logging.getLogger().getEffectiveLevel()),
               # like torchrun: ranks sharing the CPUs must not each start one thread per core
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world_size))),
               # the callee's module must import in the fresh interpreters as it does here (tests, src layouts)
               "PYTHONPATH": os.pathsep.join([p for p in sys.path if p] + [os.environ.get("PYTHONPATH", "")])}
        procs = [subprocess.Popen([sys.executable, "-m", "cxrgen.train.distributed", str(tmp), str(rank)],
                                  env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                  stdout=_file_descriptor(sys.stdout), stderr=_file_descriptor(sys.stderr))
                 for rank in range(world_size)]
        try:
            with _forward_sigterm(procs):
                codes = _wait_all(procs)
        finally:
            _stop_all(procs)
        outcomes = {rank: _read_outcome(tmp, rank) for rank in range(world_size)}
        failed = [r for r in range(world_size) if outcomes[r] is None or outcomes[r][0] != "ok"]
        if not failed and all(code == 0 for code in codes):
            return outcomes[0][1]
        raise _first_error(outcomes, codes)


def _file_descriptor(stream) -> int | None:
    """The file descriptor behind ``stream`` (e.g. the log file :func:`cxrgen.logutil.setup_logging` made
    ``sys.stderr``), or None: the ranks inherit this process's."""
    try:
        stream.flush()
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both an OSError and a ValueError
        return None


@contextmanager
def _forward_sigterm(procs: list[subprocess.Popen]) -> Iterator[None]:
    """Pass a SIGTERM of the launcher on to the ranks instead of dying: they stop like any killed job (rank 0 records
    its run as KILLED, see :func:`cxrgen.train.job.tracked_job`) and the launcher re-raises their error. Dying at once
    would kill the ranks through the parent-death signal before they could record anything."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        log.warning("%s: passing it on to the ranks", signal.Signals(signum).name)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_all(procs: list[subprocess.Popen], grace: float = STOP_GRACE_SECONDS) -> list[int]:
    """Exit codes. Once one rank failed, the others get ``grace`` seconds to stop on their own (a rank whose peer is
    gone gets an error from its next collective; rank 0 records its run's status), then SIGTERM, then SIGKILL after
    another ``grace`` (they would otherwise wait in a collective until its timeout)."""
    failed_at = terminated_at = None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return codes
        now = time.monotonic()
        if failed_at is None and any(c not in (None, 0) for c in codes):
            failed_at = now
        if failed_at is not None and terminated_at is None and now - failed_at > grace:
            terminated_at = now
            for p in procs:
                if p.poll() is None:
                    p.terminate()
        if terminated_at is not None and now - terminated_at > grace:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.05)


def _stop_all(procs: list[subprocess.Popen], grace: float = STOP_GRACE_SECONDS) -> None:
    """Ranks still running when the launcher leaves early (Ctrl-C reaches the whole process group: let them record
    their status) get ``grace`` seconds to stop on their own, then SIGKILL."""
    deadline = time.monotonic() + grace
    for proc in procs:
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _read_outcome(tmp: Path, rank: int):
    path = tmp / f"outcome-{rank}.pkl"
    if not path.exists():
        return None
    with open(path, "rb") as f:
        return pickle.load(f)


def _first_error(outcomes: dict, codes: list[int]) -> BaseException:
    errors = sorted((o[3], rank, o) for rank, o in outcomes.items() if o is not None and o[0] == "error")
    if not errors:
        return RuntimeError(f"data-parallel ranks exited with codes {codes} without reporting an error")
    _, rank, (_, error, text, _) = errors[0]
    if error is None:
        error = RuntimeError(f"rank {rank} failed (its exception does not pickle)")
    error.add_note(f"raised on rank {rank} of {len(codes)} (exit codes {codes}):\n{text}")
    return error


def _die_with_parent() -> None:
    """Linux: the kernel kills this rank when the launching process dies (a killed job must not leave ranks that keep
    training and writing checkpoints)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before prctl took effect
        os._exit(1)


def _run_rank(tmp: Path, rank: int) -> None:
    _die_with_parent()
    world_size = int(os.environ["WORLD_SIZE"])
    logging.basicConfig(level=int(os.environ.get("CXRGEN_LOG_LEVEL", logging.INFO)),
                        format=f"%(asctime)s [rank {rank}] %(name)s %(levelname)s %(message)s")
    if torch.cuda.is_available():
        torch.cuda.set_device(rank)
    dist.init_process_group(os.environ["CXRGEN_BACKEND"], init_method=os.environ["CXRGEN_RENDEZVOUS"], rank=rank,
                            world_size=world_size)
    try:
        with open(tmp / "call.pkl", "rb") as f:
            call = pickle.load(f)
        result = call["fn"](*call["args"], **call["kwargs"])
        outcome = ("ok", result if rank == 0 else None)
    except BaseException as error:  # noqa: BLE001 - reported to the launcher, which re-raises it
        try:
            pickle.dumps(error)
        except Exception:  # noqa: BLE001
            error_to_send = None
        else:
            error_to_send = error
        outcome = ("error", error_to_send, traceback.format_exc(), time.time())
    with open(tmp / f"outcome-{rank}.pkl.tmp", "wb") as f:
        pickle.dump(outcome, f)
    os.replace(tmp / f"outcome-{rank}.pkl.tmp", tmp / f"outcome-{rank}.pkl")
    if outcome[0] != "ok":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # no orderly shutdown: the process group's teardown would wait for ranks that are stuck
    dist.destroy_process_group()


if __name__ == "__main__":
    _run_rank(Path(sys.argv[1]), int(sys.argv[2]))
