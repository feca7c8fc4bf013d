"""Workflow-level tests: lint, SLURM-profile dry run, and one tiny end-to-end run of the data stages."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    """No lints except the per-rule conda one: the pipeline runs in one pinned environment per hardware class
    (envs/), activated before snakemake, instead of a multi-GB CUDA torch copy per rule."""
    result = subprocess.run([*SNAKEMAKE, "--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr  # exit status is 1 whenever any lint is reported
    findings = [line.strip() for line in out.splitlines() if line.startswith("    * ")]
    assert findings, "expected snakemake --lint output"
    assert set(findings) == {"* Specify a conda environment or container for each rule.:"}, out


def test_dry_run_with_slurm_profile_shows_full_dag():
    out = run([*SNAKEMAKE, "-n", "--forceall", "--profile", "slurm"])
    for rule in ("build_demo_sources", "index_source", "ingest_shard", "unify_store", "report_data", "init_tracking",
                 "train_clip", "train_autoencoder", "cache_latents", "train_ldm", "train_sr", "finetune_sr",
                 "build_prompts", "generate", "train_clip_avatls", "report_avatls", "train_evaluator",
                 "run_downstream", "report_downstream", "filter_noise", "evaluate_labeler",
                 "extract_real_features", "extract_generated_features", "evaluate_distribution",
                 "evaluate_fidelity", "evaluate_memorisation", "evaluate_reconstruction", "write_summary",
                 "sample_ldm_grid", "sample_dkim_grid", "report_training", "write_model_cards", "build_icu_cohort",
                 "train_ddl_ldm",
                 "generate_ddl_latents", "train_icu_predictor", "evaluate_icu", "evaluate_ddl_images", "report_icu",
                 "build_study_table", "train_prompt_encoders", "embed_prompts"):
        assert rule in out
    assert "Using profiles slurm" in out
    blocks = {block.split(":", 1)[0].strip(): block for block in out.split("rule ")[1:]}
    for rule in ("train_clip", "train_autoencoder", "train_ldm", "train_sr", "finetune_sr", "generate",
                 "train_clip_avatls", "train_evaluator", "run_downstream", "extract_real_features",
                 "extract_generated_features", "evaluate_reconstruction", "sample_ldm_grid", "sample_dkim_grid",
                 "evaluate_ddl_images", "train_ddl_ldm", "train_prompt_encoders"):
        assert "slurm_partition=gpu" in blocks[rule] and "gpu=1" in blocks[rule], rule
    for rule in ("ingest_shard", "unify_store", "evaluate_distribution", "evaluate_fidelity", "evaluate_memorisation"):
        assert "slurm_partition=cpu" in blocks[rule] and "gpu=" not in blocks[rule], rule


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
        return "\n".join(df[c].astype(str).str.cat(sep="\n") for c in df.columns  # text and integer columns (ids)
                         if not pd.api.types.is_float_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]))
    if path.suffix == ".npz":  # numpy stores strings as UTF-32: read the arrays, not the bytes
        with np.load(path, allow_pickle=False) as data:
            return "\n".join("\n".join(map(str, data[k].ravel())) for k in data.files
                             if data[k].dtype.kind in "USiu")
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


#: Shareable outputs (relative to results/): the unified store's index, summary, split manifests and rejection list,
#: the data report, and the MLflow store (params, tags). Source paths live only under results/ingest/.
SHAREABLE_OUTPUTS = ("store/index.parquet", "store/summary.json", "store/splits", "store/rejections.parquet",
                     "reports/data", "mlflow/mlflow.db", "icu/cohort", "icu/generated", "icu/evaluation",
                     "icu/evaluation_images", "reports/icu", "medcodi/studies.parquet", "medcodi/embeddings.npz",
                     "medcodi/generated/reports-multi.parquet", "medcodi/generated/reports-single.parquet",
                     "medcodi/eval/reports")
#: Raw ids shorter than this are not searched for: they also occur as ordinary numbers (NIH's Patient ID is a small
#: integer; its zero-padded form is part of the NIH image index, which is searched).
MIN_SEARCHED_ID_LENGTH = 6


def raw_source_identifiers(results: Path) -> dict[str, set[str]]:
    """Per demo source, the raw dataset identifiers as the source adapters read them from the demo sources' own
    metadata and layout: patient ids (MIMIC subject_id, CheXpert patientNNNNN, NIH Patient ID, PadChest PatientID,
    BRAX/VinDr/IU-Xray ids), study ids, image keys (dicom_id, Image Index, ImageID, …) and source-relative paths."""
    from cxrgen.sources.base import get_adapter

    identifiers = {}
    mimic_iv = results / "sources" / "mimic-iv"
    if mimic_iv.is_dir():  # not an image source: its raw ids are the MIMIC-IV subject/admission/stay ids
        stays = pd.read_csv(mimic_iv / "icu" / "icustays.csv.gz", dtype=str)
        identifiers["mimic-iv"] = {v for column in ("subject_id", "hadm_id", "stay_id") for v in stays[column]
                                   if len(v) >= MIN_SEARCHED_ID_LENGTH}
    for root in sorted(p for p in (results / "sources").iterdir()
                       if p.is_dir() and p.name not in ("_meta", "mimic-iv")):
        manifest = get_adapter(root.name)(root, {})
        values = set()
        for column in ("patient_id", "study_id", "source_key", "rel_path"):
            values |= set(manifest[column].dropna().astype(str))
        identifiers[root.name] = {v for v in values if len(v) >= MIN_SEARCHED_ID_LENGTH}
    return identifiers


def shareable_files(results: Path) -> list[Path]:
    files = []
    for name in SHAREABLE_OUTPUTS:
        path = results / name
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.exists():
            files.append(path)
    return files


def test_no_source_identifier_in_shareable_outputs(tiny_run):
    results = tiny_run / "results"
    identifiers = raw_source_identifiers(results)
    assert set(identifiers) == {"mimic", "chexpert", "nih", "padchest", "brax", "vindr", "iuxray", "mimic-iv"}
    assert all(len(ids) > 10 for ids in identifiers.values()), {s: len(ids) for s, ids in identifiers.items()}
    files = shareable_files(results)
    assert {"index.parquet", "summary.json", "rejections.parquet", "test.txt", "data_report.html", "stays.parquet",
            "pairs.parquet", "ehr.npz", "cohort.json", "icu.md", "studies.parquet"} <= {p.name for p in files}
    for path in files:
        text = _strings_in(path)
        for source, ids in identifiers.items():
            leaked = sorted(i for i in ids if i in text)
            assert not leaked, f"{path}: raw {source} identifiers {leaked[:3]}"
    shared = pd.read_parquet(results / "store/rejections.parquet")
    private = pd.read_parquet(results / "ingest/rejections.parquet")
    assert "rel_path" not in shared.columns and "detail" not in shared.columns
    assert len(private) == len(shared) and private["rel_path"].notna().any()


def test_generative_chain_outputs(tiny_run):
    from mlflow.tracking import MlflowClient

    from cxrgen.models.autoencoder import load_autoencoder
    from cxrgen.models.clip import load_text_encoder
    from cxrgen.models.diffusion import load_unet
    from cxrgen.models.sr import load_sr
    from cxrgen.store import ShardStore

    models = tiny_run / "results/models"
    ae = load_autoencoder(models / "autoencoder")
    assert ae.config.scaling_factor > 0 and ae.config.scaling_factor != 0.18215  # computed from data
    tokens, mask = load_text_encoder(models / "clip").encode(["Small left pleural effusion."])
    assert tokens.shape[0] == 1 and mask.any()
    cheff_unet = load_unet(models / "ldm/cheff/unet")
    # diffcxr's LDM cross-attends to the AVA-TLS squeezed tokens; its DKIM adapter sits on that LDM
    assert load_unet(models / "ldm/diffcxr/unet").config.cross_attention_dim == cheff_unet.config.cross_attention_dim
    assert json.loads((models / "dkim/diffcxr/config.json").read_text())["_class_name"] == "DkimAdapter"
    assert load_sr(models / "sr").high_res == 64
    assert not list((tiny_run / "results").glob("models/**/*.tmp"))
    for state in ("train_clip", "train_autoencoder", "train_ldm/cheff", "train_ldm/diffcxr", "train_sr", "finetune_sr"):
        assert list((tiny_run / "results/state" / state).glob("ckpt-*.pt")), state  # resumable state kept apart

    prompts = pd.read_parquet(tiny_run / "results/synthetic/prompts.parquet")
    synthetic = pd.read_parquet(tiny_run / "results/synthetic/cheff/store/index.parquet")
    assert len(synthetic) == len(prompts) and set(synthetic["prompt_id"]) == set(prompts["prompt_id"])
    assert (synthetic["set"] == "train_twins").any()
    image = ShardStore(tiny_run / "results/synthetic/cheff/store", synthetic, verify=True).read(0, 64)
    assert image.shape == (64, 64)
    diffcxr = pd.read_parquet(tiny_run / "results/synthetic/diffcxr/store/index.parquet")
    assert not (diffcxr["set"] == "train_twins").any()  # twins only for the downstream experiments' variant
    for store in (synthetic, diffcxr):  # the re-identification probe: every audited variant, no SR
        probe = store["set"] == "reid_probe"
        assert probe.any() and store.loc[probe, "offset_64"].isna().all() and store["offset_32"].notna().all()
    assert (diffcxr["dkim_sha"].str.len() > 0).all() and (synthetic["dkim_sha"] == "").all()

    info = json.loads((tiny_run / "results/tracking/run.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    runs = client.search_runs([info["experiment_id"]], f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")
    names = {r.info.run_name for r in runs}
    assert {"train_clip", "train_autoencoder", "train_ldm:cheff", "train_ldm:diffcxr", "train_dkim:diffcxr",
            "train_sr", "finetune_sr", "generate:cheff", "generate:diffcxr", "sample_ldm_grid:cheff",
            "sample_dkim_grid:diffcxr"} <= names
    assert all(r.info.status == "FINISHED" for r in runs)
    # the sample grids are drawn from the saved models by rules of their own, not by the trainers
    grids = tiny_run / "results/reports/training/grids"
    assert {p.relative_to(grids).as_posix() for p in grids.rglob("*.png")} == {"ldm/cheff.png", "ldm/diffcxr.png",
                                                                               "dkim/diffcxr.png"}
    assert json.loads((grids / "ldm/cheff.json").read_text())["sample_grid"]["steps"] == 2  # tests/config/test.yaml
    assert not list(models.glob("**/samples.png"))


def test_lnfs_and_labeler_outputs(tiny_run):
    """LNFS lists every cached image exactly once (never deletes), its fragment reports precision/recall against the
    injected demo noise, and the IU-Xray rows carry labeler labels marked as such."""
    from cxrgen.data.lnfs import kept_image_ids

    filtered = pd.read_parquet(tiny_run / "results/lnfs/filtered_index.parquet")
    latents = pd.read_parquet(tiny_run / "results/latents/latents_index.parquet")
    assert sorted(filtered["image_id"]) == sorted(latents["image_id"]) and filtered["image_id"].is_unique
    assert kept_image_ids(tiny_run / "results/lnfs/filtered_index.parquet") == set(
        filtered.loc[~filtered["removed"], "image_id"])
    truth = pd.concat([pd.read_parquet(p) for p in (tiny_run / "results/sources/_meta").glob("*.noise.parquet")])
    assert len(truth) > 0
    assert "precision" in (tiny_run / "results/reports/lnfs/lnfs.md").read_text()
    index = pd.read_parquet(tiny_run / "results/store/index.parquet")
    assert set(index.loc[index["source"] == "iuxray", "label_source"]) == {"labeler"}
    assert set(index.loc[index["source"] != "iuxray", "label_source"]) == {"dataset"}
    assert "IU-Xray MeSH" in (tiny_run / "results/reports/labeler/labeler.md").read_text()


def test_data_report_written(tiny_run):
    html = (tiny_run / "results/reports/data/data_report.html").read_text()
    assert "<img" in html and "mimic" in html


def test_evaluator_and_downstream_outputs(tiny_run):
    import torch

    from cxrgen.evaluate.classifier import load_evaluator

    evaluator = load_evaluator(tiny_run / "results/models/evaluator")
    assert evaluator.resolution == 32 and evaluator.predict_proba(torch.rand(2, 1, 64, 64)).shape == (2, 14)
    for experiment in ("anonymisation", "imbalance", "scarcity", "low_data"):
        metrics = json.loads((tiny_run / f"results/downstream/{experiment}/0/metrics.json").read_text())
        assert metrics["arms"] and all(a["test"]["n_images"] == metrics["n_test"] for a in metrics["arms"].values())
    markdown = (tiny_run / "results/reports/downstream/downstream.md").read_text()
    assert "### Scarcity" in markdown and "n=1, no CI" not in markdown and "fewer than 2 seeds" not in markdown
    assert "± " in markdown and "Macro AUROC against `real`: " in markdown  # intervals over the 2 seeds
    assert ("overlap it (no difference shown)" in markdown) or ("do not." in markdown)


def planned_jobs(dry_run_output: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job a ``snakemake -n`` output plans."""
    jobs = []
    for line in dry_run_output.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            jobs.append((match.group(1), {}))
        elif jobs and line.strip().startswith("wildcards:"):
            jobs[-1][1].update(item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", "))
    return jobs


def test_adding_a_variant_plans_only_its_own_jobs(tiny_run, tmp_path):
    """After the tiny run, a variant with a new LDM (diffcxr-lnfs) and one sampling the existing cheff LDM with DKIM
    (diffcxr-dkim) plan only their own jobs: no build_prompts, no existing LDM, sample or metric is rerun. The
    aggregates over all variants (summary, training report, model cards, the pipeline's tracking run) follow."""
    overlay = tmp_path / "more_variants.yaml"
    overlay.write_text("variants:\n  diffcxr-lnfs: {lnfs: true}\n  diffcxr-dkim: {dkim: true}\n")
    out = run([*SNAKEMAKE, "-n", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tiny_run),
               "--configfile", str(ROOT / "config.yaml"), str(ROOT / "tests/config/test.yaml"), str(overlay)])
    jobs = planned_jobs(out)
    new = {"diffcxr-lnfs", "diffcxr-dkim"}
    per_variant = ("generate", "extract_generated_features", "evaluate_distribution", "evaluate_fidelity",
                   "evaluate_memorisation", "evaluate_reidentification")
    required = {"train_ldm", "train_dkim", "sample_ldm_grid", "sample_dkim_grid", *per_variant, "write_summary",
                "report_training", "write_model_cards", "all"}
    # init_tracking's params do not depend on the config: a rerun of it would hold back the planning of every job
    # that opens a child run (Snakemake then plans init_tracking alone)
    assert required == {rule for rule, _ in jobs}, out[-3000:]
    assert [w for rule, w in jobs if rule == "train_ldm"] == [{"ldm_variant": "diffcxr-lnfs"}]
    assert [w for rule, w in jobs if rule == "train_dkim"] == [{"ldm_variant": "cheff"}]  # DKIM on the cheff LDM
    for rule in per_variant:
        assert sorted(w["variant"] for r, w in jobs if r == rule) == sorted(new), rule
    assert [w for rule, w in jobs if rule == "sample_ldm_grid"] == [{"ldm_variant": "diffcxr-lnfs"}]
    assert [w for rule, w in jobs if rule == "sample_dkim_grid"] == [{"ldm_variant": "cheff"}]


def test_new_grid_settings_redraw_the_grids_without_retraining(tiny_run, tmp_path):
    """After the tiny run, new ldm.sample_grid settings plan the LDM grids and what reads them (the training report;
    the summary records the whole config): no model is retrained, no sample or metric recomputed."""
    overlay = tmp_path / "grid.yaml"
    overlay.write_text("ldm:\n  sample_grid: {steps: 3}\n")
    out = run([*SNAKEMAKE, "-n", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tiny_run),
               "--configfile", str(ROOT / "config.yaml"), str(ROOT / "tests/config/test.yaml"), str(overlay)])
    jobs = planned_jobs(out)
    assert {rule for rule, _ in jobs} == {"sample_ldm_grid", "report_training", "write_summary", "all"}, out[-3000:]
    assert sorted(w["ldm_variant"] for rule, w in jobs if rule == "sample_ldm_grid") == ["cheff", "diffcxr"]


@pytest.fixture(scope="module", autouse=True)
def _cleanup_snakemake_locks():
    yield
    shutil.rmtree(ROOT / ".snakemake" / "locks", ignore_errors=True)


# per paper: rules its plan must hold, and rules it must not (branches and variants of the other papers)
FULL_SCALE_PLANS = {
    "cheff": ({"train_ldm", "generate", "train_sr", "finetune_sr"}, {"train_dkim", "train_ddl_ldm", "embed_prompts"}),
    "diffcxr": ({"train_dkim", "sample_dkim_grid", "train_clip_avatls"}, {"train_ddl_ldm", "train_medcodi_ldm"}),
    "medcodi": ({"train_medcodi_ldm", "train_joint_alignment", "run_view_downstream"}, {"train_dkim", "train_ddl_ldm"}),
    "ddlcxr": ({"train_ddl_ldm", "train_icu_predictor", "evaluate_ddl_images"}, {"train_dkim", "train_medcodi_ldm"}),
}


@pytest.mark.parametrize("paper", sorted(FULL_SCALE_PLANS))
def test_full_scale_config_plans_without_data_with_gpu_hours(paper):
    """config.yaml + config/full/all.yaml + config/full/<paper>.yaml plans under the SLURM profile with no data
    present; every GPU job of the plan gets a GPU-hours estimate (cxrgen.compute); Cheff's unconditional LDM plans
    its own train_ldm / generate jobs."""
    from cxrgen.compute import estimate_job, gpu_hours_table, parse_dry_run
    from cxrgen.config import load_config

    configfiles = ["config.yaml", "config/full/all.yaml", f"config/full/{paper}.yaml"]
    out = run([*SNAKEMAKE, "-n", "--forceall", "--profile", "slurm", "--configfile", *configfiles])
    jobs = parse_dry_run(out)
    rules = {rule for rule, _, _ in jobs}
    required, absent = FULL_SCALE_PLANS[paper]
    assert required <= rules and not absent & rules, (required - rules, absent & rules)
    assert 300 <= sum(rule in {"ingest_shard", "index_source"} for rule, _, _ in jobs) < 2000
    cfg = load_config(*(ROOT / f for f in configfiles))
    table = gpu_hours_table(jobs, cfg)
    assert {row.rule for row in table} == {rule for rule, _, gpus in jobs if gpus > 0}
    assert all(row.gpu_hours > 0 for row in table if row.rule.startswith("train_")), table
    if paper == "cheff":
        assert sorted(w["ldm_variant"] for rule, w, _ in jobs if rule == "train_ldm") == ["cheff", "cheff-uncond"]
        assert sorted(w["variant"] for rule, w, _ in jobs if rule == "generate") == ["cheff", "cheff-uncond"]
        uncond, cond = (estimate_job("train_ldm", {"ldm_variant": v}, cfg).gpu_hours for v in ("cheff-uncond", "cheff"))
        assert 0 < uncond < cond  # no cross-attention to the report


def test_evaluation_and_summary_outputs(tiny_run):
    """Every variant gets distribution / fidelity / memorisation results with their protocol, and the terminal
    summary carries the headline tables and the demo caveat."""
    for variant in ("cheff", "diffcxr"):
        fidelity = json.loads((tiny_run / f"results/eval/{variant}/fidelity.json").read_text())
        assert "protocol" in json.dumps(fidelity)
        distribution = json.loads((tiny_run / f"results/eval/{variant}/distribution.json").read_text())
        assert "evaluator" in json.dumps(distribution)
        assert (tiny_run / f"results/eval/{variant}/memorisation_pairs.png").stat().st_size > 0
        reid = json.loads((tiny_run / f"results/eval/{variant}/reidentification.json").read_text())
        assert reid["prompts"]["set"] == "reid_probe" and reid["prompts"]["seeds_per_prompt"] > 1
    summary = (tiny_run / "results/summary.md").read_text()
    for heading in ("Reconstruction", "Distribution metrics — cheff", "Conditional fidelity — diffcxr",
                    "Downstream augmentation experiments", "LNFS", "AVA-TLS", "labeler"):
        assert heading in summary, heading
    assert "not comparable with paper numbers" in summary
