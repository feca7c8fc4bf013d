"""Helpers for the cluster tests: a real single-node SLURM on localhost (scripts/slurm-local.sh), one MLflow tracking
server on 127.0.0.1, the test profile (slurm/config.yaml + tests/config/slurm-test overrides) and a recorder of the
jobs SLURM actually ran (squeue polled during the run, plus `scontrol show job` for each job id).

Run: `pytest -m cluster tests/cluster` as root on Debian/Ubuntu. Without root/apt the tests skip locally and FAIL when
CI=true (the cluster path must never be silently untested on CI).
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "slurm-local.sh"
VENV_BIN = Path(sys.executable).parent
SNAKEMAKE = str(VENV_BIN / "snakemake")
TEST_CONFIGS = [str(ROOT / "config.yaml"), str(ROOT / "tests" / "config" / "test.yaml")]
FAKE_GPUS = 2  # two GPU jobs can run side by side (2 cores): concurrent MLflow logging from the pipeline itself
UNAVAILABLE = 3  # slurm-local.sh exit status: cannot install/start SLURM here (not root, no apt, apt failed)

# Rules that must run on the GPU partition with a GPU (slurm/config.yaml); everything else on the default `cpu`.
def _gpu_rules() -> set[str]:
    resources = yaml.safe_load((ROOT / "slurm" / "config.yaml").read_text())["set-resources"]
    return {rule for rule, res in resources.items() if isinstance(res, dict) and res.get("gpu")}


GPU_RULES = _gpu_rules()
assert {"train_ldm", "generate", "train_evaluator"} <= GPU_RULES, GPU_RULES


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str):
    if on_ci():
        pytest.fail(f"SLURM is required on CI but unavailable: {reason}", pytrace=False)
    pytest.skip(f"no local SLURM: {reason}")


def job_env(**extra: str) -> dict[str, str]:
    """Environment for snakemake and (through sbatch --export=ALL) for the jobs: the venv first on PATH."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}
    env.pop("SNAKEMAKE_PROFILE", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _merge_profile(real: dict, overrides: dict) -> dict:
    merged = copy.deepcopy(real)
    for key, value in overrides.items():
        if key in ("default-resources", "set-threads"):
            merged[key] = {**merged.get(key, {}), **value}
        elif key == "set-resources":
            rules = merged.setdefault(key, {})
            everyone = value.get("*", {})
            for rule in rules:
                rules[rule] = {**rules[rule], **everyone}
            for rule, resources in value.items():
                if rule != "*":
                    rules[rule] = {**rules.get(rule, {}), **resources}
        else:
            merged[key] = value
    return merged


def build_test_profile(dest: Path, **cli_overrides) -> Path:
    """The real slurm/config.yaml with tests/config/slurm-test/config.yaml layered on top, written to ``dest``."""
    real = yaml.safe_load((ROOT / "slurm" / "config.yaml").read_text())
    overrides = yaml.safe_load((ROOT / "tests" / "config" / "slurm-test" / "config.yaml").read_text())
    profile = _merge_profile(_merge_profile(real, overrides), cli_overrides)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


@dataclass
class SlurmJob:
    job_id: str
    partition: str
    comment: str  # the plugin's "rule_<rule>_wildcards_<wc>"
    details: dict[str, str] = field(default_factory=dict)  # `scontrol -o show job` key=value pairs

    @property
    def rule(self) -> str:
        return self.comment.removeprefix("rule_").split("_wildcards_")[0]

    @property
    def gpus_requested(self) -> int:
        """GPUs asked for, from TresPerJob (--gpus) or TresPerNode (--gres)."""
        total = 0
        for key in ("TresPerJob", "TresPerNode"):
            for item in self.details.get(key, "").split(","):
                parts = item.split(":")
                if "gpu" in parts and parts[-1].isdigit():
                    total += int(parts[-1])
        return total


class JobRecorder:
    """Polls `squeue -t all` during a run and keeps every job it sees (SLURM forgets them MinJobAge after they end)."""

    def __init__(self, interval: float = 1.0):
        self.interval, self.jobs, self.states = interval, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._known_before = set(self._squeue())

    def _squeue(self) -> dict[str, tuple[str, str, str]]:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%P|%k|%T"], capture_output=True, text=True,
                             timeout=30).stdout
        rows = {}
        for line in out.splitlines():
            job_id, partition, comment, state = line.strip().split("|", 3)
            rows[job_id] = (partition, comment, state)
        return rows

    def _poll(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(subprocess.SubprocessError, ValueError):
                for job_id, (partition, comment, state) in self._squeue().items():
                    if job_id in self._known_before:
                        continue
                    self.states.setdefault(job_id, set()).add(state)
                    if job_id not in self.jobs:
                        self.jobs[job_id] = SlurmJob(job_id, partition, comment, scontrol_job(job_id))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=60)
        # a last look, and final states for every job seen
        with contextlib.suppress(subprocess.SubprocessError, ValueError):
            for job_id, (partition, comment, state) in self._squeue().items():
                if job_id in self._known_before:
                    continue
                self.states.setdefault(job_id, set()).add(state)
                self.jobs.setdefault(job_id, SlurmJob(job_id, partition, comment, scontrol_job(job_id)))


def scontrol_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    details = {}
    for token in out.split():
        key, sep, value = token.partition("=")
        if sep:
            details[key] = value
    return details


@dataclass
class SnakemakeRun:
    workdir: Path
    returncode: int
    output: str
    seconds: float
    jobs: dict[str, SlurmJob]
    states: dict[str, set[str]]

    def jobs_of(self, rule: str) -> list[SlurmJob]:
        return [job for job in self.jobs.values() if job.rule == rule]

    def failure(self) -> str:
        logs = sorted((self.workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
        tails = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-1500:]}" for p in logs[-4:])
        return f"snakemake exited {self.returncode} after {self.seconds:.0f} s\n{self.output[-6000:]}\n{tails}"


def run_snakemake_on_slurm(workdir: Path, profile: Path, *args: str, configs=TEST_CONFIGS, timeout: int = 1800,
                           env: dict[str, str] | None = None) -> SnakemakeRun:
    """`snakemake --profile <test profile>` from the repo root into ``workdir``, under a hard `timeout -s KILL`."""
    cmd = ["timeout", "-s", "KILL", str(timeout), SNAKEMAKE, "--profile", str(profile), "--directory", str(workdir),
           *args, "--configfile", *configs]
    started = time.perf_counter()
    with JobRecorder() as recorder:
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env or job_env())
    seconds = time.perf_counter() - started
    print(f"\n[cluster] {' '.join(args) or 'default target'}: {seconds:.0f} s, {len(recorder.jobs)} SLURM jobs,"
          f" exit {result.returncode}")
    return SnakemakeRun(workdir, result.returncode, result.stdout + result.stderr, seconds, recorder.jobs,
                        recorder.states)
