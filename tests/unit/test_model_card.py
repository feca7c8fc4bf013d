"""Model cards: written by the tracked-training scaffold next to every trained model, completed at the end of the DAG."""

import hashlib
import json
import time

import pytest
import torch
from safetensors.torch import save_file
from test_autoencoder import RES, tiny_cfg, tiny_store

from cxrgen.hashing import dir_digest
from cxrgen.models.autoencoder import FeaturePerceptualLoss, load_autoencoder
from cxrgen.stages.init_tracking import init_tracking
from cxrgen.stages.train_autoencoder import train_autoencoder
from cxrgen.stages.write_model_cards import write_model_cards
from cxrgen.train.job import tracked_job, write_json
from cxrgen.train.loop import Interrupted
from cxrgen.train.model_card import CARD_JSON, CARD_MD, CardContext, build_card, write_card
from cxrgen.train.state import claim_job_state
from cxrgen.unify import write_split_manifests


def _train(name: str, tracking, cfg: dict, **kw) -> dict:
    """The autoencoder trainer as its workflow adapter runs it (claim the state, then train), from the working
    directory with relative paths, like a Snakemake job."""
    inputs = {"index": "store/index.parquet", "tracking": str(tracking)}
    params = {"resolution": RES, "cfg": cfg, "seed": 5, "state_dir": f"{name}/state"}
    claim_job_state(rule="train_autoencoder", wildcards={}, params=params, inputs=inputs, state_dir=f"{name}/state")
    torch.manual_seed(1)  # the same frozen perceptual network in every attempt
    return train_autoencoder(index_path="store/index.parquet", store_root="store", resolution=RES, cfg=cfg, seed=5,
                             state_dir=f"{name}/state", out_dir=f"{name}/ae", tracking_json=tracking,
                             job_name=f"train_autoencoder:{name}",
                             perceptual_net=FeaturePerceptualLoss(torch.nn.Conv2d(1, 4, 3)), **kw)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "store").mkdir()
    index = tiny_store(tmp_path / "store")
    write_split_manifests(index, tmp_path / "store/splits")
    write_json(tmp_path / "store/summary.json", {"sources": {"nih": {
        "ingested": len(index), "patients": 12, "splits": index["split"].value_counts().to_dict()}}})
    return tmp_path


def test_trainer_publishes_a_card_that_matches_its_run_and_changes_with_the_config(store):
    tracking = store / "run.json"
    init_tracking(tracking, "test", store)
    cfg_a, cfg_b = tiny_cfg(), tiny_cfg(lr=5e-4)
    a = _train("a", tracking, cfg_a)
    with pytest.raises(Interrupted):
        _train("b", tracking, cfg_b, stop_after_steps=3)
    b = _train("b", tracking, cfg_b)  # resumed from its step-2 checkpoint

    card_a = json.loads((store / "a/ae" / CARD_JSON).read_text())
    card_b = json.loads((store / "b/ae" / CARD_JSON).read_text())
    md_a = (store / "a/ae" / CARD_MD).read_text()
    assert not (store / "a/ae.tmp").exists()

    # data: the store's split manifests and the index digest, the MLflow handle is no data input
    manifests = json.loads((store / "store/splits/manifest_digests.json").read_text())
    assert card_a["data"]["store_splits"]["manifests"] == manifests
    assert card_a["data"]["sources"]["nih"]["images"] == 24
    index_sha = hashlib.sha256((store / "store/index.parquet").read_bytes()).hexdigest()
    assert card_a["data"]["inputs"] == {"index": {"path": "store/index.parquet", "sha256": index_sha, "files": 1,
                                                  "bytes": (store / "store/index.parquet").stat().st_size}}
    assert card_a["data"]["splits_used"]["n_train"] == a["n_train_images"]
    assert manifests["train"]["sha256"] in md_a and index_sha in md_a

    # training: steps, resumes, config section and its hash, seed; metrics from metrics.json
    assert card_a["training"]["steps"] == a["steps"] == 4 and card_a["training"]["resume_count"] == 0
    assert card_b["training"]["steps"] == 4 and card_b["training"]["resumed_from"] == b["resumed_from"] == 2
    assert card_b["training"]["attempts"] == 2 and card_b["training"]["resume_count"] == 1
    assert card_a["training"]["sections"] == {"autoencoder": cfg_a} and card_a["training"]["seed"] == 5
    assert card_b["training"]["sections"] == {"autoencoder": cfg_b}
    assert card_a["training"]["config_sha256"] != card_b["training"]["config_sha256"]
    assert card_a["training"]["config_sha256"] in md_a and card_b["training"]["config_sha256"] not in md_a
    assert card_a["metrics"]["val_psnr"]["value"] == pytest.approx(a["val_psnr"])
    assert "PSNR" in card_a["metrics"]["val_psnr"]["protocol"] and "validation" in card_a["metrics"]["val_psnr"][
        "protocol"]
    assert card_a["training"]["job_cpu_seconds"] > 0 and card_a["training"]["fit_wall_seconds"] > 0

    # the weights digest is the one provenance records use (the card itself does not count)
    assert card_a["weights"]["sha256"] == dir_digest(store / "a/ae") != card_b["weights"]["sha256"]

    # architecture from the saved weights and config
    vae = load_autoencoder(store / "a/ae")
    assert card_a["architecture"]["parameters_saved"] == sum(p.numel() for p in vae.parameters())
    assert card_a["architecture"]["configs"]["config.json"]["block_out_channels"] == [8, 16, 32]
    assert card_a["model"]["paper"].startswith("Cheff") and "7.3.1" in card_a["model"]["section"]
    assert card_a["software"]["torch"] == torch.__version__.split("+")[0] or card_a["software"]["torch"]
    assert "not for clinical use" in md_a.lower()

    # no absolute paths, no image ids
    for text in (md_a, (store / "a/ae" / CARD_JSON).read_text()):
        assert str(store) not in text and "nih-00" not in text

    from mlflow.tracking import MlflowClient

    client = MlflowClient(json.loads(tracking.read_text())["tracking_uri"])
    artifacts = {f.path for f in client.list_artifacts(b["mlflow_run_id"])}
    assert {CARD_MD, CARD_JSON} <= artifacts


def test_a_file_output_gets_its_card_next_to_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "downstream/exp/0/metrics.json"
    with tracked_job(None, "run_downstream:exp", params={"classifier": {"lr": 1e-3}, "seed": 0},
                     state_dir=tmp_path / "state") as job:
        staged = write_json(out.with_name("metrics.json.tmp"), {"steps": 7, "test_auroc": 0.75})
        job.publish(staged, out)
    card = json.loads((out.parent / CARD_JSON).read_text())
    assert card["training"]["steps"] == 7 and card["metrics"]["test_auroc"]["value"] == 0.75
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([CARD_JSON, CARD_MD, "metrics.json"])


def test_untracked_generation_jobs_get_no_card(tmp_path):
    with tracked_job(None, "generate:x") as job:
        staged = job.staging(tmp_path / "out")
        (staged / "a.txt").write_text("x")
        job.publish(staged, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt"]


def _model_dir(root, name, steps):
    """A published model as a trainer leaves it (weights, config, metrics), carded by the scaffold's card builder."""
    model = root / name
    model.mkdir(parents=True)
    save_file({"w": torch.zeros(3, 4), "b": torch.zeros(4)}, str(model / "model.safetensors"))
    write_json(model / "config.json", {"width": 4, "_class_name": "Tiny"})
    write_json(model / "metrics.json", {"steps": steps, "final_loss": 0.5, "mlflow_run_id": "abc"})
    context = CardContext(name, {"ldm": {"lr": 1e-4}, "seed": 1}, {"snakemake.rule": "train_ldm"}, None)
    started = time.perf_counter()
    write_card(build_card(context, model), model)
    return model, time.perf_counter() - started


def test_end_of_dag_cards_include_the_models_evaluations(tmp_path):
    ldm, seconds = _model_dir(tmp_path / "models", "ldm", steps=12)
    assert seconds < 1.0  # a card costs well under a second per job
    bare = tmp_path / "models/old"
    bare.mkdir()
    write_json(bare / "metrics.json", {"steps": 3})
    evaluation = {"variant": "cheff", "results": {"evaluator": {"generated vs real": {
        "n_a": 10, "fid": {"value": 12.5, "ci_low": 10.0, "ci_high": 15.0, "ci_method": "percentile bootstrap"},
        "kid": {"value": 0.031, "ci_low": 0.01, "ci_high": 0.05, "ci_method": "percentile bootstrap"}}}}}
    memorisation = {"spaces": {"pixels": {"generated": {"share_below_threshold": {
        "value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "ci_method": "bootstrap"}, "count_below_threshold": 0}}}}
    distribution_json = write_json(tmp_path / "eval/distribution.json", evaluation)
    memorisation_json = write_json(tmp_path / "eval/memorisation.json", memorisation)

    written = write_model_cards(
        models={"ldm/cheff": ldm, "old": bare},
        evaluations={"ldm/cheff": {"distribution (cheff)": distribution_json,
                                   "memorisation (cheff)": memorisation_json}},
        demo=True, out_dir=tmp_path / "reports/model_cards", index_path=tmp_path / "reports/model_cards/index.md")

    text = written["ldm/cheff"].read_text()
    assert written["ldm/cheff"].name == "ldm__cheff.md"
    assert "| evaluator / generated vs real / fid | 12.5 | [10, 15] | Fréchet distance" in text
    assert "CI: percentile bootstrap |" in text and "copy candidate" in text
    assert "generated vs real / kid | 0.031" in text and "share_below_threshold | 0 |" in text
    assert "synthetic phantoms" in text and "final_loss" in text and "abc" not in text
    index = (tmp_path / "reports/model_cards/index.md").read_text()
    assert "[ldm/cheff](ldm__cheff.md)" in index and "[old](old.md) (no training-time card" in index
    assert "distribution (cheff), memorisation (cheff)" in index
    assert "12.5" not in written["old"].read_text()
