"""Planning cost of the full-scale configuration: wall time and job count of `snakemake -n` with no data present.

    .venv/bin/python benchmarks/bench_plan.py
Prints the full-scale figures and the ratio against planning the demo config in the same run, then the issue-5 check:
a dry run in a scratch directory holding *source indexes built from the real metadata CSVs that ship with
torchxrayvision* (NIH 112k, CheXpert 223k, PadChest 161k, VinDr 15k rows; images absent) must take < 30 s and plan
< 2,000 jobs. The DAG is static (fixed shard counts; nothing reads a manifest or an image at parse time), so the plan
is the same with or without these indexes; the check proves it with real-sized tables on disk.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAN_SECONDS_LIMIT, PLAN_JOBS_LIMIT = 30.0, 2000  # issue 5
FULL_SCALE = ("config/full/all.yaml", "config/full/cheff.yaml", "config/full/diffcxr.yaml", "config/full/medcodi.yaml",
              "config/full/ddlcxr.yaml")  # every paper: the whole reproduction


def plan(*configfiles: str, workdir: Path | None = None, forceall: bool = True) -> tuple[float, int]:
    args = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules"] + (["--forceall"] if forceall else [])
    if workdir is not None:
        args += ["--directory", str(workdir)]
    if configfiles:
        args += ["--configfile", *(str(ROOT / c) for c in configfiles)]
    started = time.perf_counter()
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    seconds = time.perf_counter() - started
    jobs = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            jobs += int(parts[1])
    return seconds, jobs


def write_csv_indexes(workdir: Path) -> dict[str, int]:
    """Source manifests (the output of rule index_source) from torchxrayvision's shipped metadata CSVs, one row per
    image; only the identifying columns are filled (planning never reads them)."""
    import pandas as pd
    import torchxrayvision

    from cxrgen.sources.base import MANIFEST_COLUMNS

    data = Path(torchxrayvision.__file__).parent / "data"
    tables = {  # source -> (csv, key column, relative path of the image)
        "nih": ("Data_Entry_2017_v2020.csv.gz", "Image Index", lambda k: f"images/{k}", "png"),
        "chexpert": ("chexpert_train.csv.gz", "Path", lambda k: k.split("/", 1)[-1], "jpg"),
        "padchest": ("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", "ImageID", lambda k: k, "png"),
        "vindr": ("vinbigdata-train.csv.gz", "image_id", lambda k: f"train/{k}.dicom", "dicom"),
    }
    rows = {}
    for source, (csv, key, rel_path, fmt) in tables.items():
        keys = pd.read_csv(data / csv, usecols=[key], low_memory=False)[key].astype(str).drop_duplicates()
        frame = pd.DataFrame({col: pd.Series([None] * len(keys), dtype="object") for col in MANIFEST_COLUMNS})
        frame["source"], frame["source_key"] = source, keys.to_numpy()
        frame["rel_path"] = [rel_path(k) for k in keys]
        frame["file_format"] = fmt
        out = workdir / "results" / "ingest" / source / "manifest.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(out, index=False)
        rows[source] = len(frame)
    return rows


def main() -> None:
    demo_s, demo_jobs = plan()
    full_s, full_jobs = plan("config.yaml", *FULL_SCALE)
    print(f"demo config:       {demo_jobs:5d} jobs planned in {demo_s:5.1f} s")
    print(f"full-scale config: {full_jobs:5d} jobs planned in {full_s:5.1f} s (no image read)")
    print(f"ratio full/demo:   {full_s / demo_s:.2f}x time for {full_jobs / demo_jobs:.1f}x jobs")
    with tempfile.TemporaryDirectory() as scratch:
        rows = write_csv_indexes(Path(scratch))
        idx_s, idx_jobs = plan("config.yaml", *FULL_SCALE, workdir=Path(scratch),
                               forceall=False)
    print("source indexes from torchxrayvision CSVs: " + ", ".join(f"{k} {v:,}" for k, v in rows.items())
          + f" rows ({sum(rows.values()):,}); images absent")
    print(f"full-scale dry run with those indexes: {idx_jobs:5d} jobs planned in {idx_s:5.1f} s "
          f"(limits: < {PLAN_SECONDS_LIMIT:.0f} s, < {PLAN_JOBS_LIMIT} jobs)")
    if idx_s >= PLAN_SECONDS_LIMIT or idx_jobs >= PLAN_JOBS_LIMIT:
        sys.exit("planning exceeds the issue-5 limits")


if __name__ == "__main__":
    main()
