"""MLflow tracking for pipeline jobs.

One experiment per project; a parent run per pipeline (created once by the localrule ``init_tracking`` before any job
starts, which also creates the database schema — concurrent first connections to a fresh SQLite store race on
migrations); every job is a child run named ``<rule>:<wildcards>`` tagged with the rule, the SLURM job id, the git
commit and the config digest. A resumed training job continues its own run (the run id is kept in its checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any


def mlflow_key(name: str) -> str:
    """An MLflow-valid param or metric key: alphanumerics and ``_ - . : /`` (spaces and anything else, e.g. the ``>``
    and ``+`` of the MedCoDi-M direction names ``L+T->F``, become ``_``)."""
    return re.sub(r"[^\w\-.:/]", "_", name.replace(" → ", "_to_"))


log = logging.getLogger(__name__)


def default_tracking_uri(results_dir: Path) -> str:
    """``$MLFLOW_TRACKING_URI`` if set (a tracking server on a cluster), else a SQLite store under results/."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    path = (Path(results_dir) / "mlflow" / "mlflow.db").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def git_commit(repo: Path | None = None) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def create_pipeline_run(experiment: str, results_dir: Path) -> dict:
    """Create (or reuse) the experiment and a parent run for this pipeline; returns the ids every job's run needs
    (what rule ``init_tracking`` writes to ``results/tracking/run.json``). The parent run carries no config digest:
    it is made once per results directory and outlives config changes; every job's run is tagged with the digest of
    the config it ran with."""
    uri = default_tracking_uri(results_dir)
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    artifacts = (Path(results_dir) / "mlflow" / "artifacts").resolve()
    experiment_id = exp.experiment_id if exp else client.create_experiment(
        experiment, artifact_location=None if uri.startswith("http") else artifacts.as_uri())
    parent = client.create_run(experiment_id, run_name="pipeline", tags={
        "cxrgen.kind": "pipeline", "git.commit": git_commit()})
    return {"tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": parent.info.run_id}


class JobRun:
    """A child MLflow run for one workflow job. Safe to re-open: pass the run id saved by a previous attempt."""

    def __init__(self, tracking_json: Path, name: str, *, params: dict | None = None, tags: dict | None = None,
                 run_id: str | None = None):
        info = json.loads(Path(tracking_json).read_text())
        self.client = _client(info["tracking_uri"])
        if run_id:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            all_tags = {
                "mlflow.parentRunId": info["parent_run_id"], "snakemake.job": name,
                "slurm.job_id": os.environ.get("SLURM_JOB_ID", "none"), "git.commit": git_commit(),
                **(tags or {}),
            }
            self.run_id = self.client.create_run(info["experiment_id"], run_name=name, tags=all_tags).info.run_id
            if params:
                self.log_params(params)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = _flatten(params)
        items = [Param(mlflow_key(k), str(v)[:6000]) for k, v in flat.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(mlflow_key(k), float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out
