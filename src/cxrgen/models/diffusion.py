"""Latent diffusion: the Cheff noise schedule, UNet builders, and DDIM latent sampling with classifier-free guidance.

A trained LDM directory (written by :func:`cxrgen.stages.train_ldm.train_ldm`) holds::

    unet/                  diffusers UNet2DConditionModel (text) or UNet2DModel (unconditional); EMA weights
    unet_raw/              the raw (non-EMA) weights, optional
    scheduler/             DDPMScheduler config (T=1000, Cheff β 0.0015→0.0295 "scaled_linear", ε-prediction)
    cxrgen_pipeline.json   which autoencoder, text encoder and SR model it belongs to (:mod:`cxrgen.pipeline`,
                           which also assembles the whole cascade: :class:`cxrgen.pipeline.CxrPipeline`)

Loading with plain diffusers code (no cxrgen needed for the denoiser itself)::

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained("results/ldm/unet")          # UNet2DModel if conditioning == "none"
    sched = DDIMScheduler.from_pretrained("results/ldm/scheduler", set_alpha_to_one=False)
    vae = AutoencoderKL.from_pretrained("results/ae")                         # config.scaling_factor from data
    sched.set_timesteps(100)
    z = torch.randn(1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    for t in sched.timesteps:   # context = text tower tokens [B, L, D] (see cxrgen.models.clip)
        eps = unet(z, t, encoder_hidden_states=context, encoder_attention_mask=mask).sample
        z = sched.step(eps, t, z, eta=1.0).prev_sample
    image = vae.decode(z / vae.config.scaling_factor).sample                 # (1, 1, H, W) in [-1, 1]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNet2DModel

CONDITIONINGS = ("text", "none")

# Cheff §7.3.2 / configs cheff-diff-t2i.yml: linear_start 0.0015, linear_end 0.0295 ("linear" in √β), T=1000.
CHEFF_BETA_START, CHEFF_BETA_END, CHEFF_TIMESTEPS = 0.0015, 0.0295, 1000
LDM_DEFAULT_BETA_END = 0.0195  # CompVis LDM-f4 default (Cheff §7.3.2 "default linear variance schedule")
SD_BETA_START, SD_BETA_END = 0.00085, 0.012  # Stable Diffusion (Diff-CXR, MedCoDi-M)


# ---------------------------------------------------------------------------------------------------- schedules


def ldm_linear_betas(beta_start: float, beta_end: float, timesteps: int) -> np.ndarray:
    """The CompVis LDM "linear" schedule: β_t linear in √β (``make_beta_schedule``), in float64."""
    return np.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=np.float64) ** 2


def terminal_alpha_bar(beta_start: float, beta_end: float, timesteps: int = 1000) -> float:
    """ᾱ_T = Π(1-β_t): the signal fraction left at the last step (small = x_T close to pure noise)."""
    return float(np.prod(1.0 - ldm_linear_betas(beta_start, beta_end, timesteps)))


def make_train_scheduler(schedule: dict) -> DDPMScheduler:
    """DDPMScheduler from the config section ``ldm.schedule`` (ε-prediction unless ``prediction_type`` says
    otherwise; no clipping: latents are unbounded)."""
    return DDPMScheduler(
        num_train_timesteps=int(schedule["timesteps"]), beta_start=float(schedule["beta_start"]),
        beta_end=float(schedule["beta_end"]), beta_schedule=schedule["beta_schedule"],
        prediction_type=schedule.get("prediction_type", "epsilon"),
        clip_sample=False, steps_offset=1, timestep_spacing="leading")


def diffusion_target(scheduler: DDPMScheduler, clean: torch.Tensor, noise: torch.Tensor,
                     timesteps: torch.Tensor) -> torch.Tensor:
    """The regression target of the scheduler's prediction type: ε, v = √ᾱ·ε − √(1−ᾱ)·x₀, or x₀."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    if kind == "sample":
        return clean
    raise ValueError(f"unsupported prediction_type {kind!r}; allowed: ['epsilon', 'v_prediction', 'sample']")


def make_ddim_scheduler(train_scheduler_config: Any, steps: int | None = None) -> DDIMScheduler:
    """DDIM on the training schedule; CompVis DDIM convention (uniform "leading" steps +1, ᾱ_prev(first) = ᾱ_0).
    With as many steps as training timesteps the +1 offset would step past T-1, so it is dropped there."""
    full = steps is not None and steps >= int(train_scheduler_config["num_train_timesteps"])
    return DDIMScheduler.from_config(train_scheduler_config, set_alpha_to_one=False, steps_offset=0 if full else 1,
                                     clip_sample=False, timestep_spacing="leading")


# ---------------------------------------------------------------------------------------------------- UNets


def unet_config(arch: dict, *, latent_channels: int, sample_size: int, cross_attention_dim: int | None) -> dict:
    """diffusers UNet kwargs from ``ldm.unet``: CompVis-style sizes (base channels × multipliers, attention at
    down-sampling factors) translated to diffusers block types. ``cross_attention_dim=None`` = unconditional."""
    base, mults = int(arch["base_channels"]), [int(m) for m in arch["channel_mult"]]
    channels = tuple(base * m for m in mults)
    attn_factors = {int(f) for f in arch["attention_downsample_factors"]}
    with_attn = [2**level in attn_factors for level in range(len(mults))]
    head_dim = int(arch["attention_head_dim"])
    for ch, attn in zip(channels, with_attn, strict=True):
        if attn and ch % head_dim:
            raise ValueError(f"ldm.unet: {ch} channels are not divisible by attention_head_dim={head_dim}")
    common = {"sample_size": sample_size, "in_channels": latent_channels, "out_channels": latent_channels,
              "block_out_channels": channels, "layers_per_block": int(arch["layers_per_block"]),
              "norm_num_groups": int(arch["norm_num_groups"])}
    if cross_attention_dim is None:
        return {**common, "_class_name": "UNet2DModel",
                "down_block_types": tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in with_attn),
                "up_block_types": tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(with_attn)),
                "attention_head_dim": head_dim}
    # UNet2DConditionModel's `attention_head_dim` is (for legacy reasons) the NUMBER of heads per block
    heads = tuple(max(1, ch // head_dim) for ch in channels)
    return {**common, "_class_name": "UNet2DConditionModel",
            "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in with_attn),
            "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(with_attn)),
            "cross_attention_dim": int(cross_attention_dim), "attention_head_dim": heads}


def build_unet(arch: dict, *, latent_channels: int, sample_size: int,
               cross_attention_dim: int | None) -> UNet2DConditionModel | UNet2DModel:
    kwargs = unet_config(arch, latent_channels=latent_channels, sample_size=sample_size,
                         cross_attention_dim=cross_attention_dim)
    cls = UNet2DModel if kwargs.pop("_class_name") == "UNet2DModel" else UNet2DConditionModel
    return cls(**kwargs)


def load_unet(path: Path | str) -> UNet2DConditionModel | UNet2DModel:
    """Strict load (missing/unexpected keys raise) of a saved UNet of either class."""
    from safetensors.torch import load_file

    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    cls = UNet2DModel if config["_class_name"] == "UNet2DModel" else UNet2DConditionModel
    unet = cls.from_config(cls.load_config(path))
    weights = sorted(path.glob("*.safetensors"))
    if len(weights) != 1:
        raise FileNotFoundError(f"expected one safetensors file in {path}, found {len(weights)}")
    unet.load_state_dict(load_file(weights[0]), strict=True)
    return unet.eval()


def denoise(unet, latents: torch.Tensor, t, context: torch.Tensor | None, mask: torch.Tensor | None,
            residuals: dict | None = None) -> torch.Tensor:
    """ε prediction of either UNet class; ``residuals``: an adapter's down/mid residuals (cxrgen.models.dkim)."""
    if isinstance(unet, UNet2DModel):
        return unet(latents, t).sample
    return unet(latents, t, encoder_hidden_states=context, encoder_attention_mask=mask, **(residuals or {})).sample


def cfg_drop_mask(batch_size: int, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Bernoulli(p) per sample: which conditions are replaced by the empty text (classifier-free guidance)."""
    return torch.rand(batch_size, generator=generator) < probability


def drop_condition(tokens: torch.Tensor, mask: torch.Tensor, null_tokens: torch.Tensor, null_mask: torch.Tensor,
                   drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the rows flagged in ``drop`` by the empty-text embedding ``null_tokens`` [1, L, D] / ``null_mask``."""
    keep = ~drop.to(tokens.device)
    tokens = torch.where(keep[:, None, None], tokens, null_tokens.expand_as(tokens))
    mask = torch.where(keep[:, None], mask, null_mask.expand_as(mask))
    return tokens, mask


# ---------------------------------------------------------------------------------------------------- sampling


@dataclass
class SamplerSettings:
    steps: int = 150  # Cheff §7.3 (DDIM 150 steps); the released code uses 100
    eta: float = 1.0  # Cheff code: LDM sampled with η=1
    guidance_scale: float = 1.0  # 1 = conditional only (Cheff has no CFG)


class LatentSampler:
    """DDIM sampling of latents with classifier-free guidance; (prompt, seed) → the same latent whatever the batch.

    ``encode_text(list[str]) -> (tokens [B,L,D], mask [B,L])`` is the frozen text tower (``None`` if unconditional);
    the guidance branch's condition is ``encode_text([null_prompt])``. Prompts need not be strings: any items
    ``encode_text`` maps to cross-attention tokens (e.g. pooled embedding vectors, :mod:`cxrgen.medcodi.ldm`).
    Every sample owns a ``torch.Generator`` seeded with its seed: its initial noise and its DDIM η-noise never depend
    on its batch neighbours.

    ``adapter``: an optional DKIM adapter (e.g. :class:`cxrgen.models.dkim.DkimAdapter`: ``condition``,
    ``null_condition``, ``residuals``); ``sample`` then needs the
    prompts' ``labels`` and adds the adapter's residuals at every step (the guidance branch gets unknown knowledge).
    """

    def __init__(self, unet, train_scheduler_config: Any,
                 encode_text: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]] | None, adapter=None,
                 null_prompt: Any = ""):
        self.unet = unet.eval()
        self.null_prompt = null_prompt
        self.scheduler_config = train_scheduler_config
        self.encode_text = encode_text
        self.conditional = isinstance(unet, UNet2DConditionModel)
        self.adapter = adapter.eval() if adapter is not None else None
        if self.conditional and encode_text is None:
            raise ValueError("a text-conditioned UNet needs a text encoder")
        if adapter is not None and not self.conditional:
            raise ValueError("a DKIM adapter needs a text-conditioned UNet")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, *size)

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], seeds: Sequence[int], settings: SamplerSettings,
               progress: Callable[[int], None] | None = None, labels=None) -> torch.Tensor:
        """``labels``: the prompts' CheXpert labels ([B, 14] 1/0/NaN or a frame with lbl_* columns), used only by the
        DKIM adapter."""
        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt")
        knowledge = None
        if self.adapter is not None:
            if labels is None:
                raise ValueError("the DKIM adapter needs the prompts' labels (sample(..., labels=...))")
            knowledge = self.adapter.condition(labels)
            if len(knowledge) != len(prompts):
                raise ValueError(f"{len(knowledge)} label rows for {len(prompts)} prompts")
        device = next(self.unet.parameters()).device
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        latents = torch.stack([torch.randn(self.latent_shape, generator=g) for g in generators]).to(device)
        scheduler = make_ddim_scheduler(self.scheduler_config, settings.steps)
        scheduler.set_timesteps(settings.steps)
        context = mask = None
        guided = self.conditional and settings.guidance_scale != 1.0
        if self.conditional:
            tokens, mask = self.encode_text(list(prompts))
            context, mask = tokens.to(device), mask.to(device)
            if guided:
                null_tokens, null_mask = self.encode_text([self.null_prompt])
                context = torch.cat([null_tokens.to(device).expand_as(context), context])
                mask = torch.cat([null_mask.to(device).expand_as(mask), mask])
                if knowledge is not None:
                    knowledge = type(knowledge).cat([self.adapter.null_condition(len(prompts)), knowledge])
        for i, t in enumerate(scheduler.timesteps):
            model_in = torch.cat([latents, latents]) if guided else latents
            residuals = self.adapter.residuals(model_in, t, knowledge) if knowledge is not None else None
            eps = denoise(self.unet, model_in, t, context, mask, residuals)
            if guided:
                eps_null, eps_cond = eps.chunk(2)
                eps = eps_null + settings.guidance_scale * (eps_cond - eps_null)
            noise = None
            if settings.eta > 0:
                noise = torch.stack([torch.randn(self.latent_shape, generator=g) for g in generators]).to(device)
            latents = scheduler.step(eps, t, latents, eta=settings.eta, variance_noise=noise).prev_sample
            if progress:
                progress(i)
        return latents


def decode_latents(autoencoder, latents: torch.Tensor) -> torch.Tensor:
    """AE decoder on LDM latents (divided by the data-derived scale factor); images in [-1, 1]."""
    with torch.no_grad():
        images = autoencoder.decode(latents / autoencoder.config.scaling_factor).sample
    return images.clamp(-1.0, 1.0)
