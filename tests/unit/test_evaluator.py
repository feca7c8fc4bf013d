import json

import numpy as np
import pandas as pd
import pytest
import torch
from evaluate_helpers import real_store, synthetic_store
from safetensors.torch import load_file, save_file
from torchvision.models import DenseNet

from cxrgen.config import validate_config
from cxrgen.evaluate.classifier import (
    LabelledImages,
    augment,
    build_classifier,
    load_evaluator,
    positive_weights,
    save_evaluator,
    tiny_classifier_config,
    tiny_evaluator,
    train_classifier,
    with_store_root,
)
from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS
from cxrgen.stages.init_tracking import init_tracking
from cxrgen.stages.train_evaluator import train_evaluator
from cxrgen.train.loop import Interrupted, latest_checkpoint
from cxrgen.train.losses import masked_bce

RES = 32


def tiny_cfg(**overrides) -> dict:
    section = {"model": tiny_classifier_config(), "batch_size": 4, "lr": 1e-2, "max_steps": 3, "eval_every": 2,
               "checkpoint_every": 2, "log_every": 1, **overrides}
    return validate_config({"sources": {"nih": {}}, "evaluator": section})["evaluator"]


def test_full_scale_default_is_densenet121_with_one_channel_and_14_outputs():
    cfg = validate_config({"sources": {"nih": {}}})["evaluator"]
    model = build_classifier(cfg["model"])
    assert isinstance(model, DenseNet)
    assert model.features.conv0.in_channels == 1 and model.classifier.out_features == len(LABEL_COLUMNS) == 14
    assert model.classifier.in_features == 1024  # DenseNet-121's final feature width
    # torchvision densenet121 has 7,978,856 parameters with 3 input channels and 1,000 outputs
    expected = 7_978_856 - 2 * 64 * 7 * 7 - (1000 - 14) * (1024 + 1)
    assert sum(p.numel() for p in model.parameters()) == expected
    with pytest.raises(ValueError, match="allowed"):
        build_classifier({"depth": 121})


def test_masked_bce_ignores_unknown_labels_and_their_gradients():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 0.1, -2.0]], requires_grad=True)
    targets = torch.tensor([[1.0, float("nan"), 0.0], [float("nan"), float("nan"), 1.0]])
    loss = masked_bce(logits, targets)
    known = ~torch.isnan(targets)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[known], targets[known])
    assert torch.allclose(loss, expected)
    loss.backward()
    assert (logits.grad[~known] == 0).all() and (logits.grad[known] != 0).all()
    weighted = masked_bce(logits, targets, pos_weight=torch.tensor([3.0, 1.0, 1.0]))
    assert weighted > loss  # the positive of finding 0 counts three times
    empty = masked_bce(logits, torch.full_like(targets, float("nan")))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_positive_weights_are_neg_over_pos_clipped():
    labels = np.array([[1, 0, np.nan], [0, 0, 1], [0, 0, 1], [0, np.nan, 1]], dtype=np.float32)
    assert positive_weights(labels, max_weight=10).tolist() == [3.0, 1.0, 1.0]  # no pos / no neg -> 1
    assert positive_weights(labels, max_weight=2)[0] == 2.0


def test_augment_is_a_function_of_the_generator_and_identity_when_off():
    images = torch.rand(3, 1, RES, RES, generator=torch.Generator().manual_seed(0))
    cfg = tiny_cfg()["augment"]
    a = augment(images, cfg, torch.Generator().manual_seed(7))
    b = augment(images, cfg, torch.Generator().manual_seed(7))
    c = augment(images, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.min() >= 0 and a.max() <= 1
    off = dict.fromkeys(cfg, 0.0)
    assert torch.allclose(augment(images, off, torch.Generator().manual_seed(7)), images, atol=1e-6)


def test_evaluator_interface_save_load_strict(tmp_path):
    ev = tiny_evaluator(resolution=RES, seed=3)
    images = torch.rand(5, 1, 48, 40, generator=torch.Generator().manual_seed(1))  # any size: resized internally
    feats, probs = ev.features(images), ev.predict_proba(images)
    assert feats.shape == (5, ev.feature_dim) and probs.shape == (5, 14)
    assert ((probs > 0) & (probs < 1)).all() and ev.findings == list(CHEXPERT_LABELS)
    logits = ev.model.classifier(feats)  # features are exactly the classifier's input
    assert torch.allclose(torch.sigmoid(logits), probs, atol=1e-6)
    save_evaluator(ev, tmp_path / "ev")
    loaded = load_evaluator(tmp_path / "ev")
    assert loaded.resolution == RES and torch.equal(loaded.features(images), feats)
    meta = json.loads((tmp_path / "ev/evaluator.json").read_text())
    assert meta["model"] == tiny_classifier_config()
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        ev.features(torch.rand(2, 3, RES, RES))

    weights = load_file(str(tmp_path / "ev/model.safetensors"))
    weights.pop("classifier.bias")
    save_file(weights, str(tmp_path / "ev/model.safetensors"))
    with pytest.raises(RuntimeError, match="classifier.bias"):
        load_evaluator(tmp_path / "ev")
    with pytest.raises(FileNotFoundError):
        load_evaluator(tmp_path)


def _mixed_frame(tmp_path) -> tuple[pd.DataFrame, pd.DataFrame]:
    real = real_store(tmp_path / "real", n=30)
    train_ids = real.loc[real["split"] == "train", "image_id"].tolist()
    syn = synthetic_store(tmp_path / "syn", real, twins_of=train_ids[:6])
    frame = pd.concat([with_store_root(real[real["split"] == "train"], tmp_path / "real"),
                       with_store_root(syn, tmp_path / "syn")], ignore_index=True)
    return frame, with_store_root(real[real["split"] == "val"], tmp_path / "real")


def test_mixed_stores_are_read_at_the_training_resolution(tmp_path):
    frame, _ = _mixed_frame(tmp_path)
    data = LabelledImages(frame, RES, label_mask=np.array([True] * 2 + [False] * 12))
    real_item, syn_item = data[0], data[len(data) - 1]
    assert real_item["image"].shape == syn_item["image"].shape == (1, RES, RES)
    assert torch.isnan(syn_item["labels"][2:]).all()
    assert float(syn_item["image"].min()) >= 0 and float(syn_item["image"].max()) <= 1


def _train(tmp_path, frame, val, name, **kw):
    return train_classifier(frame, cfg=tiny_cfg(), resolution=RES, seed=4, state_dir=tmp_path / f"state_{name}",
                            val_rows=val, **kw)


def test_interrupted_and_resumed_training_equals_uninterrupted(tmp_path):
    frame, val = _mixed_frame(tmp_path)
    straight = _train(tmp_path, frame, val, "a")
    assert straight.steps == 3 and [e["step"] for e in straight.evals] == [2, 3]
    assert straight.selected_step == max(straight.evals, key=lambda e: e["val/auroc_macro"])["step"]
    with pytest.raises(Interrupted):
        _train(tmp_path, frame, val, "b", stop_after_steps=2)
    assert latest_checkpoint(tmp_path / "state_b").name == "ckpt-00000002.pt"
    resumed = _train(tmp_path, frame, val, "b")
    assert resumed.resumed_from == 2 and resumed.selected_step == straight.selected_step
    a, b = straight.evaluator.model.state_dict(), resumed.evaluator.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    other_seed = train_classifier(frame, cfg=tiny_cfg(), resolution=RES, seed=5, state_dir=tmp_path / "state_c")
    assert not torch.equal(other_seed.evaluator.model.classifier.weight, straight.evaluator.model.classifier.weight)


def test_train_evaluator_stage_outputs_and_tracking(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    index = real_store(tmp_path / "store", n=40)
    tracking = tmp_path / "run.json"
    init_tracking(tracking, "test", tmp_path)
    metrics = train_evaluator(index_path=tmp_path / "store/index.parquet", store_root=tmp_path / "store",
                              resolution=RES, cfg=tiny_cfg(), seed=1, state_dir=tmp_path / "state",
                              out_dir=tmp_path / "out", tracking_json=tracking, job_name="train_evaluator")
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"evaluator.json", "model.safetensors", "metrics.json",
                                              "loss_curve.png", "MODEL_CARD.md", "model_card.json"}
    assert metrics["n_train"] == (index["split"] == "train").sum() and metrics["n_val"] == 8
    val = json.loads((out / "metrics.json").read_text())["val"]
    skipped = {entry["finding"]: entry for entry in val["skipped"]}  # a single class among the 8 val labels
    assert set(val["per_finding"]) | set(skipped) == set(CHEXPERT_LABELS) and val["n_images"] == 8
    assert all(min(entry["n_pos"], entry["n_neg"]) == 0 for entry in skipped.values())
    assert load_evaluator(out).predict_proba(torch.rand(2, 1, RES, RES)).shape == (2, 14)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(json.loads(tracking.read_text())["tracking_uri"])
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["snakemake.rule"] == "train_evaluator"
    assert "val/auroc_macro" in run.data.metrics and "train/loss" in run.data.metrics
