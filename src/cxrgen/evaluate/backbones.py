"""Pluggable feature extractors for the distribution metrics.

Every backbone maps images ``[B, 1, H, W]`` in [0, 1] (any size) to features ``[B, D]`` (numpy float32) with its own
preprocessing:

* ``evaluator`` — the in-domain DenseNet (rule ``train_evaluator``, :mod:`cxrgen.evaluate.classifier`): global-pooled
  penultimate features at the evaluator's training resolution. Always available once the evaluator is trained.
* ``xrv`` — torchxrayvision's DenseNet-121 ``densenet121-res224-all`` (1024-d ``features2``): pixels scaled to
  [-1024, 1024], resized to 224 px. Used only when its weights file already lies in torchxrayvision's cache folder
  (``~/.torchxrayvision/models_data/<file name of the release URL>`` or the configured ``cache_dir``); it is never
  downloaded.
* ``inception`` — torch-fidelity's Inception-V3 (2048-d pool features, the FID standard): grey replicated to RGB,
  uint8, resized to 299 px inside the network. Used only when the configured weights file exists.

* ``rad_dino`` — RAD-DINO (Pérez-García et al. 2025; microsoft/rad-dino, a DINOv2 ViT-B/14 trained on chest X-rays,
  the backbone of CheXGenBench's FID): 768-d CLS token after the final layer norm (the HF ``pooler_output``). Built
  with timm (no ``transformers``) from a local folder ``evaluation.backbones.rad_dino.dir`` holding the files of the
  Hugging Face repository: ``config.json`` (Dinov2 config: hidden_size, num_hidden_layers, num_attention_heads,
  patch_size, image_size, mlp_ratio, layerscale_value, layer_norm_eps), ``model.safetensors`` (HF Dinov2 key names,
  mapped onto timm's ViT at load time; timm key names load as they are) and optionally ``preprocessor_config.json``
  (image_mean / image_std / crop_size; defaults are RAD-DINO's).
* ``biomedclip`` — BiomedCLIP (Zhang et al. 2023; microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224) image
  tower only: 512-d projected image embedding (not normalised). Built with open_clip's vision-tower builder (the text
  tower, PubMedBERT, would need ``transformers``, and is not needed) from a local folder
  ``evaluation.backbones.biomedclip.dir`` holding ``open_clip_config.json`` (``model_cfg.embed_dim``,
  ``model_cfg.vision_cfg``, ``preprocess_cfg.mean/std``) and ``open_clip_pytorch_model.bin`` or
  ``open_clip_model.safetensors`` (the ``visual.*`` weights are used).

Resize and normalisation per backbone (images arrive grey ``[B, 1, R, R]`` in [0, 1] at the store resolution R; our
resizes are ``torch.nn.functional.interpolate(..., antialias=True, align_corners=False)``, skipped when the size
already matches; the images are square, so "shortest edge + centre crop" of the reference processors is a plain
resize)::

    backbone    input    resize                         intensity / normalisation              channels
    evaluator   its own  antialiased bilinear           [-1, 1] (classifier.prepare)           1 (grey)
    xrv         224 px   antialiased bilinear           x * 2048 - 1024 (torchxrayvision)      1 (grey), features2
    inception   299 px   torch-fidelity's TF1-style      uint8 0..255                           3 (grey replicated)
                         bilinear inside the network
                         (not antialiased: the FID
                         standard)
    rad_dino    518 px   antialiased bicubic            (x - 0.5307) / 0.2583 (RAD-DINO)       3 (grey replicated)
    biomedclip  224 px   antialiased bicubic            (x - CLIP mean) / CLIP std per channel 3 (grey replicated)

A backbone that cannot be used is returned as :class:`Skipped` (backbone name + reason): the report prints that line
instead of its numbers, the pipeline never fails on it. A missing local file names the config key that points to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

BACKBONES = ("evaluator", "xrv", "inception", "rad_dino", "biomedclip")
XRV_WEIGHTS = "densenet121-res224-all"
# RAD-DINO's preprocessor_config.json (microsoft/rad-dino): crop 518, bicubic, mean 0.5307, std 0.2583 per channel
RAD_DINO_DEFAULTS = {"crop_size": 518, "image_mean": [0.5307] * 3, "image_std": [0.2583] * 3}
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Skipped:
    """A backbone that was not used, and why."""

    backbone: str
    reason: str

    def line(self) -> str:
        return f"{self.backbone}: skipped — {self.reason}"

    def as_dict(self) -> dict:
        return {"backbone": self.backbone, "reason": self.reason}


class Backbone(Protocol):
    name: str
    description: str  # preprocessing and provenance, written into the metric's protocol

    def features(self, images: torch.Tensor) -> np.ndarray: ...


def _resize(images: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Antialiased resize to ``size`` × ``size`` (a no-op when already that size)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode=mode, antialias=True, align_corners=False)


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected images [B, 1, H, W] in [0, 1], got {tuple(images.shape)}")
    return images.float().clamp(0.0, 1.0)


class EvaluatorBackbone:
    """Features of the in-domain evaluator (an object with ``features`` / ``resolution``, see
    :class:`cxrgen.evaluate.classifier.Evaluator`)."""

    name = "evaluator"

    def __init__(self, evaluator, source: str = ""):
        self.evaluator = evaluator
        self.description = (f"in-domain DenseNet evaluator{f' ({source})' if source else ''}, global-pooled "
                            f"penultimate features, input {evaluator.resolution} px")

    def features(self, images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return np.asarray(self.evaluator.features(_check_images(images)), dtype=np.float32)


class XrvBackbone:
    """torchxrayvision DenseNet features (its preprocessing: [-1024, 1024] pixel range, 224 px)."""

    name = "xrv"

    def __init__(self, model: torch.nn.Module, weights: str, resolution: int = 224):
        self.model = model.eval()
        self.resolution = resolution
        self.description = (f"torchxrayvision DenseNet-121 '{weights}' features2 (1024-d), pixels scaled to "
                            f"[-1024, 1024], bilinear resize to {resolution} px")

    def features(self, images: torch.Tensor) -> np.ndarray:
        x = _resize(_check_images(images), self.resolution) * 2048.0 - 1024.0
        with torch.no_grad():
            return self.model.features2(x).numpy().astype(np.float32)


class InceptionBackbone:
    """torch-fidelity Inception-V3 pool features (2048-d)."""

    name = "inception"

    def __init__(self, model: torch.nn.Module, weights_path: Path):
        self.model = model.eval()
        self.description = (f"Inception-V3 (torch-fidelity, weights {Path(weights_path).name}) 2048-d pool features, "
                            "grey replicated to RGB, uint8, resized to 299 px inside the network")

    def features(self, images: torch.Tensor) -> np.ndarray:
        x = (_check_images(images) * 255.0).round().to(torch.uint8).repeat(1, 3, 1, 1)
        with torch.no_grad():
            out = self.model(x)
        out = out[0] if isinstance(out, tuple | list) else out
        return out.reshape(len(x), -1).numpy().astype(np.float32)


class _RgbNormalisedBackbone:
    """A network fed grey images replicated to RGB, resized (antialiased bicubic) to ``size`` and normalised per
    channel with ``mean`` / ``std``; its output is the feature vector."""

    name = ""

    def __init__(self, model: torch.nn.Module, *, size: int, mean, std, description: str):
        self.model = model.eval()
        self.size = int(size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.description = description

    def features(self, images: torch.Tensor) -> np.ndarray:
        x = _resize(_check_images(images), self.size, "bicubic").repeat(1, 3, 1, 1)
        with torch.no_grad():
            return self.model((x - self.mean) / self.std).numpy().astype(np.float32)


class RadDinoBackbone(_RgbNormalisedBackbone):
    """RAD-DINO CLS features (timm ViT built from the Hugging Face Dinov2 config)."""

    name = "rad_dino"

    def __init__(self, model: torch.nn.Module, *, size: int, mean, std, source: str):
        super().__init__(model, size=size, mean=mean, std=std, description=(
            f"RAD-DINO ({source}) CLS token after the final norm ({model.embed_dim}-d), grey replicated to RGB, "
            f"antialiased bicubic resize to {int(size)} px, (x - {mean[0]:.4f}) / {std[0]:.4f}"))


class BiomedClipBackbone(_RgbNormalisedBackbone):
    """BiomedCLIP image-tower embeddings (open_clip vision tower)."""

    name = "biomedclip"

    def __init__(self, visual: torch.nn.Module, *, size: int, mean, std, source: str):
        super().__init__(visual, size=size, mean=mean, std=std, description=(
            f"BiomedCLIP image tower ({source}), projected embedding (not normalised), grey replicated to RGB, "
            f"antialiased bicubic resize to {int(size)} px, per-channel CLIP mean/std normalisation"))


def _local_dir(cfg: dict, backbone: str, key: str, needed: tuple[str, ...]) -> Path | Skipped:
    """The configured local folder of a backbone, or the one Skipped line naming the config key."""
    directory = cfg.get(key)
    config_key = f"evaluation.backbones.{backbone}.{key}"
    if not directory:
        return Skipped(backbone, f"{config_key} is not set (a local folder with {', '.join(needed)}; nothing is "
                                 "downloaded)")
    directory = Path(os.path.expanduser(str(directory)))
    missing = [name for name in needed if not (directory / name).is_file()]
    if missing:
        return Skipped(backbone, f"{config_key} = {directory} lacks {', '.join(missing)}")
    return directory


def hf_dinov2_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``Dinov2Model`` weights renamed onto timm's ``VisionTransformer`` (query/key/value stacked into
    qkv; the mask token, used only for masked pre-training, dropped). Weights already in timm's layout pass as they
    are."""
    state = {k.removeprefix("dinov2."): v for k, v in state.items()}
    if "cls_token" in state:
        return state
    renames = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
               "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
               "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
               "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    block_parts = {"norm1": "norm1", "norm2": "norm2", "attention.output.dense": "attn.proj", "mlp.fc1": "mlp.fc1",
                   "mlp.fc2": "mlp.fc2"}
    out = {new: state[old] for old, new in renames.items() if old in state}
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    for i in range(depth):
        hf, tm = f"encoder.layer.{i}.", f"blocks.{i}."
        for part, target in block_parts.items():
            for kind in ("weight", "bias"):
                out[f"{tm}{target}.{kind}"] = state[f"{hf}{part}.{kind}"]
        for kind in ("weight", "bias"):
            out[f"{tm}attn.qkv.{kind}"] = torch.cat([state[f"{hf}attention.attention.{q}.{kind}"]
                                                     for q in ("query", "key", "value")])
        out[f"{tm}ls1.gamma"] = state[f"{hf}layer_scale1.lambda1"]
        out[f"{tm}ls2.gamma"] = state[f"{hf}layer_scale2.lambda1"]
    return out


def load_rad_dino(cfg: dict) -> RadDinoBackbone | Skipped:
    import json

    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer

    directory = _local_dir(cfg, "rad_dino", "dir", ("config.json", "model.safetensors"))
    if isinstance(directory, Skipped):
        return directory
    config = json.loads((directory / "config.json").read_text())
    processor_file = directory / "preprocessor_config.json"
    processor = {**RAD_DINO_DEFAULTS, **(json.loads(processor_file.read_text()) if processor_file.is_file() else {})}
    crop = processor["crop_size"]
    size = int(crop["height"] if isinstance(crop, dict) else crop)
    model = VisionTransformer(
        img_size=int(config.get("image_size", 518)), patch_size=int(config["patch_size"]),
        embed_dim=int(config["hidden_size"]), depth=int(config["num_hidden_layers"]),
        num_heads=int(config["num_attention_heads"]), mlp_ratio=float(config.get("mlp_ratio", 4)),
        init_values=float(config.get("layerscale_value", 1.0)), qkv_bias=bool(config.get("qkv_bias", True)),
        norm_layer=partial(torch.nn.LayerNorm, eps=float(config.get("layer_norm_eps", 1e-6))),
        global_pool="token", num_classes=0, dynamic_img_size=True)
    state = hf_dinov2_to_timm(load_file(str(directory / "model.safetensors")))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or [k for k in unexpected if k != "embeddings.mask_token"]:
        return Skipped("rad_dino", f"evaluation.backbones.rad_dino.dir = {directory}: weights do not match the config "
                                   f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return RadDinoBackbone(model, size=size, mean=processor["image_mean"], std=processor["image_std"],
                           source=directory.name)


def load_biomedclip(cfg: dict) -> BiomedClipBackbone | Skipped:
    import json

    from open_clip.model import _build_vision_tower

    directory = _local_dir(cfg, "biomedclip", "dir", ("open_clip_config.json",))
    if isinstance(directory, Skipped):
        return directory
    weights = [directory / name for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
               if (directory / name).is_file()]
    if not weights:
        return Skipped("biomedclip", f"evaluation.backbones.biomedclip.dir = {directory} lacks "
                                     "open_clip_model.safetensors / open_clip_pytorch_model.bin")
    config = json.loads((directory / "open_clip_config.json").read_text())
    model_cfg, preprocess = config["model_cfg"], config.get("preprocess_cfg", {})
    visual = _build_vision_tower(int(model_cfg["embed_dim"]), dict(model_cfg["vision_cfg"]))
    if weights[0].suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights[0]))
    else:
        state = torch.load(weights[0], map_location="cpu", weights_only=True)
    state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    missing, unexpected = visual.load_state_dict(state, strict=False)
    if missing or unexpected:
        return Skipped("biomedclip", f"evaluation.backbones.biomedclip.dir = {directory}: weights do not match "
                                     f"open_clip_config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    size = model_cfg["vision_cfg"].get("image_size", 224)
    return BiomedClipBackbone(visual, size=size[0] if isinstance(size, list | tuple) else size,
                              mean=preprocess.get("mean", OPENAI_CLIP_MEAN), std=preprocess.get("std", OPENAI_CLIP_STD),
                              source=directory.name)


def xrv_weights_file(cache_dir: str | Path | None = None, weights: str = XRV_WEIGHTS) -> Path:
    """Where torchxrayvision looks for a weights file (its cache folder + the release file name), without
    downloading anything."""
    import torchxrayvision as xrv

    url = xrv.models.model_urls[weights]["weights_url"]
    folder = cache_dir if cache_dir is not None else xrv.utils.get_cache_dir()
    return Path(os.path.expanduser(str(folder))) / os.path.basename(url)


def load_xrv(cfg: dict) -> XrvBackbone | Skipped:
    weights = cfg.get("weights", XRV_WEIGHTS)
    try:
        path = xrv_weights_file(cfg.get("cache_dir"), weights)
    except ImportError as err:
        return Skipped("xrv", f"torchxrayvision is not installed ({err})")
    except KeyError:
        return Skipped("xrv", f"torchxrayvision has no weights named {weights!r}")
    if not path.is_file():
        return Skipped("xrv", f"weights file {path} not present (torchxrayvision would download it; downloads are "
                              "disabled — place the file there to enable this backbone)")
    import torchxrayvision as xrv

    model = xrv.models.DenseNet(weights=weights, cache_dir=str(path.parent))  # the file exists: no download
    return XrvBackbone(model, weights)


def load_inception(cfg: dict) -> InceptionBackbone | Skipped:
    path = cfg.get("weights_path")
    if not path:
        return Skipped("inception", "no weights file configured (evaluation.backbones.inception.weights_path); "
                                    "torch-fidelity would download it, downloads are disabled")
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        return Skipped("inception", f"weights file {path} not present")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    return InceptionBackbone(model, path)


def load_evaluator_backbone(evaluator_dir: str | Path | None) -> EvaluatorBackbone | Skipped:
    if evaluator_dir is None or not Path(evaluator_dir).is_dir():
        return Skipped("evaluator", f"no trained evaluator at {evaluator_dir}")
    from cxrgen.evaluate.classifier import load_evaluator

    return EvaluatorBackbone(load_evaluator(evaluator_dir), str(evaluator_dir))


def load_backbones(names: list[str], cfg: dict, *, evaluator=None, evaluator_dir: str | Path | None = None
                   ) -> tuple[list[Backbone], list[Skipped]]:
    """The usable backbones among ``names`` (section ``evaluation.backbones`` for their settings) and the skipped
    ones. ``evaluator`` (an already loaded evaluator) takes precedence over ``evaluator_dir``."""
    unknown = sorted(set(names) - set(BACKBONES))
    if unknown:
        raise ValueError(f"unknown backbone(s) {unknown}; allowed: {list(BACKBONES)}")
    usable, skipped = [], []
    for name in names:
        if name == "evaluator":
            found = EvaluatorBackbone(evaluator) if evaluator is not None else load_evaluator_backbone(evaluator_dir)
        elif name == "xrv":
            found = load_xrv(cfg.get("xrv", {}))
        elif name == "rad_dino":
            found = load_rad_dino(cfg.get("rad_dino", {}))
        elif name == "biomedclip":
            found = load_biomedclip(cfg.get("biomedclip", {}))
        else:
            found = load_inception(cfg.get("inception", {}))
        (skipped if isinstance(found, Skipped) else usable).append(found)
    return usable, skipped
