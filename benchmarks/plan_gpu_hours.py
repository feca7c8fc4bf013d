"""Expected GPU-hours per rule of a full-scale plan, shown by a dry run (no data, no credentials, no GPU).

    .venv/bin/python benchmarks/plan_gpu_hours.py --paper cheff            # config/full/all.yaml + cheff.yaml
    .venv/bin/python benchmarks/plan_gpu_hours.py --paper cheff diffcxr    # several papers in one plan
    .venv/bin/python benchmarks/plan_gpu_hours.py --configfile my.yaml     # any overlays on config.yaml

Runs `snakemake -n --forceall --profile slurm` with config.yaml + the overlays, reads the planned jobs and their GPU
requests from its output, and prints one row per GPU rule: jobs, GPUs per job, estimated GPU-hours per job and in
total (cxrgen.compute: counted forward FLOPs x steps at an assumed 60 TFLOP/s per GPU; the assumptions are printed).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from cxrgen.compute import (
    ASSUMED_TFLOPS,
    REPORTED,
    format_table,
    gpu_hours_table,
    measure_cpu_gflops_per_s,
    parse_dry_run,
)
from cxrgen.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ("cheff", "diffcxr", "medcodi", "ddlcxr")


def configfiles_of(papers: list[str], extra: list[str]) -> list[str]:
    return ["config.yaml", *(["config/full/all.yaml"] if papers else []),
            *(f"config/full/{paper}.yaml" for paper in papers), *extra]


def dry_run(configfiles: list[str]) -> str:
    args = [sys.executable, "-m", "snakemake", "-n", "--forceall", "--profile", "slurm", "--configfile",
            *configfiles]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", nargs="*", choices=PAPERS, default=[], help="config/full/<paper>.yaml overlays")
    parser.add_argument("--configfile", nargs="*", default=[], help="further overlays (paths from the repo root)")
    parser.add_argument("--calibrate", action="store_true",
                        help="also time demo-size LDM training steps on this CPU: its GFLOP/s and the implied CPU->GPU "
                             "factor of the assumed GPU throughput")
    args = parser.parse_args()
    configfiles = configfiles_of(args.paper, args.configfile)
    rows = gpu_hours_table(parse_dry_run(dry_run(configfiles)), load_config(*(ROOT / f for f in configfiles)))
    print("plan: snakemake -n --profile slurm --configfile " + " ".join(configfiles))
    print(format_table(rows))
    for branch, (hours, source) in REPORTED.items():
        if branch in args.paper:
            estimated = sum(r.gpu_hours for r in rows if r.rule in MEDCODI_RULES)
            print(f"reported: {hours:,.0f} GPU-h ({source}); estimated for the branch's rules: {estimated:,.0f} GPU-h")
    if args.calibrate:
        cpu = measure_cpu_gflops_per_s(load_config(ROOT / "config.yaml"))
        print(f"this CPU: {cpu:,.1f} GFLOP/s on demo LDM training steps; the assumed {ASSUMED_TFLOPS:g} TFLOP/s per GPU "
              f"is {ASSUMED_TFLOPS * 1e3 / cpu:,.0f}x that")


MEDCODI_RULES = {"train_prompt_encoders", "embed_prompts", "train_medcodi_ldm", "train_text_vae",
                 "train_report_diffusion", "generate_medcodi_reports", "generate_medcodi_images",
                 "evaluate_medcodi_images", "train_joint_alignment", "evaluate_joint_generation",
                 "generate_medcodi_twins", "run_view_downstream"}

if __name__ == "__main__":
    main()
