"""What the data-parallel trainer tests (test_*_distributed.py) check alike: a job's MLflow runs, the loss history in the
latest checkpoint, per-step metrics and saved weights of 2 ranks against 1 process, and the kill/resume of a 2-rank
job. The tolerances stay in each test: they are measured per trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cxrgen.train.distributed import current_world, launch
from cxrgen.train.loop import Interrupted, latest_checkpoint


def job_runs(tracking_json, job_name: str) -> list:
    """The MLflow runs tagged with job ``job_name`` in the store of ``tracking_json`` (rule init_tracking's file)."""
    from mlflow.tracking import MlflowClient

    info = json.loads(Path(tracking_json).read_text())
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    return client.search_runs([info["experiment_id"]], filter_string=f"tags.`snakemake.job` = '{job_name}'")


def latest_state(state_dir) -> dict:
    """The latest checkpoint of ``state_dir`` (modules, optimizers, ``extra``)."""
    return torch.load(latest_checkpoint(Path(state_dir)), weights_only=False)


def checkpoint_history(state_dir, *, timing: bool = True) -> list[dict]:
    """The logged training metrics of every step in the latest checkpoint (``timing`` False: without the timing,
    which differs between two runs of the same training)."""
    history = latest_state(state_dir)["extra"]["history"]
    return history if timing else [{k: v for k, v in point.items() if k != "steps_per_second"} for point in history]


def assert_same_steps(parallel_log: list[dict], single_log: list[dict], steps: list[int] | None = None,
                      **relative: float) -> None:
    """Both logs have the same steps (and those are ``steps`` if given), and each metric named in ``relative`` agrees
    step by step to its relative tolerance."""
    assert [h["step"] for h in parallel_log] == [h["step"] for h in single_log]
    if steps is not None:
        assert [h["step"] for h in single_log] == steps
    for p, q in zip(parallel_log, single_log, strict=True):
        for key, rel in relative.items():
            assert p[key] == pytest.approx(q[key], rel=rel), (q["step"], key)


def weight_differences(parallel: dict, alone: dict, keys=None) -> torch.Tensor:
    """|parallel - alone| of every element of the weights named ``keys`` (None: all of ``alone``), flattened."""
    return torch.cat([(parallel[k].float() - alone[k].float()).abs().flatten()
                      for k in (alone if keys is None else keys)])


def compare_weights(name: str, parallel: dict, alone: dict, keys=None) -> torch.Tensor:
    """:func:`weight_differences`, with its largest and median printed (``pytest -s`` shows what was measured)."""
    differences = weight_differences(parallel, alone, keys)
    print(f"{name}: 2 ranks vs 1 process: largest difference {differences.max():.2e}, "
          f"median {differences.median():.2e}")
    return differences


def assert_close_weights(name: str, parallel: dict, alone: dict, atol: float, median_atol: float, keys=None) -> None:
    """The 2-rank weights are the single process's within ``atol`` (largest difference) and ``median_atol``."""
    differences = compare_weights(name, parallel, alone, keys)
    assert differences.max() <= atol and differences.median() <= median_atol, name


def assert_identical_weights(resumed: dict, uninterrupted: dict, name: str | None = None) -> None:
    """Bit for bit the same weights (every one of ``uninterrupted``'s)."""
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted), name


def train_kill_and_resume_on_two_ranks(train, inputs: tuple[dict, Path], tmp_path_factory,
                                       job_name: str) -> tuple[dict, Path, str]:
    """:func:`train_kill_and_resume_in_ranks` of ``train`` with ``inputs`` (its keyword arguments, the test's root) in
    one 2-rank launch, tracked in the session's MLflow store. Returns (what it found, root, tracking json)."""
    from test_ldm import shared_tracking_json

    kwargs, root = inputs
    tracking = str(shared_tracking_json(tmp_path_factory))
    return launch(train_kill_and_resume_in_ranks, 2, train, kwargs, root, tracking, job_name), root, tracking


def assert_rank0_published(tracking, job_name: str, metrics: dict, out_dir: Path):
    """Rank 0 alone opened the job's run, finished it and wrote ``out_dir`` (no staging left). Returns the run."""
    runs = job_runs(tracking, job_name)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].info.run_id == metrics["mlflow_run_id"]
    assert runs[0].data.tags["cxrgen.world_size"] == "2"
    assert json.loads((out_dir / "metrics.json").read_text())["world_size"] == 2
    assert not (out_dir.parent / f"{out_dir.name}.tmp").exists()
    return runs[0]


def train_kill_and_resume_in_ranks(train, kwargs: dict, root: Path, tracking: str, job_name: str) -> dict:
    """Inside a 2-rank launch (one launch for several jobs: starting the ranks costs seconds of imports on shared
    cores): ``train`` uninterrupted into ``root/two`` as job ``job_name`` (its metrics: ``straight``), then into
    ``root/resumed`` as job ``<job_name>-resumed`` stopped after step 3 (checkpoint at 2) and resumed. Returns what
    :func:`assert_killed_and_resumed` checks."""
    found = {"straight": train(**kwargs, out_dir=str(root / "two"), state_dir=str(root / "two_state"),
                               tracking_json=tracking, job_name=job_name)}
    resumable = {**kwargs, "out_dir": str(root / "resumed"), "state_dir": str(root / "resumed_state"),
                 "tracking_json": tracking, "job_name": f"{job_name}-resumed"}
    try:
        train(**resumable, stop_after_steps=3)
    except Interrupted:  # on every rank, at the same step
        found["interrupted"] = True
    if current_world().is_main:
        [killed] = job_runs(tracking, resumable["job_name"])
        found["killed"] = {"status": killed.info.status, "run_id": killed.info.run_id,
                           "checkpoint": latest_checkpoint(root / "resumed_state").name,
                           "published": (root / "resumed").exists()}
    found["resumed"] = train(**resumable)
    return found


def assert_killed_and_resumed(found: dict, root: Path, tracking, job_name: str,
                              reports_resumed_from: bool = True) -> None:
    """The job of :func:`train_kill_and_resume_in_ranks` was interrupted on the ranks, its run ended KILLED at checkpoint 2
    with nothing published, it resumed from there to the uninterrupted job's (``root/two_state``) history, and the
    resumed job continued the killed job's run (``reports_resumed_from`` False: a trainer whose metrics do not name the
    step it resumed from)."""
    assert found["interrupted"]
    assert found["killed"] == {"status": "KILLED", "run_id": found["killed"]["run_id"],
                               "checkpoint": "ckpt-00000002.pt", "published": False}
    assert found["resumed"]["steps"] == 4
    if reports_resumed_from:
        assert found["resumed"]["resumed_from"] == 2
    assert checkpoint_history(root / "resumed_state", timing=False) == checkpoint_history(root / "two_state",
                                                                                        timing=False)
    [run] = job_runs(tracking, job_name)
    assert run.info.run_id == found["killed"]["run_id"] and run.info.status == "FINISHED"
