"""Feature backbones: the evaluator always, xrv / Inception only from local weights files, skipped (never a crash,
never a download) otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrgen.evaluate.backbones import (
    EvaluatorBackbone,
    Skipped,
    load_backbones,
    load_inception,
    load_xrv,
    xrv_weights_file,
)
from cxrgen.evaluate.classifier import tiny_evaluator


@pytest.fixture
def no_downloads(monkeypatch):
    """Any download attempt by torchxrayvision or torch-fidelity fails the test."""
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity_inception
    import torchxrayvision as xrv

    def refuse(*args, **kwargs):
        raise AssertionError("a backbone tried to download weights")

    monkeypatch.setattr(xrv.utils, "download", refuse)
    monkeypatch.setattr(fidelity_inception, "load_state_dict_from_url", refuse)


def images(n=3, size=40, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_missing_backbones_are_skipped_with_a_reason(tmp_path, no_downloads):
    evaluator = tiny_evaluator(32)
    cfg = {"xrv": {"weights": "densenet121-res224-all", "cache_dir": str(tmp_path / "xrv")},
           "inception": {"weights_path": None}}
    usable, skipped = load_backbones(["evaluator", "xrv", "inception"], cfg, evaluator=evaluator)
    assert [b.name for b in usable] == ["evaluator"]
    assert [s.backbone for s in skipped] == ["xrv", "inception"]
    assert all(isinstance(s, Skipped) for s in skipped)
    xrv_line, inception_line = (s.line() for s in skipped)
    assert xrv_line.startswith("xrv: skipped") and str(tmp_path / "xrv") in xrv_line and "not present" in xrv_line
    assert "weights_path" in inception_line
    missing = load_inception({"weights_path": str(tmp_path / "nope.pth")})
    assert isinstance(missing, Skipped) and "not present" in missing.reason
    assert not (tmp_path / "xrv").exists()  # nothing was created or fetched
    _, skipped = load_backbones(["evaluator"], cfg, evaluator_dir=tmp_path / "no-evaluator")
    assert skipped[0].backbone == "evaluator" and "no trained evaluator" in skipped[0].reason
    with pytest.raises(ValueError, match="allowed"):
        load_backbones(["clip"], cfg, evaluator=evaluator)


def test_evaluator_backbone_features():
    evaluator = tiny_evaluator(32)
    backbone = EvaluatorBackbone(evaluator)
    out = backbone.features(images(size=48))
    assert out.shape == (3, evaluator.feature_dim) and out.dtype == np.float32
    assert np.allclose(out, backbone.features(images(size=48)))  # deterministic (eval mode)
    assert "32 px" in backbone.description
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        backbone.features(torch.rand(2, 3, 32, 32))


def test_xrv_is_used_when_its_weights_file_is_present(tmp_path, no_downloads):
    import torchxrayvision as xrv

    path = xrv_weights_file(tmp_path)
    assert path.parent == tmp_path and path.name.endswith(".pt")
    default = xrv_weights_file(None)
    assert ".torchxrayvision" in str(default) and default.name == path.name  # xrv's own cache folder
    torch.manual_seed(0)
    torch.save(xrv.models.DenseNet(), path)  # the release files are whole pickled models
    backbone = load_xrv({"weights": "densenet121-res224-all", "cache_dir": str(tmp_path)})
    assert backbone.name == "xrv" and "[-1024, 1024]" in backbone.description
    out = backbone.features(images(2, 64))
    assert out.shape == (2, 1024) and np.isfinite(out).all()


def test_inception_is_used_when_its_weights_file_is_present(tmp_path, monkeypatch, no_downloads):
    """The real weights (95 MB) are not shipped: a stand-in file whose loading is replaced by the network's own
    random initialisation checks the wiring (file check, uint8 RGB input, 2048-d output)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"stand-in")
    loaded = []
    monkeypatch.setattr(torch, "load", lambda path, **kw: loaded.append(path) or {})
    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state, *a, **k: None)
    backbone = load_inception({"weights_path": str(weights)})
    assert loaded == [str(weights)]
    out = backbone.features(images(2, 64))
    assert out.shape == (2, 2048) and np.isfinite(out).all()
