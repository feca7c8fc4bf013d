"""SR3-style pixel-space super-resolution (Cheff §5, §7.3.3): a diffusers ``UNet2DModel`` denoises the high-resolution
image conditioned on the bicubic-upsampled low-resolution image concatenated on the channel axis (2 channels in,
1 out), with a cosine variance schedule of 2000 steps and DDIM sampling.

On disk (``save_sr``/``load_sr``)::

    <dir>/unet/             UNet2DModel.save_pretrained (config.json + safetensors)
    <dir>/scheduler/        DDPMScheduler.save_pretrained (the training schedule)
    <dir>/sr_config.json    {"low_res", "high_res", "mode"}

Plain diffusers use: ``UNet2DModel.from_pretrained(dir + "/unet")``, ``DDIMScheduler.from_pretrained(dir +
"/scheduler")``; at each step feed ``torch.cat([x_t, bicubic_up(x_lr)], dim=1)`` with images in [-1, 1].
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

SR_CONFIG = "sr_config.json"
MODES = ("bicubic", "decoded")


@dataclass
class SRModel:
    """A super-resolution model: the denoiser, its training noise schedule and the resolutions it maps between."""

    unet: torch.nn.Module
    scheduler: object  # diffusers DDPMScheduler
    low_res: int
    high_res: int
    mode: str = "bicubic"

    def to(self, device: torch.device | str) -> SRModel:
        self.unet.to(device)
        return self


def build_noise_scheduler(schedule_cfg: dict):
    """DDPM training schedule; ``squaredcos_cap_v2`` is the cosine schedule (Cheff §7.3.3: cosine, T=2000)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=int(schedule_cfg["num_train_timesteps"]),
        beta_schedule=schedule_cfg["beta_schedule"],
        prediction_type=schedule_cfg["prediction_type"],
        clip_sample=True,  # x0 predictions live in the image range [-1, 1]
        timestep_spacing=schedule_cfg["timestep_spacing"],
    )


def build_sr_unet(model_cfg: dict, high_res: int):
    """``UNet2DModel`` with 2 input channels (noisy HR ⊕ upsampled LR) and 1 output channel (predicted noise)."""
    from diffusers import UNet2DModel

    channels = [int(c) for c in model_cfg["block_out_channels"]]
    attention = list(model_cfg["attention_levels"]) or [False] * len(channels)
    if len(attention) != len(channels):
        raise ValueError(f"sr.model.attention_levels has {len(attention)} entries, block_out_channels {len(channels)}")
    if high_res % 2 ** (len(channels) - 1):
        raise ValueError(f"high_res {high_res} is not divisible by 2^{len(channels) - 1} ({len(channels)} levels)")
    groups = int(model_cfg["norm_num_groups"])
    if any(c % groups for c in channels):
        raise ValueError(f"every block_out_channels entry must be divisible by norm_num_groups={groups}")
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DModel(
        sample_size=high_res,
        in_channels=2,
        out_channels=1,
        block_out_channels=tuple(channels),
        layers_per_block=int(model_cfg["layers_per_block"]),
        down_block_types=down,
        up_block_types=up,
        add_attention=bool(model_cfg["mid_attention"]),
        attention_head_dim=int(model_cfg["attention_head_dim"]),
        norm_num_groups=groups,
        dropout=float(model_cfg["dropout"]),
    )


def build_sr(cfg: dict, *, low_res: int, high_res: int, mode: str = "bicubic") -> SRModel:
    """A fresh model from the validated ``sr`` config section."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if high_res <= low_res:
        raise ValueError(f"high_res ({high_res}) must exceed low_res ({low_res})")
    return SRModel(build_sr_unet(cfg["model"], high_res), build_noise_scheduler(cfg["schedule"]), low_res, high_res,
                   mode)


def save_sr(model: SRModel, out_dir: Path | str) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.unet.save_pretrained(out_dir / "unet")
    model.scheduler.save_pretrained(out_dir / "scheduler")
    (out_dir / SR_CONFIG).write_text(json.dumps(
        {"low_res": model.low_res, "high_res": model.high_res, "mode": model.mode}, indent=1))


def load_sr(sr_dir: Path | str, device: torch.device | str = "cpu") -> SRModel:
    """Load a model written by :func:`save_sr`; fails if any weight is missing, unexpected or mis-shaped."""
    from diffusers import DDPMScheduler, UNet2DModel
    from safetensors.torch import load_file

    sr_dir = Path(sr_dir)
    if not (sr_dir / SR_CONFIG).is_file():
        raise FileNotFoundError(f"{sr_dir} is not a super-resolution model directory (no {SR_CONFIG})")
    meta = json.loads((sr_dir / SR_CONFIG).read_text())
    unet = UNet2DModel.from_config(UNet2DModel.load_config(sr_dir / "unet"))
    weights = sorted((sr_dir / "unet").glob("*.safetensors"))
    if len(weights) != 1:
        raise FileNotFoundError(f"expected one safetensors file in {sr_dir / 'unet'}, found {len(weights)}")
    unet.load_state_dict(load_file(weights[0]), strict=True)
    unet.eval()
    scheduler = DDPMScheduler.from_pretrained(sr_dir / "scheduler")
    return SRModel(unet, scheduler, int(meta["low_res"]), int(meta["high_res"]), meta.get("mode", "bicubic")).to(
        device)


def resize_bicubic(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bicubic resize of (B, 1, h, w) images in [-1, 1] (Cheff §7.3.3: bicubic x_LR; SR3 conditions on
    the bicubic upsample), clamped back to the image range."""
    out = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(-1.0, 1.0)


def diffusion_loss(model: SRModel, high: torch.Tensor, condition: torch.Tensor, generator: torch.Generator,
                   loss: str = "l1") -> torch.Tensor:
    """Diffusion loss (target per the scheduler's prediction_type) on HR images (or patches) given the bicubic-upsampled LR ``condition`` of the same size
    (timesteps/noise from ``generator``, a CPU generator, so the loss is a pure function of the loop's RNG state)."""
    batch = high.shape[0]
    steps = model.scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (batch,), generator=generator).to(high.device)
    noise = torch.randn(high.shape, generator=generator).to(high.device)
    noisy = model.scheduler.add_noise(high, noise, timesteps)
    predicted = model.unet(torch.cat([noisy, condition], dim=1), timesteps).sample
    kind = model.scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "sample":
        target = high
    elif kind == "v_prediction":
        target = model.scheduler.get_velocity(high, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {kind!r}")
    if loss == "l1":
        return F.l1_loss(predicted, target)
    if loss == "l2":
        return F.mse_loss(predicted, target)
    raise ValueError(f"loss must be 'l1' or 'l2', got {loss!r}")


def random_crops(images: list[torch.Tensor], size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The same random ``size``² window of each sample in every (B, C, H, W) tensor of ``images``."""
    height, width = images[0].shape[-2:]
    if size > min(height, width):
        raise ValueError(f"crop {size} is larger than the images ({height}x{width})")
    tops = torch.randint(0, height - size + 1, (images[0].shape[0],), generator=generator).tolist()
    lefts = torch.randint(0, width - size + 1, (images[0].shape[0],), generator=generator).tolist()
    return [torch.stack([img[i, :, t : t + size, x : x + size] for i, (t, x) in enumerate(zip(tops, lefts,
                                                                                              strict=True))])
            for img in images]


def _per_sample_noise(shape: tuple[int, ...], generators: Sequence[torch.Generator] | None,
                      generator: torch.Generator | None) -> torch.Tensor:
    if generators is not None:
        return torch.stack([torch.randn(shape[1:], generator=g, device=g.device).cpu() for g in generators])
    return torch.randn(shape, generator=generator)


@torch.no_grad()
def super_resolve(sr: SRModel | Path | str, low_res: torch.Tensor, *, steps: int = 100, eta: float = 0.0,
                  generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """DDIM super-resolution of (B, 1, h, w) images in [-1, 1] to (B, 1, H, W) in [-1, 1].

    Pass a list of B generators (one per image) to make each output a function of its own generator only, independent
    of the batch it is computed in; a single generator draws the batch's noise in one go. Cheff samples SR with DDIM,
    eta 0 (seed code), 100 steps.
    """
    model = sr if isinstance(sr, SRModel) else load_sr(sr)
    if low_res.ndim != 4 or low_res.shape[1] != 1 or tuple(low_res.shape[-2:]) != (model.low_res, model.low_res):
        raise ValueError(f"expected low-res images of shape (B, 1, {model.low_res}, {model.low_res}), "
                         f"got {tuple(low_res.shape)}")
    batch = low_res.shape[0]
    generators = None
    if isinstance(generator, Sequence):
        generators = list(generator)
        if len(generators) != batch:
            raise ValueError(f"got {len(generators)} generators for a batch of {batch}")
        generator = None
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(steps)
    device = next(model.unet.parameters()).device
    condition = resize_bicubic(low_res.to(device=device, dtype=torch.float32), model.high_res)
    shape = (batch, 1, model.high_res, model.high_res)
    sample = (_per_sample_noise(shape, generators, generator) * scheduler.init_noise_sigma).to(device)
    was_training = model.unet.training
    model.unet.eval()
    try:
        for t in scheduler.timesteps:
            noise_pred = model.unet(torch.cat([sample, condition], dim=1), t).sample
            variance_noise = _per_sample_noise(shape, generators, generator).to(device) if eta > 0 else None
            sample = scheduler.step(noise_pred, t, sample, eta=eta, variance_noise=variance_noise).prev_sample
    finally:
        model.unet.train(was_training)
    return sample.clamp(-1.0, 1.0)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
