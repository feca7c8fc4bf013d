"""Inpainting and outpainting with a trained LDM (Cheff §5 "In- and Outpainting", Figs. 5, 7, 14): RePaint-style
resampling in latent space.

The image-space mask (True = to be generated) becomes a latent mask by max-pooling over the autoencoder's
downsampling cells (a latent cell is unknown as soon as one of its pixels is masked), dilated by ``latent_dilation``
cells because the decoder mixes neighbouring cells. Sampling walks the DDIM grid of the LDM's own training schedule;
after every denoising step the known cells are replaced by the original's encoding noised to the same level, the
unknown cells keep the model's sample (RePaint, Lugmayr et al. CVPR 2022, Alg. 1). RePaint's resampling jumps
re-noise the merged latent ``jump_length`` grid steps back and denoise again, ``jump_n_sample - 1`` extra times at
every ``jump_length``-th step, so the generated region can harmonise with the known one. Outpainting is the same with
a border masked (completing a collimated film). The prompt steers the generated region with classifier-free
guidance.

Every sample owns a ``torch.Generator`` seeded with its seed, so an image's result depends only on (image, mask,
prompt, seed), never on its batch neighbours. This module does not import :mod:`cxrgen.pipeline`; it takes the
pipeline's autoencoder and :class:`cxrgen.models.diffusion.LatentSampler`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cxrgen.models.diffusion import LatentSampler, decode_latents, denoise, make_ddim_scheduler

MASK_KINDS = ("rect", "border")


# ---------------------------------------------------------------------------------------------------- masks


@dataclass(frozen=True)
class MaskSpec:
    """A mask as data, in fractions of the image: ``rect`` = (x0, y0, x1, y1) is masked; ``border`` = (top, right,
    bottom, left) widths are masked (outpainting)."""

    kind: str
    values: tuple[float, float, float, float]

    def pixels(self, height: int, width: int) -> torch.Tensor:
        """Bool (height, width), True = to be generated. Fractions round outwards (a partly covered pixel is
        masked)."""
        mask = torch.zeros(height, width, dtype=torch.bool)
        if self.kind == "rect":
            x0, y0, x1, y1 = self.values
            mask[_floor(y0 * height):_ceil(y1 * height), _floor(x0 * width):_ceil(x1 * width)] = True
        else:
            top, right, bottom, left = self.values
            mask[:_ceil(top * height)] = True
            mask[height - _ceil(bottom * height):] = True
            mask[:, :_ceil(left * width)] = True
            mask[:, width - _ceil(right * width):] = True
        return mask


def _floor(value: float) -> int:
    return math.floor(value + 1e-9)


def _ceil(value: float) -> int:
    return math.ceil(value - 1e-9)


def parse_mask_spec(spec: Mapping, key: str = "mask") -> MaskSpec:
    """``{"rect": [x0, y0, x1, y1]}`` or ``{"border": w | [top, right, bottom, left]}`` (fractions of the image).
    Errors name ``key`` and the allowed forms."""
    if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in MASK_KINDS:
        raise ValueError(f"{key}: expected exactly one of {list(MASK_KINDS)} ({{rect: [x0, y0, x1, y1]}} or "
                         f"{{border: width | [top, right, bottom, left]}}, fractions of the image), got {spec!r}")
    kind, raw = next(iter(spec.items()))
    values = [raw] * 4 if kind == "border" and isinstance(raw, int | float) else raw
    if not isinstance(values, Sequence) or len(values) != 4 or \
            not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{key}.{kind}: expected 4 numbers, got {raw!r}")
    values = tuple(float(v) for v in values)
    if not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"{key}.{kind}: fractions must lie in [0, 1], got {list(values)}")
    if kind == "rect" and not (values[0] < values[2] and values[1] < values[3]):
        raise ValueError(f"{key}.rect: need x0 < x1 and y0 < y1, got {list(values)}")
    if kind == "border" and (values[0] + values[2] >= 1.0 or values[1] + values[3] >= 1.0 or not any(values)):
        raise ValueError(f"{key}.border: widths must be positive somewhere and leave part of the image known "
                         f"(top + bottom < 1, left + right < 1), got {list(values)}")
    return MaskSpec(kind, values)


def latent_mask(mask: torch.Tensor, factor: int, dilation: int = 1) -> torch.Tensor:
    """Image mask ([B, 1, H, W] or [H, W] bool, True = unknown) → latent mask [B, 1, H/f, W/f] (or [h, w]): a cell is
    unknown if any of its f×f pixels is, then the unknown region grows by ``dilation`` cells (8-neighbourhood)."""
    squeeze = mask.ndim == 2
    m = mask[None, None] if squeeze else mask
    if m.shape[-1] % factor or m.shape[-2] % factor:
        raise ValueError(f"mask size {tuple(m.shape[-2:])} is not a multiple of the autoencoder factor {factor}")
    cells = F.max_pool2d(m.float(), kernel_size=factor, stride=factor)
    if dilation > 0:
        cells = F.max_pool2d(cells, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
    out = cells > 0.5
    return out[0, 0] if squeeze else out


# ---------------------------------------------------------------------------------------------------- schedule


def repaint_schedule(steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """The sequence of noise levels visited (``steps`` = x_T … 0 = clean); consecutive entries differ by one: a
    decrease is a denoising step (one model call), an increase a re-noising jump step. At levels 1, 1 + j,
    1 + 2j, … below ``steps - j + 1`` (j = ``jump_length``) the walk goes back up j levels, ``jump_n_sample - 1``
    times (RePaint's time schedule, on the DDIM grid)."""
    if steps < 1 or jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"steps, jump_length and jump_n_sample must be >= 1, got {steps}, {jump_length}, "
                         f"{jump_n_sample}")
    jumps_left = {level: jump_n_sample - 1 for level in range(1, steps - jump_length + 1, jump_length)}
    level, walk = steps, [steps]
    while level > 0:
        level -= 1
        walk.append(level)
        if jumps_left.get(level, 0) > 0:
            jumps_left[level] -= 1
            for _ in range(jump_length):
                level += 1
                walk.append(level)
    return walk


def model_calls(steps: int, jump_length: int, jump_n_sample: int) -> int:
    """Denoiser evaluations per sample (×2 in the batch with classifier-free guidance)."""
    walk = repaint_schedule(steps, jump_length, jump_n_sample)
    return sum(1 for a, b in zip(walk, walk[1:], strict=False) if b < a)


# ---------------------------------------------------------------------------------------------------- sampling


@dataclass
class InpaintSettings:
    steps: int = 100  # Cheff code: DDIM 100 steps (§7.3: 150)
    eta: float = 1.0  # Cheff code: LDM sampled with η=1; RePaint's re-noising assumes a stochastic sampler
    guidance_scale: float = 4.0  # as generate.guidance_scale (Cheff itself has no CFG)
    jump_length: int = 10  # RePaint §4 / Fig. 3: j = 10 …
    jump_n_sample: int = 10  # … r = 10 resamplings (with T = 250 DDPM steps)
    latent_dilation: int = 1  # decoder receptive field: a known cell next to a masked one is regenerated too
    paste_known: bool = False  # paste the original pixels outside the mask after decoding


class _Guided:
    """ε of the sampler's UNet for one batch of prompts, with classifier-free guidance."""

    def __init__(self, sampler: LatentSampler, prompts: Sequence, guidance_scale: float, device):
        if sampler.adapter is not None:
            raise ValueError("inpainting does not support a DKIM adapter; load the pipeline without dkim_dir")
        self.unet, self.scale = sampler.unet, float(guidance_scale)
        self.context = self.mask = None
        self.guided = sampler.conditional and self.scale != 1.0
        if sampler.conditional:
            tokens, mask = sampler.encode_text(list(prompts))
            self.context, self.mask = tokens.to(device), mask.to(device)
            if self.guided:
                null_tokens, null_mask = sampler.encode_text([sampler.null_prompt])
                self.context = torch.cat([null_tokens.to(device).expand_as(self.context), self.context])
                self.mask = torch.cat([null_mask.to(device).expand_as(self.mask), self.mask])
        self.calls = 0

    def __call__(self, latents: torch.Tensor, t) -> torch.Tensor:
        self.calls += 1
        model_in = torch.cat([latents, latents]) if self.guided else latents
        eps = denoise(self.unet, model_in, t, self.context, self.mask)
        if self.guided:
            eps_null, eps_cond = eps.chunk(2)
            eps = eps_null + self.scale * (eps_cond - eps_null)
        return eps


def _noise(generators: list[torch.Generator], shape: tuple[int, ...], device) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


@torch.no_grad()
def inpaint_latents(sampler: LatentSampler, known: torch.Tensor, unknown: torch.Tensor, prompts: Sequence,
                    seeds: Sequence[int], settings: InpaintSettings) -> tuple[torch.Tensor, int]:
    """RePaint in latent space. ``known``: the originals' scaled latents [B, C, h, w]; ``unknown``: [B, 1, h, w]
    bool. Returns (latents whose known cells equal ``known`` exactly, denoiser evaluations per sample)."""
    if not len(prompts) == len(seeds) == len(known) == len(unknown):
        raise ValueError("one prompt, seed, latent and mask per image")
    device = next(sampler.unet.parameters()).device
    known, keep = known.to(device), (~unknown).to(device).float()
    shape = tuple(known.shape[1:])
    if shape != sampler.latent_shape:
        raise ValueError(f"latents of shape {shape} do not match the LDM's {sampler.latent_shape}")
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    scheduler = make_ddim_scheduler(sampler.scheduler_config, settings.steps)
    scheduler.set_timesteps(settings.steps)
    timesteps = list(scheduler.timesteps)
    n = len(timesteps)
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=known.dtype)

    def alpha_bar(level: int) -> torch.Tensor:  # level n = x_T (timesteps[0]) … level 0 = the final (clean) output
        return scheduler.final_alpha_cumprod.to(device=device, dtype=known.dtype) if level == 0 \
            else alphas[int(timesteps[n - level])]

    def merge(latents: torch.Tensor, level: int) -> torch.Tensor:
        if level == 0:
            known_now = known
        else:
            a = alpha_bar(level)
            known_now = a.sqrt() * known + (1 - a).sqrt() * _noise(generators, shape, device)
        return keep * known_now + (1 - keep) * latents

    eps_of = _Guided(sampler, prompts, settings.guidance_scale, device)
    walk = repaint_schedule(n, settings.jump_length, settings.jump_n_sample)
    latents = _noise(generators, shape, device)
    for level, target in zip(walk, walk[1:], strict=False):
        if target < level:
            t = timesteps[n - level]
            eps = eps_of(latents, t)
            noise = _noise(generators, shape, device) if settings.eta > 0 else None
            latents = scheduler.step(eps, t, latents, eta=settings.eta, variance_noise=noise).prev_sample
            latents = merge(latents, target)
        else:  # q(x_target | x_level): re-noise one grid step
            ratio = alpha_bar(target) / alpha_bar(level)
            latents = ratio.sqrt() * latents + (1 - ratio).sqrt() * _noise(generators, shape, device)
    return latents, eps_of.calls


@torch.no_grad()
def encode_images(autoencoder, images: torch.Tensor) -> torch.Tensor:
    """Scaled latents (posterior mean × scaling factor) of images [B, 1, H, W] in [-1, 1]."""
    return autoencoder.encode(images).latent_dist.mean * autoencoder.config.scaling_factor


def autoencoder_factor(autoencoder) -> int:
    return 2 ** (len(autoencoder.config.block_out_channels) - 1)


@torch.no_grad()
def inpaint(autoencoder, sampler: LatentSampler, images: torch.Tensor, masks: torch.Tensor, prompts: Sequence,
            seeds: Sequence[int], settings: InpaintSettings) -> dict:
    """Inpaint ``images`` [B, 1, H, W] in [-1, 1] where ``masks`` [B, 1, H, W] (bool) is True. Returns ``images``
    (results in [-1, 1]), ``reconstructions`` (the autoencoder round trip of the originals: what the known region
    can at best look like without pasting), ``latent_masks`` [B, 1, h, w], ``regenerated`` (the latent mask at pixel
    resolution: every pixel of an unknown cell, a superset of ``masks``) and ``model_calls`` (per sample)."""
    if images.shape != masks.shape or images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images and masks must both be [B, 1, H, W], got {tuple(images.shape)} and "
                         f"{tuple(masks.shape)}")
    factor = autoencoder_factor(autoencoder)
    unknown = latent_mask(masks.bool(), factor, settings.latent_dilation)
    known = encode_images(autoencoder, images)
    latents, calls = inpaint_latents(sampler, known, unknown, prompts, seeds, settings)
    out = decode_latents(autoencoder, latents.cpu())
    if settings.paste_known:
        out = torch.where(masks.bool(), out, images)
    regenerated = unknown.cpu().repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    return {"images": out, "reconstructions": decode_latents(autoencoder, known.cpu()), "latent_masks": unknown,
            "regenerated": regenerated, "model_calls": calls}


def outside_mask_fidelity(before: torch.Tensor, after: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """PSNR (dB, images in [0, 1]) and max |difference| over the pixels outside ``mask`` (one image [1, H, W] or
    [H, W], values in [-1, 1])."""
    outside = ~mask.bool().reshape(before.shape)
    diff = ((after - before) / 2.0)[outside].double()
    if diff.numel() == 0:
        return {"psnr_outside": float("nan"), "max_abs_outside": float("nan")}
    mse = float((diff**2).mean())
    psnr = float("inf") if mse == 0 else float(-10.0 * torch.log10(torch.tensor(mse)))
    return {"psnr_outside": psnr, "max_abs_outside": float(diff.abs().max())}
