"""KL-regularised autoencoder (diffusers ``AutoencoderKL``) for grayscale CXRs, its training objective and metrics.

Architecture (Cheff §7.3.1): 3 blocks of 128/256/512 channels, two residual layers each, no self-attention, the
decoder mirrors the encoder, 3 latent channels; ``len(blocks) - 1`` downsamplings, so 3 blocks give factor 4.
Loss (LDM ``LPIPSWithDiscriminator`` semantics, re-implemented): per-sample *sums* of pixel L1 (+ a perceptual distance
added at every pixel) + ``kl_weight`` × KL + an optional hinge patch-GAN term with the LDM adaptive weight, switched
on after a warm-up step. The latent scale factor is computed from data (:func:`latent_scale_factor`) and stored in
the model config (``scaling_factor``), so ``AutoencoderKL.from_pretrained(dir)`` users get it too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
CONFIG_FILE = "config.json"


def build_autoencoder(cfg: dict, resolution: int) -> nn.Module:
    """An untrained ``AutoencoderKL`` (1 channel in/out) from the ``autoencoder`` config section."""
    from diffusers import AutoencoderKL

    blocks = list(cfg["block_out_channels"])
    return AutoencoderKL(
        in_channels=1, out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        block_out_channels=tuple(blocks),
        layers_per_block=int(cfg["layers_per_block"]),
        latent_channels=int(cfg["latent_channels"]),
        norm_num_groups=int(cfg["norm_num_groups"]),
        sample_size=int(resolution),
        scaling_factor=1.0,  # placeholder until computed from data
        mid_block_add_attention=bool(cfg["mid_block_attention"]),
    )


def downsampling_factor(vae: nn.Module) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def save_autoencoder(vae: nn.Module, out_dir: Path) -> None:
    vae.save_pretrained(out_dir, safe_serialization=True)


def load_autoencoder(ae_dir: Path | str) -> nn.Module:
    """Load strictly: the architecture comes from ``config.json``, every weight must match (no missing/unexpected)."""
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    ae_dir = Path(ae_dir)
    if not (ae_dir / CONFIG_FILE).is_file() or not (ae_dir / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{ae_dir} is not an autoencoder directory (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(ae_dir))
    vae.load_state_dict(load_file(ae_dir / WEIGHTS_FILE), strict=True)
    return vae.eval()


def latent_scale_factor(latent_mean: np.ndarray | torch.Tensor, latent_std: np.ndarray | torch.Tensor | None = None
                        ) -> float:
    """1 / std of latents z ~ N(mean, std²) pooled over all elements (LDM §4.3.2 rescales latents to unit variance).

    Exact, without sampling: Var(z) = Var(mean) + E[std²]. LDM estimates it from one sampled batch; Cheff T2I reused
    SD's 0.18215 instead of computing it (see notes/seed-implementations.md §1).
    """
    mean = torch.as_tensor(np.asarray(latent_mean), dtype=torch.float64)
    variance = mean.var(unbiased=False)
    if latent_std is not None:
        variance = variance + (torch.as_tensor(np.asarray(latent_std), dtype=torch.float64) ** 2).mean()
    if not torch.isfinite(variance) or variance <= 0:
        raise ValueError(f"cannot compute a scale factor from latents with variance {float(variance)}")
    return float(1.0 / variance.sqrt())


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017, as used by LDM/Cheff): strided 4×4 convs, a logit per patch."""

    def __init__(self, in_channels: int = 1, channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, n_layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for module in self.modules():  # DCGAN init, as pix2pix/taming
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def adaptive_gan_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                        disc_weight: float, gradient_mean: Callable[[torch.Tensor], torch.Tensor] | None = None
                        ) -> torch.Tensor:
    """LDM/VQGAN adaptive weight: ‖∇_last rec‖ / (‖∇_last gan‖ + 1e-4), clamped to [0, 1e4], × disc_weight.

    ``gradient_mean`` (data parallel: the mean over the ranks, :func:`cxrgen.train.collectives.mean_over_ranks`)
    turns the gradients of this rank's losses into those of the global batch's before the norms are taken."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    if gradient_mean is not None:
        rec_grad, gan_grad = gradient_mean(rec_grad), gradient_mean(gan_grad)
    weight = rec_grad.norm() / (gan_grad.norm() + 1e-4)
    return torch.clamp(weight, 0.0, 1e4).detach() * disc_weight


FeatureNet = Callable[[torch.Tensor], torch.Tensor | Sequence[torch.Tensor]]


class FeaturePerceptualLoss(nn.Module):
    """LPIPS-style distance on the features of a frozen network (no learned linear heads): each feature map is
    unit-normalised along channels, squared differences are summed over channels and averaged over positions, then
    summed over feature maps. ``feature_net(x)`` takes images in [-1, 1] and returns a tensor or a list of tensors
    shaped (B, C, ...). Returns one distance per sample."""

    def __init__(self, feature_net: FeatureNet, input_size: int | None = None):
        super().__init__()
        self.feature_net = feature_net
        self.input_size = input_size
        # a module, or the module behind a bound method (e.g. ImageEncoder.features): frozen, moved by .to()
        owner = feature_net if isinstance(feature_net, nn.Module) else getattr(feature_net, "__self__", None)
        if isinstance(owner, nn.Module):
            self.frozen = owner.eval().requires_grad_(False)

    def train(self, mode: bool = True):  # the feature network stays in eval mode
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.input_size and x.shape[-1] != self.input_size:
            size = (self.input_size, self.input_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False, antialias=True)
        fx, fy = self.feature_net(x), self.feature_net(y)
        if isinstance(fx, torch.Tensor):
            fx, fy = [fx], [fy]
        total = x.new_zeros(x.shape[0])
        for a, b in zip(fx, fy, strict=True):
            a, b = F.normalize(a, dim=1, eps=1e-10), F.normalize(b, dim=1, eps=1e-10)
            per_position = ((a - b) ** 2).sum(dim=1)  # (B,) for embeddings, (B, ...) for feature maps
            total = total + (per_position.flatten(1).mean(dim=1) if per_position.dim() > 1 else per_position)
        return total


def clip_perceptual_network(clip_dir: Path | str) -> FeaturePerceptualLoss:
    """Perceptual loss on the in-domain CLIP image tower trained by rule ``train_clip``: the distance over its
    intermediate feature maps and embedding (``ImageEncoder.features``, which takes (B, 1, H, W) in [-1, 1] at any
    size and resizes to the tower's input size itself)."""
    from cxrgen.models.clip import load_image_encoder

    encoder = load_image_encoder(clip_dir)
    return FeaturePerceptualLoss(getattr(encoder, "features", encoder))


class AutoencoderObjective:
    """Generator and discriminator losses of the KL autoencoder (LDM ``LPIPSWithDiscriminator`` semantics).

    All reconstruction terms are summed per sample and averaged over the batch, as in LDM, so ``kl_weight`` 1e-6
    has the paper's meaning. The GAN term is active from ``gan_start`` (0-based step) on."""

    def __init__(self, *, kl_weight: float, perceptual: FeaturePerceptualLoss | None = None,
                 perceptual_weight: float = 1.0, discriminator: nn.Module | None = None, gan_start: int = 0,
                 gan_weight: float = 0.5, adaptive_weight: bool = True,
                 gradient_mean: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.kl_weight, self.perceptual, self.perceptual_weight = kl_weight, perceptual, perceptual_weight
        self.discriminator, self.gan_start, self.gan_weight = discriminator, gan_start, gan_weight
        self.adaptive_weight, self.gradient_mean = adaptive_weight, gradient_mean

    def gan_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.gan_start

    def generator_loss(self, x: torch.Tensor, recon: torch.Tensor, posterior, step: int,
                       last_layer: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        batch, pixels = x.shape[0], x[0].numel()
        l1 = (x - recon).abs()
        rec = l1.flatten(1).sum(dim=1)
        metrics = {"l1": _scalar(l1.mean())}
        if self.perceptual is not None and self.perceptual_weight > 0:
            distance = self.perceptual(x, recon)
            rec = rec + self.perceptual_weight * distance * pixels  # LDM adds LPIPS at every pixel
            metrics["perceptual"] = _scalar(distance.mean())
        rec_loss = rec.sum() / batch
        kl = posterior.kl().sum() / batch
        loss = rec_loss + self.kl_weight * kl
        metrics.update(rec_loss=_scalar(rec_loss), kl=_scalar(kl))
        if self.gan_active(step):
            gan_loss = -self.discriminator(recon).mean()
            if self.adaptive_weight and last_layer is not None and torch.is_grad_enabled():
                weight = adaptive_gan_weight(rec_loss, gan_loss, last_layer, self.gan_weight, self.gradient_mean)
            else:
                weight = torch.tensor(self.gan_weight)
            loss = loss + weight * gan_loss
            metrics.update(gan_loss=_scalar(gan_loss), gan_weight=_scalar(weight))
        metrics["loss"] = _scalar(loss)
        return loss, metrics

    def discriminator_loss(self, x: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        real, fake = self.discriminator(x.detach()), self.discriminator(recon.detach())
        loss = hinge_discriminator_loss(real, fake)
        return loss, {"disc_loss": _scalar(loss), "logits_real": _scalar(real.mean()), "logits_fake": _scalar(fake.mean())}


def _scalar(value: torch.Tensor) -> float:
    return float(value.detach())


def reconstruction_metrics(x: torch.Tensor, recon: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image PSNR (dB) and SSIM (:func:`cxrgen.evaluate.metrics.ssim`, the SSIM of the evaluation harness) of
    images given in [-1, 1], evaluated in [0, 1] (data range 1; reconstructions clamped). Returns float32 tensors of
    shape (B,) on the inputs' device; PSNR is inf for identical images."""
    from cxrgen.evaluate.metrics import ssim as structural_similarity

    a = ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    b = ((recon.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    mse = ((a - b) ** 2).flatten(1).mean(dim=1)
    psnr = 10.0 * torch.log10(1.0 / mse)
    ssim = torch.as_tensor(structural_similarity(b, a), dtype=torch.float32, device=a.device)
    return {"psnr": psnr, "ssim": ssim}


def config_summary(vae: nn.Module) -> dict:
    """A JSON-able summary for metrics files and logs."""
    return {"parameters": sum(p.numel() for p in vae.parameters()), "factor": downsampling_factor(vae),
            "config": json.loads(json.dumps(dict(vae.config), default=str))}
