"""Planning cost of the full-scale configuration: wall time and job count of `snakemake -n` with no data present.

    .venv/bin/python benchmarks/bench_plan.py
Prints the full-scale figures and the ratio against planning the demo config in the same run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def plan(*configfiles: str) -> tuple[float, int]:
    args = [sys.executable, "-m", "snakemake", "-n", "--forceall", "--quiet", "rules"]
    if configfiles:
        args += ["--configfile", *configfiles]
    started = time.perf_counter()
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    seconds = time.perf_counter() - started
    jobs = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            jobs += int(parts[1])
    return seconds, jobs


def main() -> None:
    demo_s, demo_jobs = plan()
    full_s, full_jobs = plan("config.yaml", "resources/config-full-scale.yaml")
    print(f"demo config:       {demo_jobs:5d} jobs planned in {demo_s:5.1f} s")
    print(f"full-scale config: {full_jobs:5d} jobs planned in {full_s:5.1f} s (no image read)")
    print(f"ratio full/demo:   {full_s / demo_s:.2f}x time for {full_jobs / demo_jobs:.1f}x jobs")


if __name__ == "__main__":
    main()
