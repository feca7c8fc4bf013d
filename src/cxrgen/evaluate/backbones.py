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

A backbone that cannot be used is returned as :class:`Skipped` (backbone name + reason): the report prints that line
instead of its numbers, the pipeline never fails on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

BACKBONES = ("evaluator", "xrv", "inception")
XRV_WEIGHTS = "densenet121-res224-all"


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
        else:
            found = load_inception(cfg.get("inception", {}))
        (skipped if isinstance(found, Skipped) else usable).append(found)
    return usable, skipped
