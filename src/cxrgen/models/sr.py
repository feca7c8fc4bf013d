"""SR3-style pixel-space super-resolution (Cheff §5, §7.3.3): a diffusers ``UNet2DModel`` denoises the high-resolution
image conditioned on the bicubic-upsampled low-resolution image concatenated on the channel axis (2 channels in,
1 out), with a cosine variance schedule of 2000 steps and DDIM sampling.

:class:`SRModel` is a diffusers ``DiffusionPipeline``; on disk (``save_sr`` = ``save_pretrained``; ``load_sr`` reads it
back strictly, where ``SRModel.from_pretrained`` would only warn about missing weights)::

    <dir>/model_index.json  the pipeline's components and config {"low_res", "high_res", "mode"}
    <dir>/unet/             UNet2DModel (config.json + safetensors)
    <dir>/scheduler/        DDPMScheduler (the training schedule)

Plain diffusers use: ``UNet2DModel.from_pretrained(dir + "/unet")``, ``DDIMScheduler.from_pretrained(dir +
"/scheduler")``; at each step feed ``torch.cat([x_t, bicubic_up(x_lr)], dim=1)`` with images in [-1, 1].
Directories in the older format (``sr_config.json`` instead of ``model_index.json``) are refused with a message to
re-run rule ``train_sr`` / ``finetune_sr``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline

from cxrgen.models.saving import load_strict, require_model_dir

MODES = ("bicubic", "decoded")
LEGACY_SR_CONFIG = "sr_config.json"  # the format before SRModel was a diffusers pipeline


class SRModel(DiffusionPipeline):
    """A super-resolution model: the denoiser (``unet``), its training noise schedule (``scheduler``) and the
    resolutions it maps between; ``mode`` says how its low-resolution inputs were made (``bicubic``, or ``decoded`` =
    D(E(x)) after fine-tuning)."""

    # the sizes need defaults: DiffusionPipeline takes __init__ parameters without a default for components
    def __init__(self, unet, scheduler, low_res: int = 0, high_res: int = 0, mode: str = "bicubic"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(low_res=int(low_res), high_res=int(high_res), mode=mode)

    @property
    def low_res(self) -> int:
        return int(self.config.low_res)

    @property
    def high_res(self) -> int:
        return int(self.config.high_res)

    @property
    def mode(self) -> str:
        return self.config.mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {value!r}")
        self.register_to_config(mode=value)


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
    model.save_pretrained(out_dir, safe_serialization=True)


def load_sr(sr_dir: Path | str, device: torch.device | str = "cpu") -> SRModel:
    """Load a model written by :func:`save_sr`; fails if any weight is missing, unexpected or mis-shaped."""
    sr_dir = Path(sr_dir)
    if (sr_dir / LEGACY_SR_CONFIG).is_file() and not (sr_dir / "model_index.json").is_file():
        raise ValueError(f"{sr_dir} is a super-resolution model in the old format ({LEGACY_SR_CONFIG}, before SR models "
                         "were diffusers pipelines); re-run rule train_sr / finetune_sr")
    how = "run rule train_sr / finetune_sr"
    config = require_model_dir(sr_dir, SRModel, how, config_name="model_index.json")
    from diffusers import DDPMScheduler, UNet2DModel

    components = {"unet": UNet2DModel, "scheduler": DDPMScheduler}
    for name, cls in components.items():
        if config.get(name) != ["diffusers", cls.__name__]:
            raise ValueError(f"{sr_dir}/model_index.json: expected {name} {cls.__name__}, got {config.get(name)}")
    # the pipeline's own from_pretrained only warns about missing or unexpected weights
    unet = load_strict(UNet2DModel, sr_dir / "unet", how)
    scheduler = DDPMScheduler.from_pretrained(sr_dir / "scheduler")
    return SRModel(unet, scheduler, config["low_res"], config["high_res"], config["mode"]).to(device)


def resize_bicubic(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bicubic resize of (B, 1, h, w) images in [-1, 1] (Cheff §7.3.3: bicubic x_LR; SR3 conditions on
    the bicubic upsample), clamped back to the image range."""
    out = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(-1.0, 1.0)


def _rows_of_rank(batch: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s rows of something drawn for a global batch of ``batch * world_size`` rows."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    return slice(rank * batch, (rank + 1) * batch)


def diffusion_loss(model: SRModel, high: torch.Tensor, condition: torch.Tensor, generator: torch.Generator,
                   loss: str = "l1", *, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Diffusion loss (target per the scheduler's prediction_type) on HR images (or patches) given the
    bicubic-upsampled LR ``condition`` of the same size (timesteps/noise from ``generator``, a CPU generator, so the
    loss is a pure function of the loop's RNG state).

    Data parallel: ``high`` is rank ``rank``'s slice of a global batch of ``world_size`` equal slices; timesteps and
    noise are drawn for the global batch and this rank keeps its rows, so the ranks use one process's draws."""
    batch = high.shape[0]
    rows = _rows_of_rank(batch, rank, world_size)
    steps = model.scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (batch * world_size,), generator=generator)[rows].to(high.device)
    noise = torch.randn((batch * world_size, *high.shape[1:]), generator=generator)[rows].to(high.device)
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


def random_crops(images: list[torch.Tensor], size: int, generator: torch.Generator, *, rank: int = 0,
                 world_size: int = 1) -> list[torch.Tensor]:
    """The same random ``size``² window of each sample in every (B, C, H, W) tensor of ``images``. Data parallel:
    the windows are drawn for the global batch and this rank keeps its rows (see :func:`diffusion_loss`)."""
    height, width = images[0].shape[-2:]
    if size > min(height, width):
        raise ValueError(f"crop {size} is larger than the images ({height}x{width})")
    batch = images[0].shape[0]
    rows = _rows_of_rank(batch, rank, world_size)
    tops = torch.randint(0, height - size + 1, (batch * world_size,), generator=generator)[rows].tolist()
    lefts = torch.randint(0, width - size + 1, (batch * world_size,), generator=generator)[rows].tolist()
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
