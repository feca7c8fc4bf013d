"""Metric stages end to end on tiny stores: feature sets, distribution, fidelity, memorisation, reconstruction,
summary — outputs, protocols, behaviour that can fail (a copied training image is caught as memorised), and each job's
MLflow run read back from a real store (FINISHED with its metrics and artifacts, or FAILED with nothing published)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from evaluate_helpers import narrowed

from cxrgen.config import validate_config
from cxrgen.evaluate.classifier import save_evaluator, tiny_evaluator
from cxrgen.evaluate.features import load_feature_sets
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.models.clip import save_clip, scratch_clip
from cxrgen.stages.evaluate_distribution import evaluate_distribution
from cxrgen.stages.evaluate_fidelity import evaluate_fidelity
from cxrgen.stages.evaluate_memorisation import evaluate_memorisation
from cxrgen.stages.evaluate_reconstruction import evaluate_reconstruction
from cxrgen.stages.extract_generated_features import extract_generated_features
from cxrgen.stages.extract_real_features import extract_real_features
from cxrgen.stages.init_tracking import init_tracking
from cxrgen.stages.write_summary import write_summary
from cxrgen.store import ShardWriter, shard_path

LOW, HIGH = 32, 64


def phantom(rng: np.random.Generator, bright: bool) -> np.ndarray:
    yy, xx = np.mgrid[:HIGH, :HIGH] / HIGH
    image = np.full((HIGH, HIGH), 0.25)
    for cx in (0.3, 0.7):
        r = rng.uniform(0.1, 0.2)
        image[((xx - cx) / r) ** 2 + ((yy - 0.5) / (1.8 * r)) ** 2 < 1] = rng.uniform(0.5, 0.7)
    if bright:
        image[(np.abs(xx - 0.5) < 0.12) & (yy > 0.4)] = 0.95
    image += 0.03 * np.sin(xx * rng.uniform(10, 30)) + 0.02 * rng.standard_normal((HIGH, HIGH))
    return np.clip(image, 0, 1)


def write_store(root, rows: list[dict], images: list[np.ndarray], source: str) -> pd.DataFrame:
    for res in (LOW, HIGH):
        with ShardWriter(shard_path(root, res, source, 0)) as writer:
            for row, image in zip(rows, images, strict=True):
                small = image.reshape(res, HIGH // res, res, HIGH // res).mean(axis=(1, 3))
                offset, nbytes, sha = writer.append((small * 65535).round().astype(np.uint16))
                row.update({f"offset_{res}": offset, f"nbytes_{res}": nbytes, f"sha256_{res}": sha})
    frame = pd.DataFrame(rows)
    frame[list(LABEL_COLUMNS)] = frame[list(LABEL_COLUMNS)].astype(np.float32)
    frame.to_parquet(root / "index.parquet", index=False)
    return frame


def labels_for(rng, cardiomegaly: float) -> dict:
    labels = {c: float(rng.choice([0.0, 1.0, np.nan], p=[0.6, 0.2, 0.2])) for c in LABEL_COLUMNS}
    labels["lbl_cardiomegaly"] = cardiomegaly
    labels["lbl_no_finding"] = 1.0 - cardiomegaly
    return labels


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A real store (28 train, 8 val, 12 test PA + 2 test LATERAL) and a synthetic store of 14 images (two prompt
    sets, repeated prompts, one exact copy of a training image)."""
    rng = np.random.default_rng(0)
    real_root = tmp_path_factory.mktemp("store")
    rows, images = [], []
    splits = ["train"] * 28 + ["val"] * 8 + ["test"] * 14
    for i, split in enumerate(splits):
        bright = i % 2 == 0
        rows.append({"image_id": f"img-{i:03d}", "source": "nih", "shard": 0, "split": split,
                     "view": "LATERAL" if i >= 48 else "PA", "patient_pid": f"p{i // 2:03d}",
                     "report_findings": "", "report_impression": "The heart is enlarged." if i % 4 == 0 else "",
                     **labels_for(rng, float(bright))})
        images.append(phantom(rng, bright))
    real = write_store(real_root, rows, images, "nih")

    syn_root = tmp_path_factory.mktemp("synthetic") / "store"
    syn_root.mkdir()
    syn_rows, syn_images = [], []
    for k in range(14):
        bright = k % 2 == 0
        prompt_set = "class_balanced" if k < 10 else "test_reports"
        prompt = "The heart is enlarged." if bright else "No acute cardiopulmonary abnormality."
        if prompt_set == "test_reports":
            prompt = f"report {k}"
        labels = dict.fromkeys(LABEL_COLUMNS, np.nan)
        labels.update({"lbl_cardiomegaly": float(bright), "lbl_no_finding": float(not bright)})
        syn_rows.append({"image_id": f"syn-{k:03d}", "prompt_id": f"p-{k}", "set": prompt_set, "prompt": prompt,
                         "seed": k, "split": "synthetic", "source": "synthetic", "view": "PA", "shard": 0, **labels})
        syn_images.append(images[0] if k == 0 else phantom(rng, bright))  # syn-000 copies training image img-000
    write_store(syn_root, syn_rows, syn_images, "synthetic")
    return real_root, real, syn_root


@pytest.fixture(scope="module")
def cfg():
    return validate_config({"sources": {"nih": {}}, "evaluation": {
        "n": 40, "batch_size": 8, "bootstrap": {"resamples": 40},
        "backbones": {"use": ["evaluator", "xrv", "inception", "rad_dino"], "xrv": {"cache_dir": "/nonexistent/xrv"}},
        "distribution": {"sets": [], "bootstrap_resamples": 10,
                         "kid": {"subset_size": 6, "subsets": 5, "bootstrap_subsets": 2},
                         "prdc": {"k": 2, "bootstrap_resamples": 5}, "per_pathology": {"min_n": 5}},
        "memorisation": {"pixel_resolution": 16, "threshold_sample": None, "pairs_shown": 3},
        "diversity": {"random_pairs": 10},
        "reconstruction": {"n": 3, "sr_steps": 2, "batch_size": 2, "examples": 2}}})["evaluation"]


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A real MLflow store (SQLite) with the pipeline's parent run, as rule init_tracking leaves it."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.mktemp("mlflow")
        init_tracking(root / "run.json", "cxrgen-test", root)
        yield root / "run.json"


def job_run(tracking, job_name: str):
    """The one MLflow run of job ``job_name`` (and the client to read it with)."""
    from mlflow.tracking import MlflowClient

    info = json.loads(tracking.read_text())
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    runs = client.search_runs([info["experiment_id"]], filter_string=f"tags.`snakemake.job` = '{job_name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def assert_finished(tracking, job_name: str, payload: dict | None, artifacts: set[str]):
    client, run = job_run(tracking, job_name)
    assert run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == artifacts
    if payload is not None:
        assert payload["mlflow_run_id"] == run.info.run_id
    return run


@pytest.fixture(scope="module")
def feature_dirs(stores, cfg, tracking, tmp_path_factory):
    real_root, _, syn_root = stores
    out = tmp_path_factory.mktemp("features")
    evaluator_dir = save_evaluator(tiny_evaluator(LOW), out / "evaluator")
    torch.manual_seed(0)
    clip_cfg = validate_config({"sources": {"nih": {}}, "medcodi": {"prompt_encoders": {
        "embed_dim": 16, "vision": {"width": 32, "layers": 1, "head_width": 16, "patch_size": 8},
        "text": {"width": 32, "heads": 2, "layers": 1, "context_length": 16}}}})["medcodi"]["prompt_encoders"]
    clip_dir = save_clip(scratch_clip(clip_cfg, LOW), out / "clip")
    counts = extract_real_features(index_path=real_root / "index.parquet", store_root=real_root,
                                   evaluator_dir=evaluator_dir, cfg=narrowed(cfg, "extract_real_features"),
                                   resolution=HIGH, seed=1, out_dir=out / "real", tracking_json=tracking,
                                   clip_dir=clip_dir)
    assert counts == {"reference": 12, "train": 28, "val": 8}  # laterals left out
    extract_generated_features(synthetic_root=syn_root, evaluator_dir=evaluator_dir,
                               cfg=narrowed(cfg, "extract_generated_features"), resolution=HIGH,
                               out_dir=out / "generated", tracking_json=tracking,
                               job_name="extract_generated_features:cheff", clip_dir=clip_dir)
    return out / "real", out / "generated"


def test_feature_sets_hold_features_probs_and_skipped_backbones(feature_dirs):
    real, meta = load_feature_sets(feature_dirs[0])
    assert meta["resolution"] == HIGH and list(meta["backbones"]) == ["evaluator"]
    assert {s["backbone"] for s in meta["skipped"]} == {"xrv", "inception", "rad_dino"}
    assert real["reference"].features["evaluator"].shape[0] == 12 and real["reference"].probs.shape == (12, 14)
    assert real["val"].probs.shape == (8, 14) and "evaluator" not in real["val"].features
    assert set(real["reference"].rows["split"]) == {"test"}
    gen, _ = load_feature_sets(feature_dirs[1])
    assert gen["generated"].features["evaluator"].shape[0] == 14
    assert not list(feature_dirs[0].parent.glob("*.tmp"))


def test_feature_extraction_jobs_are_tracked(feature_dirs, tracking):
    real = assert_finished(tracking, "extract_real_features", None, {"meta.json"})
    assert real.data.metrics["images/reference"] == 12 and real.data.metrics["images/train"] == 28
    assert real.data.params["evaluation.batch_size"] == "8" and real.data.params["seed"] == "1"
    assert real.data.tags["cxrgen.stage"] == "extract_real_features"
    generated = assert_finished(tracking, "extract_generated_features:cheff", None, {"meta.json"})
    assert generated.data.metrics["images/generated"] == 14


def distribution(feature_dirs, cfg, out, **kw) -> dict:
    return evaluate_distribution(real_dir=feature_dirs[0], generated_dir=feature_dirs[1],
                                 cfg=narrowed(cfg, "evaluate_distribution"), seed=0, variant="cheff",
                                 out_json=out / "d.json", out_html=out / "d.html", out_figure=out / "d.png",
                                 out_markdown=out / "md/d.md", **kw)


def test_distribution_stage(feature_dirs, cfg, tmp_path):
    out = distribution(feature_dirs, cfg, tmp_path)
    saved = json.loads((tmp_path / "d.json").read_text())
    assert saved["results"].keys() == {"evaluator"} and saved["mlflow_run_id"] is None
    rows = saved["results"]["evaluator"]
    assert rows["generated vs real"]["n_a"] == 14 and rows["generated vs real"]["n_b"] == 12
    assert rows["real half A vs real half B (floor)"]["fid"]["value"] >= 0
    assert saved["protocol"]["n_reference"] == 12 and "bootstrap" in saved["protocol"]["ci"]
    assert any(line.startswith("xrv: skipped") for line in out["skipped_backbones"])
    markdown = (tmp_path / "md/d.md").read_text()
    assert "Protocol:" in markdown and "xrv: skipped" in markdown and "(../d.png)" in markdown
    assert "<table>" in (tmp_path / "d.html").read_text()
    assert (tmp_path / "d.png").stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["d.html", "d.json", "d.md", "d.png", "md"]  # no staging
    assert "rad_dino: skipped — evaluation.backbones.rad_dino.dir is not set" in markdown
    prdc = rows["generated vs real"]["prdc"]
    assert set(prdc) == {"precision", "recall", "density", "coverage"} and "k=2" in prdc["coverage"]["ci_method"]
    # class_balanced prompts: 5 cardiomegaly, 5 no finding; the 12 real test PA images split 6 / 6
    pathology = saved["per_pathology"]["evaluator"]
    assert list(pathology) == ["No Finding", "Cardiomegaly"]
    assert pathology["Cardiomegaly"]["n_generated"] == 5 and pathology["Cardiomegaly"]["n_real"] == 6
    assert pathology["Cardiomegaly"]["fid"]["value"] >= 0
    assert "Benchmark table (CheXGenBench-style) — cheff: generated n=14 vs real test" in markdown
    assert f"images read at {HIGH} px" in markdown
    assert "| evaluator (32 px) | 14, 12 |" in markdown and "coverage [CI]" in markdown
    assert "Per-pathology FID / KID — cheff" in markdown and "FID evaluator (32 px)" in markdown
    # image-text alignment: real reference images with a report (every 4th image of the store) are the reference
    real_sets, _ = load_feature_sets(feature_dirs[0])
    has_report = real_sets["reference"].rows["report_impression"].str.len().to_numpy() > 0
    assert np.isfinite(real_sets["reference"].clip_scores).tolist() == has_report.tolist()
    aligned = saved["alignment"]
    assert aligned["real reference vs its report"]["n"] == int(has_report.sum()) > 0
    assert aligned["generated (class_balanced) vs its prompt"]["n"] == 10
    assert aligned["generated (test_reports) vs its prompt"]["n"] == 4
    assert all(-1 <= e["ci_low"] <= e["value"] <= e["ci_high"] <= 1 for e in aligned.values())
    assert "Image–text alignment — cheff" in markdown
    small = {**cfg, "distribution": {**cfg["distribution"],
                                     "per_pathology": {**cfg["distribution"]["per_pathology"], "min_n": 6}}}
    again = distribution(feature_dirs, small, tmp_path / "small")
    assert again["per_pathology"]["evaluator"]["Cardiomegaly"]["skipped"] == "n too small"
    assert "| Cardiomegaly | 5 | 6 | n too small | n too small |" in (tmp_path / "small/md/d.md").read_text()


def test_tracked_distribution_job_logs_its_run_and_writes_the_same_outputs(feature_dirs, cfg, tracking, tmp_path):
    untracked = distribution(feature_dirs, cfg, tmp_path / "untracked")
    tracked = distribution(feature_dirs, cfg, tmp_path / "tracked", tracking_json=tracking,
                           job_name="evaluate_distribution:cheff")
    run = assert_finished(tracking, "evaluate_distribution:cheff", tracked, {"d.json", "d.png"})
    assert {k: v for k, v in tracked.items() if k != "mlflow_run_id"} == {
        k: v for k, v in untracked.items() if k != "mlflow_run_id"}
    for name in ("d.html", "md/d.md"):
        assert (tmp_path / "tracked" / name).read_text() == (tmp_path / "untracked" / name).read_text()
    floor = tracked["results"]["evaluator"]["real half A vs real half B (floor)"]["fid"]["value"]
    assert run.data.metrics["fid/evaluator/floor"] == pytest.approx(floor)
    assert run.data.params["variant"] == "cheff" and "evaluation.distribution.kid.degree" in run.data.params


def test_failed_evaluation_job_is_failed_and_publishes_nothing(feature_dirs, cfg, tracking, tmp_path):
    unknown_set = {**cfg, "distribution": {**cfg["distribution"], "sets": ["nope"]}}
    with pytest.raises(ValueError, match="present"):
        distribution(feature_dirs, unknown_set, tmp_path, tracking_json=tracking,
                     job_name="evaluate_distribution:broken")
    _, run = job_run(tracking, "evaluate_distribution:broken")
    assert (run.info.status, run.data.tags["cxrgen.failed_phase"], run.data.tags["cxrgen.error"]) == (
        "FAILED", "run", "ValueError")
    assert not list(tmp_path.iterdir())


def test_fidelity_stage(feature_dirs, cfg, tracking, tmp_path):
    out = evaluate_fidelity(real_dir=feature_dirs[0], generated_dir=feature_dirs[1],
                            cfg=narrowed(cfg, "evaluate_fidelity"), seed=0, variant="cheff",
                            out_json=tmp_path / "f.json", out_html=tmp_path / "f.html", out_figure=tmp_path / "f.png",
                            out_grid=tmp_path / "g.png", out_markdown=tmp_path / "f.md", tracking_json=tracking,
                            job_name="evaluate_fidelity:cheff")
    assert list(out["results"]) == ["generated: class_balanced", "generated: test_reports", "generated: all sets",
                                    "real reference"]
    balanced = out["results"]["generated: class_balanced"]
    # prompts state Cardiomegaly and No Finding (1/0); every other finding is unknown and skipped
    assert set(balanced["per_finding"]) == {"Cardiomegaly", "No Finding"}
    assert len(balanced["skipped"]) == 12 and balanced["n_images"] == 10
    cardio = balanced["per_finding"]["Cardiomegaly"]
    assert cardio["n_pos"] == 5 and cardio["n_neg"] == 5 and 0 <= cardio["auroc"]["value"] <= 1
    assert out["results"]["real reference"]["n_images"] == 12
    assert len(out["thresholds"]) == 14 and "val" in out["protocol"]["F1 threshold"]
    markdown = (tmp_path / "f.md").read_text()
    assert "AUROC macro" in markdown and "real reference" in markdown and "skipped" in markdown
    assert (tmp_path / "g.png").stat().st_size > 1000
    run = assert_finished(tracking, "evaluate_fidelity:cheff", out, {"f.json", "f.png", "g.png"})
    assert "auroc_macro/real_reference" in run.data.metrics
    assert json.loads((tmp_path / "f.json").read_text())["mlflow_run_id"] == run.info.run_id


def test_memorisation_stage_catches_a_copied_training_image(feature_dirs, cfg, tracking, tmp_path):
    out = evaluate_memorisation(real_dir=feature_dirs[0], generated_dir=feature_dirs[1],
                                cfg=narrowed(cfg, "evaluate_memorisation"), seed=0, variant="cheff",
                                out_json=tmp_path / "m.json", out_html=tmp_path / "m.html",
                                out_pairs=tmp_path / "p.png", out_histogram=tmp_path / "h.png",
                                out_markdown=tmp_path / "m.md", tracking_json=tracking,
                                job_name="evaluate_memorisation:cheff")
    for space in ("evaluator features", "pixels (16 px)"):
        closest = out["closest"][space][0]
        assert closest["generated"] == "syn-000" and closest["train"] == "img-000"
        assert closest["distance"] == pytest.approx(0.0, abs=1e-4)
        generated = out["spaces"][space]["generated"]
        assert generated["count_below_threshold"] >= 1 and generated["n"] == 14
        assert 0 < generated["share_below_threshold"]["value"] <= 1
        assert out["spaces"][space]["real reference"]["n"] == 12
    diversity = out["diversity"]
    assert diversity["metric"] == "SSIM" and diversity["n_prompts_with_repeats"] == 2  # MS-SSIM impossible at 64 px
    assert diversity["within prompt"]["pairs"] == 20  # two prompts x 5 repeats, at most 10 pairs each
    assert -1 <= diversity["within prompt"]["value"] <= 1
    assert "MS-SSIM needs" in diversity["protocol"]
    assert (tmp_path / "p.png").stat().st_size > 1000 and (tmp_path / "h.png").stat().st_size > 1000
    assert "threshold" in (tmp_path / "m.md").read_text()
    run = assert_finished(tracking, "evaluate_memorisation:cheff", out, {"m.json", "h.png", "p.png"})
    assert run.data.metrics["share_below/feature/generated"] > 0


def test_reconstruction_stage(stores, cfg, tracking, tmp_path):
    from cxrgen.models.autoencoder import build_autoencoder, save_autoencoder
    from cxrgen.models.sr import build_sr, save_sr

    real_root = stores[0]
    section = validate_config({"sources": {"nih": {}}, "autoencoder": {
        "block_out_channels": [8, 8], "layers_per_block": 1, "norm_num_groups": 4},
        "sr": {"model": {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
                         "mid_attention": False}}})
    torch.manual_seed(0)
    save_autoencoder(build_autoencoder(section["autoencoder"], LOW), tmp_path / "ae")
    save_sr(build_sr(section["sr"], low_res=LOW, high_res=HIGH), tmp_path / "sr_base")
    save_sr(build_sr(section["sr"], low_res=LOW, high_res=HIGH, mode="decoded"), tmp_path / "sr")

    def reconstruction(name: str, **kw) -> dict:
        return evaluate_reconstruction(
            index_path=real_root / "index.parquet", store_root=real_root, ae_dir=tmp_path / "ae",
            sr_base_dir=tmp_path / "sr_base", sr_dir=tmp_path / "sr", cfg=narrowed(cfg, "evaluate_reconstruction"),
            seed=0, low_res=LOW, high_res=HIGH, out_json=tmp_path / f"{name}.json", out_html=tmp_path / f"{name}.html",
            out_figure=tmp_path / f"{name}.png", out_markdown=tmp_path / f"{name}.md", **kw)

    out = reconstruction("r")
    results = out["results"]
    assert list(results) == ["bicubic", "AE", "SR base", "SR fine-tuned", "AE → SR base", "AE → SR fine-tuned"]
    assert results["AE"]["resolution"] == LOW and results["bicubic"]["resolution"] == HIGH
    assert all(r["n"] == 3 for r in results.values())
    assert results["bicubic"]["psnr"]["value"] > results["SR base"]["psnr"]["value"]  # an untrained SR is noise
    assert results["bicubic"]["ms_ssim"]["value"] is None and "MS-SSIM needs" in results["bicubic"]["ms_ssim"][
        "unavailable"]
    again = reconstruction("r2", tracking_json=tracking, job_name="evaluate_reconstruction")
    assert again["results"] == results  # seeded SR noise: deterministic
    assert "n/a (size)" in (tmp_path / "r.md").read_text()
    run = assert_finished(tracking, "evaluate_reconstruction", again, {"r2.json", "r2.png"})
    assert run.data.metrics["psnr/bicubic"] == pytest.approx(results["bicubic"]["psnr"]["value"])


def test_summary_collects_fragments_and_states_comparability(tmp_path):
    (tmp_path / "reports/eval").mkdir(parents=True)
    (tmp_path / "reports/eval/a.md").write_text("# Part A\n\n![fig](../../eval/a.png)\n\n## Sub\n")
    (tmp_path / "reports/data").mkdir()
    (tmp_path / "reports/data/data.md").write_text("# Data\n\n| a |\n|---|\n| 1 |\n")
    (tmp_path / "reports/other.md").write_text("## Other stage\n\n### Detail\n")
    config = validate_config({"sources": {"nih": {}}})
    text = write_summary(fragments=[tmp_path / "reports/data/data.md", tmp_path / "reports/eval/a.md",
                                    tmp_path / "reports/other.md"],
                         out_path=tmp_path / "summary.md", demo=True, config=config)
    assert (tmp_path / "summary.md").read_text() == text
    assert "not comparable with paper numbers" in text and "demo corpus" in text
    assert "## Data" in text and "## Part A" in text and "### Sub" in text
    assert "](eval/a.png)" in text  # link rebased from reports/eval/ to the summary's folder
    assert text.index("## Data") < text.index("## Part A")
    assert "\n## Other stage" in text and "\n### Detail" in text  # a fragment topped by ## stays a sibling


def test_summary_job_never_imports_torch(tmp_path):
    """write_summary runs after everything else and only joins text: a fresh interpreter that imports the stage and
    writes a summary has not loaded torch (nor matplotlib or mlflow)."""
    (tmp_path / "a.md").write_text("# A\n")
    config = validate_config({"sources": {"nih": {}}})
    script = textwrap.dedent(f"""
        import json, sys
        from cxrgen.stages.write_summary import write_summary
        write_summary(fragments=[{str(tmp_path / "a.md")!r}], out_path={str(tmp_path / "summary.md")!r}, demo=False,
                      config=json.loads({json.dumps(config, default=str)!r}))
        print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert "cxrgen" in loaded and not loaded & {"torch", "matplotlib", "mlflow"}
    assert (tmp_path / "summary.md").read_text().startswith("# cxrgen summary")
