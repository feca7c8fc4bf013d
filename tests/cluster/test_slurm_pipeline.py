"""The cluster path, proven against a real SLURM on localhost: `snakemake --profile slurm` (with test overrides) runs
the tiny DAG, GPU rules land on the `gpu` partition with a GPU, several SLURM jobs log concurrently into one MLflow
server, and a training job killed at its time limit is resubmitted, resumes and ends bit-identical."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from cluster_helpers import (
    FAKE_GPUS,
    GPU_RULES,
    ROOT,
    SCRIPT,
    SNAKEMAKE,
    TEST_CONFIGS,
    VENV_BIN,
    build_test_profile,
    job_env,
    run_snakemake_on_slurm,
)

pytestmark = pytest.mark.cluster

TRACKED_RULES = {"train_clip", "train_autoencoder", "train_ldm", "train_sr", "finetune_sr", "generate"}


def _client(url: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=url)


def _child_runs(url: str, tracking_json: Path):
    info = json.loads(tracking_json.read_text())
    return _client(url).search_runs([info["experiment_id"]],
                                     filter_string=f"tags.mlflow.parentRunId = '{info['parent_run_id']}'",
                                     max_results=1000)


def test_bring_up_is_idempotent(slurm_cluster):
    started = time.perf_counter()
    again = subprocess.run([str(SCRIPT), "up", "--gpus", str(FAKE_GPUS)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert time.perf_counter() - started < 10, "a second `up` must be a no-op"
    status = subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    partitions = subprocess.run(["sinfo", "-h", "-o", "%P %G"], capture_output=True, text=True).stdout.split("\n")
    assert f"cpu* gpu:{FAKE_GPUS}" in partitions and f"gpu gpu:{FAKE_GPUS}" in partitions, partitions


def test_concurrent_mlflow_logging_from_slurm_jobs(slurm_cluster, mlflow_server, tmp_path):
    """Four SLURM jobs (two at a time on 2 cores) log params and 30 metric steps each into one tracking server."""
    from cxrgen.train.tracking import init_tracking

    tracking_json = tmp_path / "run.json"
    env = job_env(MLFLOW_TRACKING_URI=mlflow_server)
    subprocess.run([str(VENV_BIN / "python"), "-c", textwrap.dedent(f"""
        from pathlib import Path
        from cxrgen.train.tracking import init_tracking
        init_tracking(Path({str(tracking_json)!r}), "cluster-concurrency", {{"test": 1}}, Path({str(tmp_path)!r}))
        """)], check=True, env=env, timeout=120)
    assert init_tracking  # the helper under test (run in a subprocess so the server URI comes from the env)
    job_script = tmp_path / "log_job.py"
    job_script.write_text(textwrap.dedent(f"""
        import os, time
        from cxrgen.train.tracking import JobRun
        run = JobRun({str(tracking_json)!r}, "concurrency:" + os.environ["SLURM_JOB_ID"], params={{"lr": 1e-4}},
                     tags={{"snakemake.rule": "concurrency"}})
        for step in range(30):
            run.log_metrics({{"loss": 1.0 / (step + 1), "step_time": 0.1}}, step)
            time.sleep(0.1)
        run.finish()
        """))
    job_ids = []
    for _ in range(4):
        submitted = subprocess.run(["sbatch", "--parsable", "-p", "cpu", "-c", "1", "--mem", "500", "-t", "10",
                                    "-o", str(tmp_path / "slurm-%j.out"),
                                    "--wrap", f"{VENV_BIN / 'python'} {job_script}"],
                                   capture_output=True, text=True, env=env, timeout=60)
        assert submitted.returncode == 0, submitted.stderr
        job_ids.append(submitted.stdout.strip().split(";")[0])
    deadline = time.time() + 600
    while subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-t", "PENDING,RUNNING,COMPLETING"],
                         capture_output=True, text=True).stdout.strip():
        assert time.time() < deadline, "SLURM jobs did not finish in 10 minutes"
        time.sleep(2)
    outputs = "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))

    runs = _child_runs(mlflow_server, tracking_json)
    assert len(runs) == 4, outputs
    assert sorted(r.data.tags["slurm.job_id"] for r in runs) == sorted(job_ids)
    client = _client(mlflow_server)
    for run in runs:
        assert run.info.status == "FINISHED", outputs
        assert run.data.params["lr"] == "0.0001"
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 30
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    overlapping = sum(1 for (_, end), (start, _) in zip(spans, spans[1:], strict=False) if start < end)
    assert overlapping >= 1, f"no two jobs logged at the same time: {spans}"


def test_pipeline_runs_through_slurm(pipeline_run):
    assert pipeline_run.returncode == 0, pipeline_run.failure()
    assert "Using profile" in pipeline_run.output and pipeline_run.jobs
    assert (pipeline_run.workdir / "results/store/index.parquet").exists()
    not_completed = {j: s for j, s in pipeline_run.states.items() if "COMPLETED" not in s}
    assert not not_completed, not_completed


def test_gpu_rules_land_on_gpu_partition_with_a_gpu(pipeline_run):
    assert pipeline_run.jobs, pipeline_run.failure()
    gpu_jobs = [job for job in pipeline_run.jobs.values() if job.rule in GPU_RULES]
    cpu_jobs = [job for job in pipeline_run.jobs.values() if job.rule not in GPU_RULES]
    assert gpu_jobs, (f"no GPU rule ({sorted(GPU_RULES)}) ran on SLURM; rules seen: "
                      f"{sorted({j.rule for j in pipeline_run.jobs.values()})} (training rules not in the DAG?)")
    assert cpu_jobs
    for job in gpu_jobs:
        assert job.partition == "gpu" and job.gpus_requested >= 1, (job.rule, job.partition, job.details)
    for job in cpu_jobs:
        assert job.partition == "cpu" and job.gpus_requested == 0, (job.rule, job.partition, job.details)


def test_pipeline_jobs_log_to_the_shared_server_tagged_with_slurm_job_ids(pipeline_run, mlflow_server):
    tracking_json = pipeline_run.workdir / "results/tracking/run.json"
    assert tracking_json.exists(), pipeline_run.failure()
    assert json.loads(tracking_json.read_text())["tracking_uri"] == mlflow_server
    runs = _child_runs(mlflow_server, tracking_json)
    tracked_jobs = {job.job_id: job for job in pipeline_run.jobs.values() if job.rule in TRACKED_RULES}
    assert tracked_jobs, "no tracked rule ran on SLURM"
    by_job_id = {r.data.tags.get("slurm.job_id"): r for r in runs}
    for job_id, job in tracked_jobs.items():
        assert job_id in by_job_id, f"{job.rule} (SLURM job {job_id}) has no MLflow child run: {sorted(by_job_id)}"
        assert by_job_id[job_id].data.tags["snakemake.job"].startswith(job.rule)
        assert by_job_id[job_id].info.status == "FINISHED"


def _copy_workdir(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns("locks", "incomplete", "slurm_logs"))
    return dest


def _drop(path: Path) -> None:
    if path.exists():
        for p in [path, *path.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
        shutil.rmtree(path)


def test_time_limit_kill_resubmits_and_resumes_to_identical_weights(pipeline_run, mlflow_server, tmp_path):
    """train_autoencoder with a 1-minute limit is killed (TIMEOUT), resubmitted (retries) and resumes from its latest
    checkpoint; its weights equal an uninterrupted local run's."""
    from safetensors.torch import load_file

    assert (pipeline_run.workdir / "results/store/index.parquet").exists(), pipeline_run.failure()
    target = "results/models/autoencoder"
    configs = [*TEST_CONFIGS, str(ROOT / "tests/config/timeout.yaml")]
    env = job_env(MLFLOW_TRACKING_URI=mlflow_server)
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    for workdir in (killed, reference):
        _copy_workdir(pipeline_run.workdir, workdir)
        _drop(workdir / target)
        _drop(workdir / "results/state/train_autoencoder")

    # the uninterrupted run: same rule, same thread count, local executor, in parallel with the SLURM run
    local = subprocess.Popen(["timeout", "-s", "KILL", "1800", SNAKEMAKE, target, "--cores", "1", "--directory",
                              str(reference), "--set-threads", "train_autoencoder=1", "--configfile", *configs],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    profile = build_test_profile(tmp_path / "profile", retries=12,
                                 **{"set-resources": {"train_autoencoder": {"runtime": 1}}})
    run = run_snakemake_on_slurm(killed, profile, target, configs=configs, timeout=2400, env=env)
    local_output, _ = local.communicate(timeout=1800)
    assert local.returncode == 0, local_output[-5000:]
    assert run.returncode == 0, run.failure()

    attempts = sorted(run.jobs_of("train_autoencoder"), key=lambda j: int(j.job_id))
    states = [run.states[j.job_id] for j in attempts]
    assert len(attempts) >= 2 and any("TIMEOUT" in s for s in states[:-1]), states
    assert all(j.details.get("TimeLimit") == "00:01:00" for j in attempts), [j.details.get("TimeLimit")
                                                                             for j in attempts]
    metrics = json.loads((killed / target / "metrics.json").read_text())
    assert metrics["resumed_from"], metrics  # the last attempt started from a checkpoint, not from step 0

    weights = load_file(killed / target / "diffusion_pytorch_model.safetensors")
    expected = load_file(reference / target / "diffusion_pytorch_model.safetensors")
    assert weights.keys() == expected.keys()
    different = [k for k in expected if not (weights[k] == expected[k]).all()]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"
    scale = json.loads((killed / target / "config.json").read_text())["scaling_factor"]
    assert scale == json.loads((reference / target / "config.json").read_text())["scaling_factor"]
    print(f"\n[cluster] time-limit test: {len(attempts)} SLURM attempts, states {states}, "
          f"resumed from step {metrics['resumed_from']}, {run.seconds:.0f} s")
