"""The generation cascade, assembled from its trained parts: text → DDIM latents (LDM, optional DKIM adapter) →
autoencoder decoder → optional super-resolution.

This module sits above :mod:`cxrgen.models` (it imports the diffusion, DKIM, SR, autoencoder and text-encoder modules;
none of them imports it). An LDM directory names the parts it was trained with in ``cxrgen_pipeline.json``, a
diffusers ``ConfigMixin`` config (:class:`PipelineManifest`)::

    {"_class_name": "PipelineManifest", "conditioning": "text"|"none", "autoencoder": "../../autoencoder",
     "text_encoder": "../../clip", "super_resolution": "../../sr", "latent_resolution": 64, "mlflow_run_id": ...}

with paths relative to the LDM directory. Manifests written before it was a ``ConfigMixin`` (no ``_class_name``) have
the same keys and still load.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import ConfigMixin, DDPMScheduler
from diffusers.configuration_utils import register_to_config

from cxrgen.models.diffusion import CONDITIONINGS, LatentSampler, SamplerSettings, decode_latents, load_unet

PIPELINE_JSON = "cxrgen_pipeline.json"
_COMPONENT_PATHS = ("autoencoder", "text_encoder", "super_resolution")


class PipelineManifest(ConfigMixin):
    """The parts an LDM directory belongs to (``save_config(ldm_dir)`` writes ``cxrgen_pipeline.json``)."""

    config_name = PIPELINE_JSON

    @register_to_config
    def __init__(self, conditioning: str = "text", autoencoder: str | None = None, text_encoder: str | None = None,
                 super_resolution: str | None = None, latent_resolution: int | None = None,
                 mlflow_run_id: str | None = None):
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning {conditioning!r} is not one of {list(CONDITIONINGS)}")


def write_pipeline_json(ldm_dir: Path, *, final_dir: Path, conditioning: str, ae_dir: Path,
                        clip_dir: Path | None, sr_dir: Path | None, extra: dict | None = None) -> None:
    """``cxrgen_pipeline.json`` in ``ldm_dir``; paths relative to ``final_dir`` (where the directory ends up).
    ``extra``: the other :class:`PipelineManifest` fields (``latent_resolution``, ``mlflow_run_id``)."""
    def rel(p):
        return None if p is None else os.path.relpath(Path(p).resolve(), Path(final_dir).resolve())
    manifest = PipelineManifest(conditioning=conditioning, autoencoder=rel(ae_dir), text_encoder=rel(clip_dir),
                                super_resolution=rel(sr_dir), **(extra or {}))
    manifest.save_config(ldm_dir)


def read_pipeline_json(ldm_dir: Path | str) -> dict:
    """The manifest's fields with its relative paths resolved against ``ldm_dir``."""
    ldm_dir = Path(ldm_dir)
    if not (ldm_dir / PIPELINE_JSON).is_file():
        raise FileNotFoundError(f"{ldm_dir} is not an LDM directory (no {PIPELINE_JSON}); run rule train_ldm")
    manifest = PipelineManifest.from_config(PipelineManifest.load_config(ldm_dir))
    info = {k: v for k, v in manifest.config.items() if not k.startswith("_")}
    for key in _COMPONENT_PATHS:
        if info.get(key):
            info[key] = (ldm_dir / info[key]).resolve()
    return info


def sr_seed(seed: int) -> int:
    """The SR stage's noise seed for a sample: derived from, but not equal to, the LDM seed."""
    return int.from_bytes(hashlib.sha256(f"sr:{int(seed)}".encode()).digest()[:8], "little") >> 1


class CxrPipeline:
    """The whole cascade: text → DDIM latents → AE decoder → optional SR, for (prompt, seed) pairs.

    >>> pipe = CxrPipeline.from_dir("results/ldm")          # AE/text encoder/SR found via cxrgen_pipeline.json
    >>> out = pipe(["Large right pleural effusion."], [0], SamplerSettings(steps=50, guidance_scale=4))
    >>> out["low"].shape, (out["high"].shape if out["high"] is not None else None)
    """

    def __init__(self, unet, train_scheduler_config, autoencoder, text_encoder=None, sr=None,
                 info: dict | None = None, adapter=None):
        self.autoencoder, self.text_encoder, self.sr = autoencoder.eval(), text_encoder, sr
        self.sampler = LatentSampler(unet, train_scheduler_config, text_encoder.encode if text_encoder else None,
                                     adapter=adapter)
        self.info = info or {}

    @classmethod
    def from_dir(cls, ldm_dir: Path | str, *, ae_dir: Path | str | None = None, clip_dir: Path | str | None = None,
                 sr_dir: Path | str | None = None, use_sr: bool = True,
                 dkim_dir: Path | str | None = None) -> CxrPipeline:
        """Load strictly from an LDM directory; explicit dirs override the ones named in ``cxrgen_pipeline.json``.
        ``dkim_dir``: a DKIM adapter trained for this LDM (rule train_dkim); calls then need ``labels``."""
        from cxrgen.models.autoencoder import load_autoencoder

        ldm_dir = Path(ldm_dir)
        info = read_pipeline_json(ldm_dir)
        ae_dir = ae_dir or info.get("autoencoder")
        if ae_dir is None:
            raise ValueError(f"{ldm_dir / PIPELINE_JSON} names no autoencoder; pass ae_dir")
        unet = load_unet(ldm_dir / "unet")
        text_encoder = None
        if info["conditioning"] == "text":
            from cxrgen.models.clip import load_text_encoder

            clip_dir = clip_dir or info.get("text_encoder")
            if clip_dir is None:
                raise ValueError(f"{ldm_dir / PIPELINE_JSON} names no text encoder; pass clip_dir")
            text_encoder = load_text_encoder(clip_dir)
        sr = None
        sr_dir = sr_dir or (info.get("super_resolution") if use_sr else None)
        if sr_dir is not None and use_sr:
            from cxrgen.models.sr import load_sr

            sr = load_sr(sr_dir)
        scheduler_config = DDPMScheduler.load_config(ldm_dir / "scheduler")
        info.update({"ldm_dir": ldm_dir.resolve(), "autoencoder": Path(ae_dir).resolve(),
                     "text_encoder": Path(clip_dir).resolve() if text_encoder else None,
                     "super_resolution": Path(sr_dir).resolve() if sr is not None else None})
        adapter = None
        if dkim_dir is not None:
            from cxrgen.models.dkim import load_dkim

            adapter = load_dkim(dkim_dir, base_ldm_dir=ldm_dir)
            info["dkim"] = Path(dkim_dir).resolve()
        return cls(unet, scheduler_config, load_autoencoder(ae_dir), text_encoder, sr, info, adapter=adapter)

    def __call__(self, prompts: Sequence[str], seeds: Sequence[int], settings: SamplerSettings, *,
                 sr_steps: int = 100, sr_eta: float = 0.0, labels=None,
                 use_sr: bool = True) -> dict[str, torch.Tensor | None]:
        """``low``: decoded images (B,1,h,w) in [-1,1]; ``high``: SR outputs or None (no SR model, or ``use_sr``
        False). Each image depends only on its (prompt, seed), not on the other items of the batch. ``labels``: the
        prompts' labels (DKIM adapter only)."""
        latents = self.sampler.sample(prompts, seeds, settings, labels=labels)
        low = decode_latents(self.autoencoder, latents.cpu())
        high = None
        if self.sr is not None and use_sr:
            from cxrgen.models.sr import super_resolve

            if low.shape[-1] != self.sr.low_res:
                raise ValueError(f"the autoencoder decodes {low.shape[-1]} px but the SR model expects "
                                 f"{self.sr.low_res} px input")
            generators = [torch.Generator().manual_seed(sr_seed(s)) for s in seeds]
            high = super_resolve(self.sr, low, steps=sr_steps, eta=sr_eta, generator=generators)
        return {"low": low, "high": high}


def to_uint16(images: torch.Tensor) -> np.ndarray:
    """(B,1,H,W) in [-1,1] → (B,H,W) uint16 (the store's pixel convention: [0,1] scaled to 0…65535)."""
    pixels = ((images.clamp(-1, 1) + 1.0) / 2.0).squeeze(1).cpu().double().numpy()
    return np.round(pixels * 65535.0).astype(np.uint16)
