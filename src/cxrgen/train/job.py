"""One tracked job: the scaffold every trainer, generator and evaluator runs inside.

A job opens (or re-opens, after a kill) its MLflow child run with its params, does its work, writes its output into a
staging path, publishes it atomically and then logs artifacts. A training job's outputs are published with their model
card (:mod:`cxrgen.train.model_card`), written into the staging path first. The run's final status follows one rule:

- ``KILLED`` when the job was stopped from outside: SIGTERM (what SLURM sends at a time limit and ``scancel``
  sends), Ctrl-C, or the loop's ``stop_after_steps`` (:class:`cxrgen.train.loop.Interrupted`). The job is
  expected to be resubmitted and to resume; its run id is kept in the state directory so the resubmission continues
  the same run;
- ``FAILED`` for any other exception, in any phase (including a failed save or artifact upload), or when the body
  returns without publishing;
- ``FINISHED`` only after the output was published and the artifacts logged.

The phase a job failed in is tagged on the run (``cxrgen.failed_phase``) with the exception type (never its message:
messages may carry source paths). Once the job is stopping (a first SIGTERM, or its status is being recorded), further
SIGTERMs are logged and ignored, so that they cannot interrupt the recording of the status.

Data-parallel training runs the job on every rank: rank 0 is the job (``main=True``, the default); the other ranks
(``main=False``) train inside the same scaffold but open no run, keep no run id and may not publish.
:func:`tracked_training` is that shape for a trainer: the job on every rank, a timed fit, then rank 0 alone publishes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrgen.train.model_card import CardContext, build_card, count_attempt, write_card
from cxrgen.train.outputs import publish_dir, staging_dir
from cxrgen.train.tracking import mlflow_key

if TYPE_CHECKING:
    from cxrgen.train.distributed import World
    from cxrgen.train.loop import LoopResult

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run.json"


class JobKilled(BaseException):  # noqa: N818 - a signal, not an error; BaseException so `except Exception` lets it pass
    """Raised in the main thread when the process receives SIGTERM (time limit, scancel)."""


def is_kill(error: BaseException) -> bool:
    from cxrgen.train.loop import Interrupted

    return isinstance(error, JobKilled | KeyboardInterrupt | Interrupted)


def json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.integer | np.floating | np.bool_):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value)}")


def write_json(path: Path | str, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=json_default, allow_nan=True))
    return path


class TrackedJob:
    """Handle given to the body of :func:`tracked_job`."""

    def __init__(self, run, state_dir: Path | None, main: bool = True):
        self.run = run
        self.state_dir = state_dir
        self.main = main
        self.phase = "open"
        self.published = False
        # what a resumable trainer keeps in its checkpoints (run_training's ``extra_state``)
        self.extra: dict[str, Any] = {"mlflow_run_id": self.run_id, "history": []}
        # set for a training job: its published outputs get a model card (cxrgen.train.model_card)
        self.card: CardContext | None = None

    @property
    def run_id(self) -> str | None:
        return self.run.run_id if self.run is not None else None

    def log_metrics(self, metrics: dict[str, Any], step: int = 0, prefix: str = "") -> None:
        """Log the finite numeric values of ``metrics`` (others are skipped) under MLflow-valid keys."""
        if self.run is None:
            return
        finite = {mlflow_key(prefix + k): float(v) for k, v in metrics.items()
                  if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
        if finite:
            self.run.log_metrics(finite, step)

    def record(self, metrics: dict[str, float], step: int, prefix: str = "") -> None:
        """The usual ``on_log`` of a training loop: keep the point in ``extra["history"]`` (it survives a resume
        through the checkpoints) and log it."""
        self.extra["history"].append({"step": step, **metrics})
        self.log_metrics(metrics, step, prefix)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.set_tags({k: str(v) for k, v in tags.items()})

    def staging(self, final: Path | str) -> Path:
        """A fresh staging directory ``<final>.tmp`` for a directory output."""
        self._require_main("stage")
        return staging_dir(final)

    def _require_main(self, what: str) -> None:
        if not self.main:
            raise RuntimeError(f"only the main process (rank 0) may {what} the job's outputs")

    def publish(self, staged: Path | str, final: Path | str, *, artifacts: tuple[str, ...] | list[str] = (),
                tags: dict[str, Any] | None = None) -> Path:
        """Swap the finished ``staged`` directory or file in as ``final``, then log ``artifacts`` (names relative to
        ``final`` for a directory; paths otherwise) and ``tags``. Call once per output; the job counts as published
        once every call returned."""
        self._require_main("publish")
        staged, final = Path(staged), Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        cards = self._stage_card(staged, final) if self.card is not None else []
        self.phase = "publish"
        if staged.is_dir():
            publish_dir(staged, final)
            cards = [final / path.name for path in cards]
        else:
            os.replace(staged, final)
            if cards:  # a file output: its card sits next to it
                for path in cards:
                    os.replace(path, final.parent / path.name)
                cards[0].parent.rmdir()
                cards = [final.parent / path.name for path in cards]
        self.phase = "artifacts"
        if self.run is not None:
            for name in artifacts:
                path = final / name if final.is_dir() else Path(name)
                self.run.log_artifact(path)
            for path in cards:
                self.run.log_artifact(path)
            self.set_tags({"cxrgen.output": str(final.resolve()), **(tags or {})})
        self.published = True
        self.phase = "run"
        return final

    def _stage_card(self, staged: Path, final: Path) -> list[Path]:
        """Write the model card of ``staged`` into it (a directory) or into a hidden directory next to ``final`` (a
        file output, e.g. the metrics of classifiers that are not kept); returns the card's paths."""
        self.phase = "card"
        card = build_card(self.card, staged)
        if staged.is_dir():
            return write_card(card, staged)
        return write_card(card, final.parent / f".{final.name}.card")

    def artifacts(self, *paths: Path | str) -> None:
        """Log further artifacts (e.g. figures written next to a published file)."""
        if self.run is not None:
            for path in paths:
                self.run.log_artifact(Path(path))


def _previous_run_id(state_dir: Path | None) -> str | None:
    if state_dir is None or not (Path(state_dir) / RUN_ID_FILE).is_file():
        return None
    return json.loads((Path(state_dir) / RUN_ID_FILE).read_text()).get("run_id")


class _Stopping:
    """Set once the job is stopping: later SIGTERMs are ignored (see :func:`_sigterm_raises`)."""

    def __init__(self):
        self.stopping = False


@contextmanager
def _sigterm_raises() -> Iterator[_Stopping]:
    """Turn the first SIGTERM into :class:`JobKilled` in the main thread while the job runs (Python's default would
    end the process without closing its run). Once the job is stopping (that first SIGTERM, or ``stopping`` set by
    the caller while it records the status), further SIGTERMs are ignored: SLURM signals every process of a job step
    and a data-parallel launcher forwards the signal too, so a rank may get it twice, and a second exception would
    abort the status update the first one started."""
    state = _Stopping()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if state.stopping:
            log.warning("%s ignored: the job is already stopping", name)
            return
        state.stopping = True
        raise JobKilled(f"signal {name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def tracked_job(tracking_json: Path | str | None, name: str, *, params: dict | None = None,
                tags: dict | None = None, state_dir: Path | str | None = None,
                main: bool = True, card: bool | None = None) -> Iterator[TrackedJob]:
    """Run the body as one tracked job (see the module docstring for the status rule).

    ``tracking_json`` (rule ``init_tracking``) → an MLflow child run ``name`` with ``params`` and ``tags``;
    ``None`` runs untracked. With ``state_dir`` (a resumable job), the run id is kept in ``state_dir`` and a rerun
    after a kill continues the same run.

    ``main=False``: a data-parallel rank other than 0 (``not cxrgen.train.distributed.is_main_process()``). Its body
    runs (it trains with the other ranks; a SIGTERM still raises :class:`JobKilled`, exceptions pass through) but it
    opens no run, writes no run id, may not stage or publish outputs (:meth:`TrackedJob.publish` raises) and is not
    required to publish. Rank 0's run carries the status of the whole job.

    ``card``: the job trains a model, so each output it publishes gets a model card (``MODEL_CARD.md`` and
    ``model_card.json``, :mod:`cxrgen.train.model_card`) staged with it and logged as artifacts. Default: a job with
    a ``state_dir`` (a resumable trainer) does.
    """
    from cxrgen.train.tracking import JobRun

    state = Path(state_dir) if state_dir is not None else None
    with _sigterm_raises() as signals:
        run = None
        if tracking_json is not None and main:
            previous = _previous_run_id(state)
            run = JobRun(Path(tracking_json), name, params=None if previous else params, tags=tags, run_id=previous)
            if state is not None:
                write_json(state / RUN_ID_FILE, {"run_id": run.run_id})
        job = TrackedJob(run, state, main=main)
        if main and (card or (card is None and state is not None)):
            job.card = CardContext(name, dict(params or {}), dict(tags or {}), state, attempt=count_attempt(state))
        job.phase = "run"
        try:
            yield job
            if main and not job.published:
                raise RuntimeError(f"job {name} ended without publishing its output")
        except BaseException as error:
            signals.stopping = True
            status = "KILLED" if is_kill(error) else "FAILED"
            log.error("job %s %s in phase %s (%s)", name, status.lower(), job.phase, type(error).__name__)
            if run is not None:
                try:
                    run.set_tags({"cxrgen.failed_phase": job.phase, "cxrgen.error": type(error).__name__})
                finally:
                    run.finish(status)
            raise
        job.phase = "done"
        signals.stopping = True
        if run is not None:
            run.finish("FINISHED")


@dataclass
class Trained:
    """What rank 0's ``publish`` gets from :func:`tracked_training`: the job, the fit's result, the world, and the
    wall-clock seconds of this run's fit (a resumed run counts only the steps it ran itself)."""

    job: TrackedJob
    result: LoopResult
    seconds: float
    world: World

    @property
    def steps_this_run(self) -> int:
        return self.result.steps_done - (self.result.resumed_from or 0)

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(1, self.steps_this_run)


def tracked_training(tracking_json: Path | str | None, name: str, *, world: World,
                     fit: Callable[[TrackedJob], LoopResult], publish: Callable[[Trained], dict],
                     params: dict | None = None, tags: dict | None = None, state_dir: Path | str | None = None) -> dict:
    """One data-parallel trainer's job on this rank: :func:`tracked_job` (tracked on rank 0 of ``world`` only; the
    tags gain ``cxrgen.world_size``) around ``fit(job)``, timed, which trains (with the other ranks) and returns the
    loop's result. Then rank 0 returns ``publish(Trained(...))`` (it writes and publishes the outputs and returns the
    stage's metrics) and every other rank returns ``{"rank": r, "steps": n}``."""
    tags = {**(tags or {}), "cxrgen.world_size": str(world.world_size)}
    with tracked_job(tracking_json, name, params=params, tags=tags, state_dir=state_dir, main=world.is_main,
                     card=True) as job:
        started = time.perf_counter()
        result = fit(job)
        seconds = time.perf_counter() - started
        if not world.is_main:
            return {"rank": world.rank, "steps": result.steps_done}
        job.card.steps_done, job.card.resumed_from = result.steps_done, result.resumed_from
        job.card.fit_seconds, job.card.world_size = seconds, world.world_size
        return publish(Trained(job, result, seconds, world))
