"""``tracked_training``: a trainer's job on every rank (tracked on rank 0 alone, world size tagged), a timed fit, then
rank 0 alone publishes and the other ranks report their steps; read back from a real MLflow store."""

import json
import time

import pytest
from distributed_helpers import job_runs
from test_ldm import shared_tracking_json

from cxrgen.train.distributed import World
from cxrgen.train.job import RUN_ID_FILE, Trained, tracked_training
from cxrgen.train.loop import LoopResult


@pytest.fixture(name="tracking")
def tracking_fixture(tmp_path_factory):
    return shared_tracking_json(tmp_path_factory)


def _fit(result: LoopResult, seconds: float = 0.0, seen: list | None = None):
    def fit(job):
        if seen is not None:
            seen.append(job)
        job.record({"loss": 0.5}, step=result.steps_done)
        time.sleep(seconds)
        return result
    return fit


def _publisher(out, calls: list):
    def publish(trained: Trained) -> dict:
        calls.append(trained)
        tmp = trained.job.staging(out)
        (tmp / "metrics.json").write_text("{}")
        trained.job.publish(tmp, out, artifacts=["metrics.json"])
        return {"steps": trained.result.steps_done, "seconds_per_step": trained.seconds_per_step}
    return publish


def test_rank_zero_times_the_fit_then_publishes_in_a_tagged_run(tracking, tmp_path):
    out, calls, seen = tmp_path / "model", [], []
    metrics = tracked_training(tracking, "tracked_training:main", world=World(0, 2), params={"lr": 0.1},
                               tags={"cxrgen.stage": "x"}, state_dir=tmp_path / "state",
                               fit=_fit(LoopResult(steps_done=6, resumed_from=2), 0.2, seen),
                               publish=_publisher(out, calls))
    [trained] = calls
    assert seen == [trained.job] and trained.world == World(0, 2)
    assert trained.steps_this_run == 4 and trained.seconds >= 0.2
    assert metrics == {"steps": 6, "seconds_per_step": trained.seconds / 4}
    assert (out / "metrics.json").is_file()
    [run] = job_runs(tracking, "tracked_training:main")
    assert run.info.status == "FINISHED" and run.data.params["lr"] == "0.1"
    assert run.data.tags["cxrgen.stage"] == "x" and run.data.tags["cxrgen.world_size"] == "2"
    assert run.data.metrics == {"loss": 0.5}
    assert json.loads((tmp_path / "state" / RUN_ID_FILE).read_text())["run_id"] == run.info.run_id


def test_other_ranks_train_untracked_and_return_their_steps(tracking, tmp_path):
    out, calls, seen = tmp_path / "model", [], []
    answer = tracked_training(tracking, "tracked_training:rank1", world=World(1, 2), params={"lr": 0.1},
                              state_dir=tmp_path / "state", fit=_fit(LoopResult(steps_done=3, resumed_from=None),
                                                                     seen=seen),
                              publish=_publisher(out, calls))
    assert answer == {"rank": 1, "steps": 3}
    assert calls == [] and seen[0].run_id is None and not seen[0].main
    assert not out.exists() and not (tmp_path / "state" / RUN_ID_FILE).exists()
    assert job_runs(tracking, "tracked_training:rank1") == []


def test_a_fresh_run_counts_every_step_and_never_divides_by_zero(tmp_path):
    calls = []
    for name, resumed_from in (("fresh", None), ("done", 5)):
        tracked_training(None, "tracked_training:untracked", world=World(), publish=_publisher(tmp_path / name, calls),
                         fit=_fit(LoopResult(steps_done=5, resumed_from=resumed_from)))
    assert [c.steps_this_run for c in calls] == [5, 0]
    assert calls[1].seconds_per_step == calls[1].seconds  # nothing ran: per step = the whole (tiny) time


def test_a_failed_fit_or_an_unpublished_output_fails_the_run(tracking, tmp_path):
    def failing_fit(job):
        raise ValueError("bad batch")

    calls = []
    with pytest.raises(ValueError, match="bad batch"):
        tracked_training(tracking, "tracked_training:broken", world=World(), fit=failing_fit,
                         publish=_publisher(tmp_path / "model", calls))
    assert calls == []
    with pytest.raises(RuntimeError, match="without publishing"):
        tracked_training(tracking, "tracked_training:silent", world=World(), fit=_fit(LoopResult(2, None)),
                         publish=lambda trained: {})
    [broken], [silent] = job_runs(tracking, "tracked_training:broken"), job_runs(tracking, "tracked_training:silent")
    assert (broken.info.status, broken.data.tags["cxrgen.error"]) == ("FAILED", "ValueError")
    assert (silent.info.status, silent.data.tags["cxrgen.error"]) == ("FAILED", "RuntimeError")
