"""Every custom model (DKIM adapter, SR model, AVA-TLS squeeze, pipeline manifest) round-trips through diffusers'
save_pretrained/from_pretrained or save_config/from_config with its config, and directories in the formats written
before are refused with the rule to re-run."""

import json

import pytest
import torch
from test_dkim import tiny_adapter
from test_sr import HIGH, LOW
from test_sr import tiny_cfg as sr_cfg

from cxrgen.models.dkim import DkimAdapter, load_dkim, save_dkim
from cxrgen.models.squeeze import InformationSqueeze, load_squeeze, save_squeeze
from cxrgen.models.sr import SRModel, build_sr, load_sr, save_sr
from cxrgen.pipeline import PIPELINE_JSON, PipelineManifest, read_pipeline_json, write_pipeline_json


def _public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    left, right = a.state_dict(), b.state_dict()
    assert list(left) == list(right)
    for key in left:
        assert torch.equal(left[key], right[key]), key


def test_dkim_adapter_round_trip(tmp_path):
    _, adapter = tiny_adapter(seed=1)
    with torch.no_grad():  # trained-looking weights: the zero-initialised outputs would hide a failed load
        for parameter in adapter.parameters():
            parameter.normal_()
    adapter.register_to_config(conditioning_scale=0.5)
    save_dkim(adapter, tmp_path / "dkim", {"base_unet_sha": "abc", "cfg": {"lr": 1e-3}})
    assert {p.name for p in (tmp_path / "dkim").iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors"}
    loaded = load_dkim(tmp_path / "dkim")
    assert isinstance(loaded, DkimAdapter)
    _same_weights(adapter, loaded)
    assert (loaded.findings, loaded.negatives, loaded.conditioning_scale) == (adapter.findings, True, 0.5)
    assert loaded.config.provenance == {"base_unet_sha": "abc", "cfg": {"lr": 1e-3}}
    assert loaded.config.controlnet_config == json.loads(json.dumps(adapter.config.controlnet_config))
    assert loaded.config.sentences["Cardiomegaly"] == ["There is cardiomegaly.", "There is no cardiomegaly."]
    labels = torch.tensor([[float("nan")] * 2 + [1.0] + [0.0] * 11])
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([10])
    expected = adapter.eval().residuals(x, t, adapter.condition(labels))
    got = loaded.residuals(x, t, loaded.condition(labels))
    assert torch.equal(expected["mid_block_additional_residual"], got["mid_block_additional_residual"])


def test_dkim_load_is_strict_and_checks_its_templates(tmp_path):
    from safetensors.torch import load_file, save_file

    _, adapter = tiny_adapter()
    save_dkim(adapter, tmp_path / "a", {})
    config = json.loads((tmp_path / "a/config.json").read_text())
    config["sentences"]["Cardiomegaly"] = ["There is a big heart.", "There is no big heart."]
    (tmp_path / "a/config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Cardiomegaly"):
        load_dkim(tmp_path / "a")
    save_dkim(adapter, tmp_path / "b", {})
    weights_file = tmp_path / "b/diffusion_pytorch_model.safetensors"
    weights = load_file(weights_file)
    del weights["bank"]
    save_file(weights, weights_file)
    with pytest.raises(RuntimeError, match="Missing key.*bank"):
        load_dkim(tmp_path / "b")


def test_sr_model_round_trip_is_a_diffusers_pipeline(tmp_path):
    from diffusers import DDIMScheduler, UNet2DModel

    torch.manual_seed(2)
    model = build_sr(sr_cfg(), low_res=LOW, high_res=HIGH)
    model.mode = "decoded"
    save_sr(model, tmp_path / "sr")
    index = json.loads((tmp_path / "sr/model_index.json").read_text())
    assert index["_class_name"] == "SRModel" and index["unet"] == ["diffusers", "UNet2DModel"]
    assert (index["low_res"], index["high_res"], index["mode"]) == (LOW, HIGH, "decoded")
    loaded = load_sr(tmp_path / "sr")
    assert isinstance(loaded, SRModel) and (loaded.low_res, loaded.high_res, loaded.mode) == (LOW, HIGH, "decoded")
    _same_weights(model.unet, loaded.unet)
    assert _public(loaded.scheduler.config) == _public(model.scheduler.config)
    # the components stay loadable with plain diffusers
    assert UNet2DModel.from_pretrained(tmp_path / "sr/unet").config.in_channels == 2
    assert DDIMScheduler.from_pretrained(tmp_path / "sr/scheduler").config.num_train_timesteps == 2000
    with pytest.raises(ValueError, match="mode"):
        model.mode = "nearest"


def test_squeeze_round_trip(tmp_path):
    torch.manual_seed(3)
    module = InformationSqueeze(width=16, length=4, heads=2, layers=2, mlp_ratio=2.0, embed_dim=8)
    save_squeeze(module, tmp_path)
    loaded = load_squeeze(tmp_path)
    assert _public(loaded.config) == {
        "width": 16, "length": 4, "heads": 2, "layers": 2, "mlp_ratio": 2.0, "embed_dim": 8}
    _same_weights(module, loaded)
    tokens, mask = torch.randn(2, 5, 16), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(module.eval()(tokens, mask)[0], loaded(tokens, mask)[0])
    assert load_squeeze(tmp_path / "nothing-here") is None


def test_pipeline_manifest_round_trip_and_old_manifests(tmp_path):
    ldm = tmp_path / "models/ldm/cheff"
    ldm.mkdir(parents=True)
    write_pipeline_json(ldm, final_dir=ldm, conditioning="text", ae_dir=tmp_path / "models/autoencoder",
                        clip_dir=tmp_path / "models/clip", sr_dir=None,
                        extra={"latent_resolution": 8, "mlflow_run_id": "run1"})
    saved = json.loads((ldm / PIPELINE_JSON).read_text())
    assert saved["_class_name"] == "PipelineManifest" and saved["autoencoder"] == "../../autoencoder"
    info = read_pipeline_json(ldm)
    assert info == {"conditioning": "text", "autoencoder": (tmp_path / "models/autoencoder").resolve(),
                    "text_encoder": (tmp_path / "models/clip").resolve(), "super_resolution": None,
                    "latent_resolution": 8, "mlflow_run_id": "run1"}
    # a manifest written before it was a ConfigMixin (plain JSON, same keys) reads the same
    old = {k: v for k, v in saved.items() if not k.startswith("_")}
    (ldm / PIPELINE_JSON).write_text(json.dumps(old))
    assert read_pipeline_json(ldm) == info
    with pytest.raises(TypeError):
        write_pipeline_json(ldm, final_dir=ldm, conditioning="text", ae_dir=tmp_path, clip_dir=None, sr_dir=None,
                            extra={"no_such_field": 1})
    with pytest.raises(ValueError, match="conditioning"):
        PipelineManifest(conditioning="image")
    with pytest.raises(FileNotFoundError, match="train_ldm"):
        read_pipeline_json(tmp_path)


def test_directories_in_the_old_formats_are_refused_with_the_rule_to_rerun(tmp_path):
    (tmp_path / "dkim").mkdir()
    (tmp_path / "dkim/dkim.json").write_text("{}")
    with pytest.raises(ValueError, match="old format.*train_dkim"):
        load_dkim(tmp_path / "dkim")
    (tmp_path / "sr").mkdir()
    (tmp_path / "sr/sr_config.json").write_text("{}")
    with pytest.raises(ValueError, match="old format.*train_sr"):
        load_sr(tmp_path / "sr")
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip/squeeze.json").write_text("{}")
    with pytest.raises(ValueError, match="old format.*train_clip_avatls"):
        load_squeeze(tmp_path / "clip")
    with pytest.raises(FileNotFoundError, match="train_dkim"):
        load_dkim(tmp_path / "sr")
    save_sr(build_sr(sr_cfg(), low_res=LOW, high_res=HIGH), tmp_path / "sr2")
    with pytest.raises(ValueError, match="not a DkimAdapter"):
        load_dkim(tmp_path / "sr2/unet")
