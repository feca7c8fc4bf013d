"""Session fixtures for the cluster tests (see cluster_helpers): the local SLURM, one MLflow server, and one run of
the tiny DAG through the SLURM executor shared by the assertions."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from cluster_helpers import (
    FAKE_GPUS,
    SCRIPT,
    UNAVAILABLE,
    VENV_BIN,
    SnakemakeRun,
    build_test_profile,
    free_port,
    job_env,
    run_snakemake_on_slurm,
    unavailable,
)


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: needs a real SLURM (scripts/slurm-local.sh up; root + apt)")


@pytest.fixture(scope="session")
def slurm_cluster(request):
    """Bring up the local SLURM once per session; take it down at the end even if bring-up failed half-way
    (unless it was already running before the session: then it is left as found)."""
    if sys.platform != "linux" or shutil.which("bash") is None:
        unavailable("needs Linux with bash")
    already_up = subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True).returncode == 0
    if not already_up:
        request.addfinalizer(lambda: subprocess.run([str(SCRIPT), "down"], capture_output=True, timeout=120))
    started = time.perf_counter()
    up = subprocess.run([str(SCRIPT), "up", "--gpus", str(FAKE_GPUS)], capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    if up.returncode == UNAVAILABLE:
        unavailable(up.stderr.strip().splitlines()[-1] if up.stderr.strip() else "slurm-local.sh up failed")
    assert up.returncode == 0, f"slurm-local.sh up failed:\n{up.stdout}\n{up.stderr}"
    print(f"\n[cluster] slurm-local.sh up: {seconds:.1f} s (already running: {already_up})")
    return {"bring_up_seconds": seconds}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One `mlflow server` on 127.0.0.1 for every job of the session; its whole process group is stopped at the end."""
    home = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
           "--artifacts-destination", str(home / "artifacts")]
    log = open(home / "server.log", "w")  # noqa: SIM115 - closed in the finaliser below
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env=job_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    try:
        started = time.perf_counter()
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
            assert server.poll() is None, (home / "server.log").read_text()[-3000:]
            assert time.perf_counter() - started < 120, "mlflow server not healthy after 120 s"
            time.sleep(0.5)
        print(f"\n[cluster] mlflow server healthy after {time.perf_counter() - started:.1f} s at {url}")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def pipeline_run(slurm_cluster, mlflow_server, tmp_path_factory) -> SnakemakeRun:
    """The tiny end-to-end DAG through the SLURM executor, jobs logging into the shared MLflow server."""
    workdir = tmp_path_factory.mktemp("e2e")
    profile = build_test_profile(tmp_path_factory.mktemp("profile"))
    return run_snakemake_on_slurm(workdir, profile, timeout=2400,
                                  env=job_env(MLFLOW_TRACKING_URI=mlflow_server))
