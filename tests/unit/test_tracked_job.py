"""The tracked-job scaffold's one status rule, read back from a real MLflow store: a job killed (SIGTERM, loop
interruption) or failed at each phase ends KILLED or FAILED, FINISHED only after publish + artifacts."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from cxrgen.stages.init_tracking import init_tracking
from cxrgen.train import job as job_module
from cxrgen.train.job import RUN_ID_FILE, tracked_job
from cxrgen.train.loop import Interrupted


@pytest.fixture(name="tracking")
def tracking_fixture(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_json = tmp_path / "tracking/run.json"
    init_tracking(run_json, "cxrgen-test", tmp_path / "results")
    return run_json


def _client(run_json):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=json.loads(run_json.read_text())["tracking_uri"])


def _status(run_json, run_id):
    run = _client(run_json).get_run(run_id)
    return run.info.status, run.data.tags.get("cxrgen.failed_phase"), run.data.tags.get("cxrgen.error")


def _staged_output(job, out):
    tmp = job.staging(out)
    (tmp / "metrics.json").write_text("{}")
    return tmp


def test_finished_only_after_publish_and_artifacts(tracking, tmp_path):
    out = tmp_path / "model"
    with tracked_job(tracking, "train_x:", params={"lr": 0.1}, tags={"cxrgen.stage": "x"}) as job:
        job.record({"loss": 1.0, "nan": float("nan")}, step=1)
        job.publish(_staged_output(job, out), out, artifacts=["metrics.json"])
        run_id = job.run_id
    run = _client(tracking).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["lr"] == "0.1"
    assert run.data.metrics == {"loss": 1.0}  # non-finite values are not logged
    assert [a.path for a in _client(tracking).list_artifacts(run_id)] == ["metrics.json"]
    assert (out / "metrics.json").is_file() and not (tmp_path / "model.tmp").exists()
    assert [(h["step"], h["loss"]) for h in job.extra["history"]] == [(1, 1.0)]


def _fail_in_run(job, out):
    raise ValueError("bad batch")


def _kill_in_run(job, out):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises before this returns


def _interrupt_in_run(job, out):
    raise Interrupted("stop_after_steps")


def _fail_in_publish(job, out, monkeypatch):
    def broken(tmp, final):
        raise OSError("disk full")

    monkeypatch.setattr(job_module, "publish_dir", broken)
    job.publish(_staged_output(job, out), out, artifacts=["metrics.json"])


def _kill_in_publish(job, out, monkeypatch):
    def killed(tmp, final):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setattr(job_module, "publish_dir", killed)
    job.publish(_staged_output(job, out), out)


def _fail_in_artifacts(job, out, monkeypatch):
    def broken(path, artifact_path=None):
        raise ConnectionError("artifact store down")

    monkeypatch.setattr(job.run, "log_artifact", broken)
    job.publish(_staged_output(job, out), out, artifacts=["metrics.json"])


def _kill_in_artifacts(job, out, monkeypatch):
    def killed(path, artifact_path=None):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setattr(job.run, "log_artifact", killed)
    job.publish(_staged_output(job, out), out, artifacts=["metrics.json"])


def _never_publish(job, out):
    job.staging(out)


@pytest.mark.parametrize(("body", "status", "phase", "error"), [
    (_fail_in_run, "FAILED", "run", "ValueError"),
    (_kill_in_run, "KILLED", "run", "JobKilled"),
    (_interrupt_in_run, "KILLED", "run", "Interrupted"),
    (_fail_in_publish, "FAILED", "publish", "OSError"),
    (_kill_in_publish, "KILLED", "publish", "JobKilled"),
    (_fail_in_artifacts, "FAILED", "artifacts", "ConnectionError"),
    (_kill_in_artifacts, "KILLED", "artifacts", "JobKilled"),
    (_never_publish, "FAILED", "run", "RuntimeError"),
])
def test_status_rule_at_every_phase(tracking, tmp_path, monkeypatch, body, status, phase, error):
    out = tmp_path / "model"
    holder = {}
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(BaseException) as raised, tracked_job(tracking, "train_x:") as job:  # noqa: PT011
        holder["run_id"] = job.run_id
        if body.__code__.co_argcount == 3:
            body(job, out, monkeypatch)
        else:
            body(job, out)
    assert type(raised.value).__name__ == error
    assert _status(tracking, holder["run_id"]) == (status, phase, error)
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the job's handler is gone afterwards


def test_resubmitted_job_continues_its_run(tracking, tmp_path):
    state, out = tmp_path / "state", tmp_path / "model"
    with pytest.raises(Interrupted), tracked_job(tracking, "train_x:", state_dir=state) as first:
        first.log_metrics({"loss": 2.0}, 1)
        raise Interrupted("time limit")
    assert json.loads((state / RUN_ID_FILE).read_text())["run_id"] == first.run_id
    with tracked_job(tracking, "train_x:", state_dir=state) as second:
        second.log_metrics({"loss": 1.0}, 2)
        second.publish(_staged_output(second, out), out)
    assert second.run_id == first.run_id
    history = _client(tracking).get_metric_history(first.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]
    assert _status(tracking, first.run_id)[0] == "FINISHED"


def test_untracked_job_still_publishes_and_enforces_publish(tmp_path):
    out = tmp_path / "result.json"
    with tracked_job(None, "evaluate_x:") as job:
        staged = tmp_path / "result.json.tmp"
        staged.write_text("{}")
        job.publish(staged, out)
        job.log_metrics({"auroc": 0.5})  # no-op without tracking
    assert job.run_id is None and out.read_text() == "{}"
    with pytest.raises(RuntimeError, match="without publishing"), tracked_job(None, "evaluate_x:"):
        pass


def test_sigterm_from_outside_marks_the_run_killed(tracking, tmp_path):
    """A real time limit: another process sends SIGTERM to a job mid-run; the job exits non-zero with its run
    KILLED and its output unpublished."""
    script = tmp_path / "job.py"
    ready = tmp_path / "ready"
    script.write_text(textwrap.dedent(f"""
        import time
        from pathlib import Path
        from cxrgen.train.job import tracked_job

        with tracked_job({str(tracking)!r}, "train_x:", state_dir={str(tmp_path / "state")!r}) as job:
            Path({str(ready)!r}).write_text(job.run_id)
            time.sleep(120)
    """))
    child = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.time() + 60
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert ready.exists(), "child job did not start"
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) != 0
    assert _status(tracking, ready.read_text()) == ("KILLED", "run", "JobKilled")


def test_only_the_scaffold_opens_runs():
    """Every trainer, generator and evaluator goes through tracked_job: no other module opens an MLflow run (JobRun)
    or closes one itself, so the status rule cannot be bypassed."""
    import ast
    from pathlib import Path

    import cxrgen

    root = Path(cxrgen.__file__).parent
    allowed = {root / "train" / "job.py", root / "train" / "tracking.py"}
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
            if name in ("JobRun", "set_terminated", "finish_failed"):
                offenders.append(f"{path.relative_to(root)}:{node.lineno} {name}")
    assert not offenders, offenders
