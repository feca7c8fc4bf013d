"""Workflow-level tests: lint, SLURM-profile dry run, and one tiny end-to-end run of the data stages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg"}

pytestmark = pytest.mark.slow


def run(args, cwd=ROOT, timeout=1800, env=None):
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result.stdout + result.stderr


def test_lint():
    out = run([*SNAKEMAKE, "--lint"])
    assert "Lints for" not in out, out


def test_dry_run_with_slurm_profile_shows_full_dag():
    out = run([*SNAKEMAKE, "-n", "--forceall", "--profile", "slurm"])
    for rule in ("build_demo_sources", "index_source", "ingest_shard", "unify_store", "report_data"):
        assert rule in out
    assert "Using profile slurm" in out


def test_bad_config_fails_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest: {geometry: squash}\n")
    result = subprocess.run([*SNAKEMAKE, "-n", "--configfile", "config.yaml", str(bad)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "ingest.geometry" in result.stderr + result.stdout and "'crop'" in result.stderr + result.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    run([*SNAKEMAKE, "--cores", "2", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(ROOT / "config.yaml"), str(ROOT / "tests/config/test.yaml")],
        env={"OMP_NUM_THREADS": "1"})
    return workdir


def test_every_source_file_is_ingested_or_rejected(tiny_run):
    summary = json.loads((tiny_run / "results/store/summary.json").read_text())
    index = pd.read_parquet(tiny_run / "results/store/index.parquet")
    rejections = pd.read_parquet(tiny_run / "results/store/rejections.parquet")
    assert summary["total_ingested"] == len(index) > 0
    for source, counts in summary["sources"].items():
        root = tiny_run / "results/sources" / source
        on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
        manifest = pd.read_parquet(tiny_run / f"results/ingest/{source}/manifest.parquet")
        listed = manifest.loc[manifest["reject_reason"] != "missing_file", "rel_path"]
        assert set(listed) == on_disk and listed.is_unique, source
        assert counts["files_seen"] == len(on_disk) == counts["ingested"] + counts["rejected"], source
        ingested = set(index.loc[index["source"] == source, "image_id"])
        rejected = set(rejections.loc[(rejections["source"] == source) & (rejections["reason"] != "missing_file"),
                                      "image_id"])
        assert not ingested & rejected
        assert ingested | rejected == set(manifest.loc[manifest["reject_reason"] != "missing_file", "image_id"])
    assert rejections["reason"].isin(["unreadable", "no_pixel_data", "unsupported_photometric",
                                      "unsupported_transfer_syntax", "wrong_modality", "wrong_body_part",
                                      "multi_frame", "degenerate_image", "missing_metadata", "missing_file",
                                      "duplicate"]).all()
    assert len(rejections) > 0  # the demo corpus contains deliberately bad files


def test_splits_are_patient_wise_and_honour_official_lists(tiny_run):
    index = pd.read_parquet(tiny_run / "results/store/index.parquet")
    assert index.groupby("patient_pid")["split"].nunique().max() == 1
    official_test = index["official_split"] == "test"
    assert (index.loc[official_test, "split"] == "test").all()
    digests = json.loads((tiny_run / "results/store/splits/manifest_digests.json").read_text())
    assert sum(v["images"] for v in digests.values()) == len(index)


def test_store_images_are_readable(tiny_run):
    from cxrgen.store import ShardStore

    index = pd.read_parquet(tiny_run / "results/store/index.parquet")
    store = ShardStore(tiny_run / "results/store", index, verify=True)
    for position in range(0, len(index), max(1, len(index) // 10)):
        for res in (32, 64):
            image = store.read(position, res)
            assert image.shape == (res, res) and image.max() > image.min()


def _strings_in(path: Path) -> str:
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
        return "\n".join(df[c].astype(str).str.cat(sep="\n") for c in df.columns if df[c].dtype == object)
    if path.suffix in {".bin", ".png", ".jpg"}:
        return ""  # pixel containers written by our own encoder (no text chunks)
    return path.read_text(errors="ignore")


def test_no_phi_leaves_ingestion(tiny_run):
    canaries = set()
    for meta in (tiny_run / "results/sources/_meta").glob("*.json"):
        canaries |= set(json.loads(meta.read_text())["phi_canaries"])
    assert len(canaries) > 10  # the demo DICOMs really carry fake PHI
    for path in (tiny_run / "results").rglob("*"):
        if path.is_file() and "sources" not in path.relative_to(tiny_run / "results").parts[:1]:
            text = _strings_in(path)
            leaked = [c for c in canaries if c in text]
            assert not leaked, f"{path}: {leaked[:3]}"


def test_data_report_written(tiny_run):
    html = (tiny_run / "results/reports/data/data_report.html").read_text()
    assert "<img" in html and "mimic" in html


@pytest.fixture(scope="module", autouse=True)
def _cleanup_snakemake_locks():
    yield
    shutil.rmtree(ROOT / ".snakemake" / "locks", ignore_errors=True)


def test_full_scale_config_plans_without_data():
    out = run([*SNAKEMAKE, "-n", "--forceall", "--configfile", "resources/config-full-scale.yaml", "--quiet", "rules"])
    jobs = sum(int(line.split()[-1]) for line in out.splitlines()
               if line.strip() and line.split()[0] in {"ingest_shard", "index_source", "unify_store", "report_data"})
    assert 300 <= jobs < 2000, out[-2000:]
