"""Feature backbones: the evaluator always, xrv / Inception only from local weights files, skipped (never a crash,
never a download) otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrgen.evaluate.backbones import (
    EvaluatorBackbone,
    Skipped,
    load_backbones,
    load_biomedclip,
    load_inception,
    load_rad_dino,
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


# ---------------------------------------------------------------------------------------------- RAD-DINO, BiomedCLIP


def timm_to_hf_dinov2(state: dict) -> dict:
    """The inverse renaming (timm ViT -> Hugging Face Dinov2Model layout), written out independently of the loader."""
    out = {"embeddings.cls_token": state["cls_token"], "embeddings.position_embeddings": state["pos_embed"],
           "embeddings.mask_token": torch.zeros_like(state["cls_token"][0]),
           "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(depth):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[f"{b}attn.qkv.{kind}"].chunk(3)
            out |= {f"{h}attention.attention.query.{kind}": q, f"{h}attention.attention.key.{kind}": k,
                    f"{h}attention.attention.value.{kind}": v,
                    f"{h}attention.output.dense.{kind}": state[f"{b}attn.proj.{kind}"],
                    f"{h}norm1.{kind}": state[f"{b}norm1.{kind}"], f"{h}norm2.{kind}": state[f"{b}norm2.{kind}"],
                    f"{h}mlp.fc1.{kind}": state[f"{b}mlp.fc1.{kind}"], f"{h}mlp.fc2.{kind}": state[f"{b}mlp.fc2.{kind}"]}
        out[f"{h}layer_scale1.lambda1"] = state[f"{b}ls1.gamma"]
        out[f"{h}layer_scale2.lambda1"] = state[f"{b}ls2.gamma"]
    return {k: v.contiguous() for k, v in out.items()}


def test_optional_backbones_skip_with_one_message_naming_their_config_key(tmp_path):
    cfg = {"rad_dino": {"dir": None}, "biomedclip": {"dir": str(tmp_path / "absent")}}
    usable, skipped = load_backbones(["rad_dino", "biomedclip"], cfg)
    assert usable == []
    rad_dino, biomedclip = skipped
    assert "evaluation.backbones.rad_dino.dir is not set" in rad_dino.line()
    assert "evaluation.backbones.biomedclip.dir" in biomedclip.line() and "open_clip_config.json" in biomedclip.line()
    (tmp_path / "rad").mkdir()
    (tmp_path / "rad" / "config.json").write_text("{}")
    partial = load_rad_dino({"dir": str(tmp_path / "rad")})
    assert isinstance(partial, Skipped) and "evaluation.backbones.rad_dino.dir" in partial.reason
    assert "model.safetensors" in partial.reason and "config.json" not in partial.reason.split("lacks")[1]


def test_rad_dino_loads_hugging_face_weights_through_timm(tmp_path):
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    reference = VisionTransformer(img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=2, init_values=1.0,
                                  global_pool="token", num_classes=0).eval()
    with torch.no_grad():  # non-trivial layer scales and norms, so a wrong mapping shows
        for name, value in reference.named_parameters():
            if "gamma" in name or "norm" in name:
                value.add_(torch.rand_like(value))
    save_file(timm_to_hf_dinov2(reference.state_dict()), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 14,
        "image_size": 28, "mlp_ratio": 4, "layerscale_value": 1.0, "layer_norm_eps": 1e-6, "qkv_bias": True}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": 28, "width": 28}, "image_mean": [0.5307] * 3, "image_std": [0.2583] * 3}))
    backbone = load_rad_dino({"dir": str(tmp_path)})
    assert backbone.name == "rad_dino" and "28 px" in backbone.description and "bicubic" in backbone.description
    x = images(2, 56)
    out = backbone.features(x)
    expected_input = (torch.nn.functional.interpolate(x, size=(28, 28), mode="bicubic", antialias=True)
                      .repeat(1, 3, 1, 1) - 0.5307) / 0.2583
    with torch.no_grad():
        expected = reference(expected_input).numpy()
    assert out.shape == (2, 32) and np.allclose(out, expected, atol=1e-5)
    usable, _ = load_backbones(["rad_dino"], {"rad_dino": {"dir": str(tmp_path)}})
    assert [b.name for b in usable] == ["rad_dino"]


def test_biomedclip_image_tower_loads_from_a_local_open_clip_folder(tmp_path):
    from open_clip.model import _build_vision_tower

    vision_cfg = {"image_size": 32, "layers": 1, "width": 16, "head_width": 8, "patch_size": 16}
    torch.manual_seed(0)
    reference = _build_vision_tower(8, vision_cfg).eval()
    state = {f"visual.{k}": v for k, v in reference.state_dict().items()}
    state["text.unused.weight"] = torch.zeros(2)  # the text tower's weights are ignored
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 8, "vision_cfg": vision_cfg},
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}))
    backbone = load_biomedclip({"dir": str(tmp_path)})
    assert backbone.name == "biomedclip" and "32 px" in backbone.description
    x = images(2, 48)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    resized = torch.nn.functional.interpolate(x, size=(32, 32), mode="bicubic", antialias=True).repeat(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference((resized - mean) / std).numpy()
    out = backbone.features(x)
    assert out.shape == (2, 8) and np.allclose(out, expected, atol=1e-5)
