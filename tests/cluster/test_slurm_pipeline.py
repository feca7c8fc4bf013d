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

CALIBRATION_STEPS = 20
TRAIN_SECONDS = 100  # uninterrupted training time aimed at: longer than one 1-minute SLURM time limit
TRACKED_RULES = {"train_clip", "train_autoencoder", "train_ldm", "train_sr", "finetune_sr", "generate", "train_dkim",
                 "train_evaluator", "run_downstream"}


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
    from cxrgen.stages.init_tracking import init_tracking

    tracking_json = tmp_path / "run.json"
    env = job_env(MLFLOW_TRACKING_URI=mlflow_server)
    subprocess.run([str(VENV_BIN / "python"), "-c", textwrap.dedent(f"""
        from pathlib import Path
        from cxrgen.stages.init_tracking import init_tracking
        init_tracking(Path({str(tracking_json)!r}), "cluster-concurrency", Path({str(tmp_path)!r}))
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


def _refresh_tracking(workdir: Path, configs: list[str], env: dict[str, str]) -> None:
    """Bring init_tracking up to date first: when its params (the whole config) changed, Snakemake 9.27.1 plans *only*
    init_tracking for a training target and exits 0 without training (reported to the lead)."""
    _finish(subprocess.Popen([SNAKEMAKE, "results/tracking/run.json", "--cores", "1", "--directory", str(workdir),
                              "--configfile", *configs], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True))


def _local_snakemake(workdir: Path, target: str, configs: list[str], env: dict[str, str]) -> subprocess.Popen:
    """The same rule with the local executor and the SLURM job's thread count (1, tests/config/slurm-test)."""
    _refresh_tracking(workdir, configs, env)
    return subprocess.Popen(["timeout", "-s", "KILL", "1800", SNAKEMAKE, target, "--forcerun", "train_autoencoder",
                             "--cores", "1", "--directory", str(workdir), "--set-threads", "train_autoencoder=1",
                             "--configfile", *configs],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=1800)
    assert process.returncode == 0, output[-5000:]
    return output


def test_time_limit_kill_resubmits_and_resumes_to_identical_weights(pipeline_run, mlflow_server, tmp_path):
    """train_autoencoder with a 1-minute limit is killed (TIMEOUT), resubmitted (retries) and resumes from its latest
    checkpoint; its weights equal an uninterrupted local run's. The step count is calibrated on this machine so the
    training needs ~TRAIN_SECONDS, i.e. at least one kill whatever the machine's speed."""
    from safetensors.torch import load_file

    assert (pipeline_run.workdir / "results/store/index.parquet").exists(), pipeline_run.failure()
    target = "results/models/autoencoder"
    env = job_env(MLFLOW_TRACKING_URI=mlflow_server)
    base_configs = [*TEST_CONFIGS, str(ROOT / "tests/config/timeout.yaml")]
    workdirs = {name: tmp_path / name for name in ("calibration", "killed", "reference")}
    for workdir in workdirs.values():
        _copy_workdir(pipeline_run.workdir, workdir)
        _drop(workdir / target)
        _drop(workdir / "results/state/train_autoencoder")

    def with_steps(name: str, steps: int) -> list[str]:
        overlay = tmp_path / f"{name}.yaml"
        overlay.write_text(f"autoencoder: {{max_steps: {steps}}}\n")
        return [*base_configs, str(overlay)]

    calibrated = _finish(_local_snakemake(workdirs["calibration"], target, with_steps("calibration", CALIBRATION_STEPS),
                                          env))
    assert (workdirs["calibration"] / target / "metrics.json").exists(), calibrated[-5000:]
    calibration = json.loads((workdirs["calibration"] / target / "metrics.json").read_text())
    steps = int(min(3000, max(40, TRAIN_SECONDS / calibration["seconds_per_step_this_run"])))
    configs = with_steps("timed", steps)

    # the uninterrupted reference runs alongside the SLURM run (both slow down: more certain to hit the limit)
    _refresh_tracking(workdirs["killed"], configs, env)
    local = _local_snakemake(workdirs["reference"], target, configs, env)
    profile = build_test_profile(tmp_path / "profile", retries=12,
                                 **{"set-resources": {"train_autoencoder": {"runtime": 1}}})
    run = run_snakemake_on_slurm(workdirs["killed"], profile, target, "--forcerun", "train_autoencoder",
                                 configs=configs, timeout=2400, env=env)
    _finish(local)
    assert run.returncode == 0, run.failure()

    attempts = sorted(run.jobs_of("train_autoencoder"), key=lambda j: int(j.job_id))
    states = [run.states[j.job_id] for j in attempts]
    assert len(attempts) >= 2 and any("TIMEOUT" in s for s in states[:-1]), (steps, states)
    assert "COMPLETED" in states[-1], states
    assert all(j.details.get("TimeLimit") == "00:01:00" for j in attempts), [j.details.get("TimeLimit")
                                                                             for j in attempts]
    killed, reference = workdirs["killed"] / target, workdirs["reference"] / target
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics["steps"] == steps and metrics["resumed_from"], metrics  # the last attempt resumed mid-way

    weights = load_file(killed / "diffusion_pytorch_model.safetensors")
    expected = load_file(reference / "diffusion_pytorch_model.safetensors")
    assert weights.keys() == expected.keys()
    different = [k for k in expected if not (weights[k] == expected[k]).all()]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"
    scale = json.loads((killed / "config.json").read_text())["scaling_factor"]
    assert scale == json.loads((reference / "config.json").read_text())["scaling_factor"]
    print(f"\n[cluster] time-limit test: {steps} steps "
          f"({calibration['seconds_per_step_this_run']:.2f} s/step calibrated), {len(attempts)} SLURM attempts, "
          f"states {[sorted(s) for s in states]}, last resumed from step {metrics['resumed_from']}, {run.seconds:.0f} s")
