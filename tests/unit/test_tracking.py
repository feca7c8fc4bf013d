import json

from cxrgen.stages.init_tracking import init_tracking
from cxrgen.train.tracking import JobRun


def test_parent_child_runs_and_resume(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    run_json = tmp_path / "tracking/run.json"
    info = init_tracking(run_json, "cxrgen-test", tmp_path / "results")
    assert info["tracking_uri"].startswith("sqlite:///") and json.loads(run_json.read_text()) == info

    job = JobRun(run_json, "train_ldm:", params={"loop": {"lr": 1e-4, "steps": 3}}, tags={"snakemake.rule": "train_ldm"})
    job.log_metrics({"loss": 0.5}, step=1)
    job.finish("KILLED")
    again = JobRun(run_json, "train_ldm:", run_id=job.run_id)  # resumed attempt continues the same run
    again.log_metrics({"loss": 0.25}, step=2)
    again.finish()

    run = again.client.get_run(job.run_id)
    assert run.data.tags["mlflow.parentRunId"] == info["parent_run_id"]
    assert run.data.tags["slurm.job_id"] == "4242"
    assert run.data.params["loop.lr"] == "0.0001"
    history = again.client.get_metric_history(job.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.25)]
    assert run.info.status == "FINISHED"


def test_param_and_metric_keys_outside_mlflow_charset_are_made_valid(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_json = tmp_path / "tracking/run.json"
    init_tracking(run_json, "cxrgen-test", tmp_path / "results")
    job = JobRun(run_json, "generate_medcodi_images:", params={"n/L+T->F": 16, "view": "frontal"})
    job.log_metrics({"fid/F+T->L": 12.5}, step=0)
    job.finish()
    run = job.client.get_run(job.run_id)
    assert run.data.params["n/L_T-_F"] == "16" and run.data.params["view"] == "frontal"
    assert run.data.metrics["fid/F_T-_L"] == 12.5
