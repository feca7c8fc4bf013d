"""The tracked-job scaffold on the ranks of a data-parallel job: a rank other than 0 trains untracked and may not write
outputs; a SIGTERM to the launcher reaches the ranks and rank 0's run ends KILLED; a second SIGTERM (SLURM signals
every process, the launcher forwards it too) cannot interrupt the recording of the status; the ranks write to the
launcher's current stderr (the job's log)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxrgen.stages.init_tracking import init_tracking
from cxrgen.train.distributed import current_world, is_main_process, launch
from cxrgen.train.job import RUN_ID_FILE, JobKilled, tracked_job


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_ranks")
    init_tracking(root / "run.json", "cxrgen-test", root)
    return root / "run.json"


def _runs(tracking_json, job_name):
    from mlflow.tracking import MlflowClient

    info = json.loads(Path(tracking_json).read_text())
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    return client.search_runs([info["experiment_id"]], filter_string=f"tags.`snakemake.job` = '{job_name}'")


def test_a_non_main_rank_trains_untracked_and_may_not_write_outputs(tracking, tmp_path):
    state, out = tmp_path / "state", tmp_path / "model"
    staged = tmp_path / "staged"
    staged.mkdir()
    with tracked_job(tracking, "train_x:rank1", params={"lr": 0.1}, state_dir=state, main=False) as job:
        assert job.run_id is None and not job.main
        job.record({"loss": 1.0}, step=1)  # (the loop calls on_log on rank 0 only; harmless here)
        with pytest.raises(RuntimeError, match="rank 0"):
            job.staging(out)
        with pytest.raises(RuntimeError, match="rank 0"):
            job.publish(staged, out)
    # the body ended without publishing, and that is no error on a non-main rank
    assert not out.exists() and not (tmp_path / "model.tmp").exists() and not (state / RUN_ID_FILE).exists()
    assert _runs(tracking, "train_x:rank1") == []
    with pytest.raises(ValueError, match="bad batch"), tracked_job(tracking, "train_x:rank1", main=False):
        raise ValueError("bad batch")
    assert _runs(tracking, "train_x:rank1") == []


def test_a_second_sigterm_does_not_interrupt_a_stopping_job(tracking):
    cleaned_up = []
    with pytest.raises(JobKilled), tracked_job(tracking, "train_x:twice") as job:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this returns
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # the same signal again while the job is stopping: ignored
            time.sleep(0.2)
            cleaned_up.append(job.run_id)
    assert cleaned_up
    [run] = _runs(tracking, "train_x:twice")
    assert run.info.status == "KILLED" and run.data.tags["cxrgen.error"] == "JobKilled"


def hold_a_tracked_job(tracking_json, ready_dir):
    """Every rank: the job scaffold (tracked on rank 0) around work that lasts until the job is stopped."""
    with tracked_job(tracking_json, "train_x:forwarded", main=is_main_process()):
        (Path(ready_dir) / f"{current_world().rank}.pid").write_text(str(os.getpid()))
        time.sleep(600)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_sigterm_to_the_launcher_reaches_the_ranks_and_rank_0_records_killed(tracking, tmp_path):
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            "from test_tracked_job_ranks import hold_a_tracked_job; from cxrgen.train.distributed import launch; "
            f"launch(hold_a_tracked_job, 2, {str(tracking)!r}, {str(tmp_path)!r})")
    launcher = subprocess.Popen([sys.executable, "-c", code],
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    pids = []
    try:
        deadline = time.time() + 180
        while len(list(tmp_path.glob("*.pid"))) < 2:
            assert time.time() < deadline and launcher.poll() is None, "ranks did not start"
            time.sleep(0.2)
        pids = [int(f.read_text()) for f in tmp_path.glob("*.pid")]
        launcher.send_signal(signal.SIGTERM)  # what SLURM's time limit or scancel does to the job's process
        assert launcher.wait(timeout=120) != 0
        assert not any(_alive(pid) for pid in pids)
    finally:
        launcher.kill()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    [run] = _runs(tracking, "train_x:forwarded")
    assert run.info.status == "KILLED" and run.data.tags["cxrgen.error"] == "JobKilled"


def say(word):
    print(f"{word} from rank {current_world().rank}", file=sys.stderr, flush=True)


def test_the_ranks_write_to_the_launchers_current_stderr(tmp_path):
    """An adapter's cxrgen.logutil.setup_logging makes the job's log file sys.stderr: the ranks' logs, progress bars
    and tracebacks belong there too, not in the stderr the process started with."""
    log = tmp_path / "job.log"
    saved = sys.stderr
    with open(log, "a", buffering=1) as stream:
        sys.stderr = stream
        try:
            launch(say, 2, "hello")
        finally:
            sys.stderr = saved
    assert sorted(line for line in log.read_text().splitlines() if "hello" in line) == [
        "hello from rank 0", "hello from rank 1"]
