import json
import shutil

import numpy as np
import pytest
from evaluate_helpers import real_store, synthetic_store

from cxrgen.config import validate_config
from cxrgen.evaluate.classifier import tiny_classifier_config
from cxrgen.stages.init_tracking import init_tracking
from cxrgen.stages.report_downstream import report_downstream
from cxrgen.stages.run_downstream import run_downstream
from cxrgen.train.loop import Interrupted

RES = 32


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("downstream")
    real = real_store(root / "store", n=80)
    train_ids = real.loc[real["split"] == "train", "image_id"].tolist()
    synthetic_store(root / "synthetic", real, twins_of=train_ids[:30], n_balanced=10,
                    resolutions=(RES, 2 * RES))
    # a twin prompted from a test image must never be used
    syn = synthetic_store(root / "leaky", real, twins_of=train_ids[:30] + real.loc[real["split"] == "test",
                                                                                    "image_id"].tolist()[:5])
    return root, real, syn


def sections(**downstream) -> tuple[dict, dict]:
    cfg = validate_config({"sources": {"nih": {}},
                           "evaluator": {"model": tiny_classifier_config(), "batch_size": 4, "max_steps": 2,
                                         "eval_every": 2, "log_every": 1},
                           "downstream": {"seeds": [0], "max_steps": 2, **downstream}})
    return cfg["downstream"], cfg["evaluator"]


def _run(root, experiment, seed, out, tracking=None, synthetic="synthetic", **kw):
    cfg, evaluator = sections(scarcity={"fractions": [0.0, 0.5, 0.9]}, low_data={"real_fraction": 0.25},
                              imbalance={"findings": [], "top_k": 3, "shortfall": "partial",
                                         "pool_sets": ["train_twins", "class_balanced"]})
    return run_downstream(real_index_path=root / "store/index.parquet", real_store_root=root / "store",
                          synthetic_store_root=root / synthetic, experiment=experiment, seed=seed, base_seed=10,
                          cfg=cfg, evaluator_cfg=evaluator, resolution=RES, state_dir=out / "state",
                          out_path=out / "metrics.json", tracking_json=tracking, job_name=f"run_downstream:{experiment}",
                          **kw)


def test_scarcity_job_trains_every_arm_and_resumes_after_a_kill(stores, tmp_path):
    root, real, _ = stores
    straight = _run(root, "scarcity", 0, tmp_path / "a")
    assert list(straight["arms"]) == ["syn_0pct", "syn_50pct", "syn_90pct"]
    sizes = {a["n"] for a in straight["arms"].values()}
    assert len(sizes) == 1  # fixed total size
    total = sizes.pop()
    assert [a["n_synthetic"] for a in straight["arms"].values()] == [0, int(np.floor(0.5 * total + 0.5)),
                                                                      int(np.floor(0.9 * total + 0.5))]
    assert straight["n_test"] == (real["split"] == "test").sum()
    arm = straight["arms"]["syn_50pct"]
    assert arm["test"]["n_images"] == straight["n_test"] and set(arm["test"]["per_finding"]) >= {"No Finding"}
    assert (tmp_path / "a/curves.png").is_file()

    with pytest.raises(Interrupted):  # killed in the first arm (each arm: 2 steps)
        _run(root, "scarcity", 0, tmp_path / "b", stop_after_steps=1)
    resumed = _run(root, "scarcity", 0, tmp_path / "b")
    for name, result in straight["arms"].items():
        assert resumed["arms"][name]["test"] == result["test"], name  # bit-exact CPU training
    again = _run(root, "scarcity", 0, tmp_path / "b")  # finished arms are not retrained
    assert again["arms"] == resumed["arms"]


def test_a_kill_during_pretraining_resumes_to_the_same_result(stores, tmp_path):
    root, _, _ = stores
    straight = _run(root, "low_data", 0, tmp_path / "a")
    arm_dir = tmp_path / "a/state/synthetic_then_real_25pct"
    shutil.rmtree(arm_dir)  # the other arms stay finished: the rerun trains this arm only
    with pytest.raises(Interrupted):  # killed after 1 of the 2 pre-training steps
        _run(root, "low_data", 0, tmp_path / "a", stop_after_steps=1)
    assert not (arm_dir / "result.json").exists()
    resumed = _run(root, "low_data", 0, tmp_path / "a")
    for name, result in straight["arms"].items():
        assert resumed["arms"][name]["test"] == result["test"], name  # bit-exact CPU training


def test_synthetic_images_prompted_from_test_images_are_excluded(stores, tmp_path):
    root, _, _ = stores
    metrics = _run(root, "anonymisation", 1, tmp_path, synthetic="leaky")
    assert metrics["pool"]["excluded"]["prompt_from_held_out"] == 5 and metrics["pool"]["n"] == 30
    assert metrics["arms"]["real"]["n"] == metrics["arms"]["synthetic"]["n"] == 30


def test_imbalance_and_low_data_jobs_with_tracking_and_report(stores, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root, _, _ = stores
    tracking = tmp_path / "run.json"
    init_tracking(tracking, "test", tmp_path)
    paths = []
    for experiment, seed in (("imbalance", 0), ("low_data", 0), ("low_data", 1)):
        out = tmp_path / experiment / str(seed)
        metrics = _run(root, experiment, seed, out, tracking=tracking)
        paths.append(out / "metrics.json")
    imbalance = json.loads(paths[0].read_text())
    findings = imbalance["arms"]["real"]["task_findings"]
    assert len(findings) == 3 and set(imbalance["arms"]["real"]["test"]["per_finding"]) == set(findings)
    assert imbalance["arms"]["real+synthetic"]["n_synthetic"] > 0
    assert set(metrics["arms"]) == {"real_100pct", "real_25pct", "real_25pct+synthetic", "synthetic->real_25pct"}
    finetuned, scratch = metrics["arms"]["synthetic->real_25pct"], metrics["arms"]["real_25pct"]
    assert finetuned["pretrain"]["steps"] == 2 and finetuned["pretrain"]["n"] == finetuned["n_synthetic"] > 0
    assert finetuned["n"] == scratch["n"]  # the same real rows, trained from the pre-trained weights
    assert finetuned["test"]["per_finding"] != scratch["test"]["per_finding"]
    sexes = finetuned["subgroups"]["sex"]
    assert set(sexes["groups"]) == {"F", "M", "U"}
    assert sum(g["n"] for g in sexes["groups"].values()) == metrics["n_test"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(json.loads(tracking.read_text())["tracking_uri"])
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["cxrgen.experiment"] == "low_data"
    assert "real_25pct_plus_synthetic/test/auroc_macro" in run.data.metrics

    table = report_downstream(metrics_paths=paths, out_md=tmp_path / "r/downstream.md",
                              out_png=tmp_path / "r/downstream.png", out_json=tmp_path / "r/downstream.json")
    md = (tmp_path / "r/downstream.md").read_text()
    assert "### Imbalance" in md and "### Low data" in md and "n=1, no CI" in md  # imbalance: one seed
    low = table[(table["experiment"] == "low_data") & (table["arm"] == "real_100pct")].iloc[0]
    assert low["seeds"] == [0, 1] and low["auroc_macro_ci"] is not None  # two seeds: a CI
    assert (tmp_path / "r/downstream.png").stat().st_size > 1000
    # a finding skipped in the test set (a single class there) is absent from per_finding: "–" in the F1 table
    imbalance["arms"]["real"]["test"]["per_finding"].pop(findings[0])
    skipped = tmp_path / "skipped.json"
    skipped.write_text(json.dumps(imbalance))
    report_downstream(metrics_paths=[skipped], out_md=tmp_path / "s/downstream.md",
                      out_png=tmp_path / "s/downstream.png", out_json=tmp_path / "s/downstream.json")
    f1_row = [line for line in (tmp_path / "s/downstream.md").read_text().splitlines()
              if line.startswith("| real |")][-1]
    assert f1_row.split(" | ")[1] == "–"
