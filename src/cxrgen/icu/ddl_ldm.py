"""DDL-CXR's latent diffusion model (Yao, Liu et al., arXiv 2410.17918, "LDM stage"): the later CXR latent z₁
generated from the prior latent z₀ and the EHR recorded between the two images.

Hybrid conditioning (paper: ``conditioning_key: hybrid``): the UNet input is the noisy later latent concatenated with
the prior latent on the channel axis (in_channels = 2 × latent channels), and the UNet cross-attends to the EHR tokens
of :class:`cxrgen.icu.ehr_encoder.EhrEncoder` (key-padding mask = the EHR window). The encoder trains with the UNet.

Loss per batch (poster "LDM training loss"; weights and details from the public code, ``ddpm.py`` DDL_CXR_LDM.p_losses
and ``LDM_train.yaml``):

    L = ‖ε − ε_θ(z₁ⁿ, z₀, E, n)‖² + λ₁ · BCE(later labels | head(E_cls)) + λ₂ · r · w_n · max(‖ε − ε_θ(·, E)‖²
        − ‖ε − ε_θ(·, Ẽ)‖² + α, 0),     Ẽ = (1 − β) E + β δ, δ ~ N(0, I)

λ₁ = 1.4 (``label_loss_wight``), λ₂ = 1 (``triplet_weight``), α = 0.2 (``margin``), β = 0.5 (the code mixes
``E·0.5 + δ·0.5``), w_n = 1/(1 + SNR_n) = 1 − ᾱ_n (``triplet_loss_weight``), r = training progress ramp (the code's
``current_epoch / max_epoch``; here step / max_steps). The poster writes the hinge on the per-sample squared errors
(``contrastive_hinge: sample``, the default); the code applies it per latent element before averaging (``element``).
With ``schedule.prediction_type: v_prediction`` (demo) both errors are errors of the v target instead of ε.
The label BCE uses the explicit binary label policy: NaN (uncertain / missing) labels are masked, never coded as
extra classes as in the public code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from cxrgen.icu.ehr_encoder import EhrEncoder, EhrEncoding
from cxrgen.models.diffusion import diffusion_target, make_ddim_scheduler, make_train_scheduler, unet_config
from cxrgen.train.latent_diffusion import global_draws
from cxrgen.train.loop import LoopConfig, attach_ema, index_batches, run_training
from cxrgen.train.losses import masked_bce

HINGES = ("sample", "element")
MANIFEST_FILE = "ddl_ldm.json"


class LabelHead(ModelMixin, ConfigMixin):
    """Linear head on the EHR cls token predicting the later image's CheXpert labels (paper: ``label_head``)."""

    @register_to_config
    def __init__(self, in_dim: int = 128, n_labels: int = 14):
        super().__init__()
        self.linear = nn.Linear(in_dim, n_labels)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.linear(cls)


class DdlLdm(nn.Module):
    """UNet + EHR encoder + label head, one module for the optimiser, gradient sync, EMA and checkpoints."""

    def __init__(self, unet, ehr_encoder: EhrEncoder, label_head: LabelHead):
        super().__init__()
        self.unet, self.ehr_encoder, self.label_head = unet, ehr_encoder, label_head

    @classmethod
    def build(cls, cfg: dict, *, latent_channels: int, sample_size: int, n_features: int, n_static: int,
              max_hours: int, n_labels: int) -> DdlLdm:
        enc = cfg["ehr_encoder"]
        encoder = EhrEncoder(n_features=n_features, n_static=n_static, max_hours=max_hours,
                             d_model=int(enc["d_model"]), n_heads=int(enc["n_heads"]), n_layers=int(enc["n_layers"]),
                             ff_dim=int(enc["ff_dim"]), dropout=float(enc["dropout"]))
        kwargs = unet_config(cfg["unet"], latent_channels=latent_channels, sample_size=sample_size,
                             cross_attention_dim=int(enc["d_model"]))
        kwargs.pop("_class_name")
        # hybrid conditioning: the prior latent is concatenated to the noisy latent on the input side only
        unet = UNet2DConditionModel(**{**kwargs, "in_channels": 2 * latent_channels})
        return cls(unet, encoder, LabelHead(in_dim=int(enc["d_model"]), n_labels=n_labels))

    def encode(self, values, static, start, end) -> EhrEncoding:
        return self.ehr_encoder(values, static, start, end)

    def denoise(self, noisy: torch.Tensor, prior: torch.Tensor, t, tokens: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        return self.unet(torch.cat([noisy, prior], dim=1), t, encoder_hidden_states=tokens,
                         encoder_attention_mask=mask.long()).sample


def snr_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """1 / (1 + SNR_t) = 1 − ᾱ_t: the contrastive term counts less where the signal dominates (paper code)."""
    return 1.0 - alphas_cumprod.to(t.device)[t]


def noised_condition(tokens: torch.Tensor, beta: float, delta: torch.Tensor) -> torch.Tensor:
    """Ẽ = (1 − β) E + β δ (poster: "Enhancing semantic multimodal fusion via contrastive LDM learning")."""
    return (1.0 - beta) * tokens + beta * delta


def contrastive_margin_loss(err_true: torch.Tensor, err_noised: torch.Tensor, margin: float,
                            weights: torch.Tensor | None = None, hinge: str = "sample") -> torch.Tensor:
    """mean_b w_b · max(e⁺_b − e⁻_b + α, 0) with e = squared denoising error; zero once the error with the true EHR
    is lower than with the noised EHR by at least the margin α. ``err_*`` are per element [B, ...]; ``hinge``
    "sample" takes each sample's mean error first (poster), "element" hinges every element (paper code)."""
    if hinge not in HINGES:
        raise ValueError(f"icu.ldm.contrastive_hinge = {hinge!r}; allowed: {list(HINGES)}")
    dims = tuple(range(1, err_true.ndim))
    if hinge == "sample":
        per_sample = F.relu(err_true.mean(dims) - err_noised.mean(dims) + margin)
    else:
        per_sample = F.relu(err_true - err_noised + margin).mean(dims)
    if weights is not None:
        per_sample = per_sample * weights
    return per_sample.mean()


def global_known_count(labels: torch.Tensor, world_size: int) -> torch.Tensor | None:
    """Known labels per rank of the global batch (data parallel: every rank divides its BCE sum by the global batch's
    count / world size, so the ranks together compute one process's mean); ``None`` with one process."""
    if world_size <= 1:
        return None
    from cxrgen.train.collectives import sum_over_ranks

    return sum_over_ranks(torch.isfinite(labels).sum().float()) / world_size


@dataclass
class DdlBatch:
    """One training batch (already this rank's rows): scaled latents, the EHR window and the later labels."""

    later: torch.Tensor  # [B, C, h, w]
    prior: torch.Tensor  # [B, C, h, w]
    values: torch.Tensor  # [B, T, F]
    static: torch.Tensor  # [B, S]
    start: torch.Tensor  # [B]
    end: torch.Tensor  # [B]
    labels: torch.Tensor  # [B, 14]


@dataclass
class LossTerms:
    total: torch.Tensor
    mse: torch.Tensor
    label_bce: torch.Tensor
    contrastive: torch.Tensor
    err_true: torch.Tensor
    err_noised: torch.Tensor


def ddl_loss(model: DdlLdm, scheduler, batch: DdlBatch, *, t: torch.Tensor, noise: torch.Tensor,
             delta: torch.Tensor, cfg: dict, ramp: float, world_size: int = 1) -> LossTerms:
    """The DDL-CXR loss for given draws (t, ε, δ); see the module docstring. The label BCE is the mean over the known
    labels of the global batch (``world_size`` ranks)."""
    noisy = scheduler.add_noise(batch.later, noise, t)
    encoding = model.encode(batch.values, batch.static, batch.start, batch.end)
    target = diffusion_target(scheduler, batch.later, noise, t)  # ε (paper); v in the demo config
    eps_true = model.denoise(noisy, batch.prior, t, encoding.tokens, encoding.mask)
    err_true = (eps_true.float() - target) ** 2
    mse = err_true.mean()
    label_bce = masked_bce(model.label_head(encoding.cls), batch.labels,
                           known_count=global_known_count(batch.labels, world_size))
    total = mse + float(cfg["label_loss_weight"]) * label_bce
    contrastive = torch.zeros((), device=mse.device)
    err_noised = torch.zeros_like(err_true)
    weight = float(cfg["contrastive_weight"]) * ramp
    if float(cfg["contrastive_weight"]) > 0:
        tokens_noised = noised_condition(encoding.tokens, float(cfg["noise_beta"]), delta)
        eps_noised = model.denoise(noisy, batch.prior, t, tokens_noised, encoding.mask)
        err_noised = (eps_noised.float() - target) ** 2
        contrastive = contrastive_margin_loss(err_true, err_noised, float(cfg["margin"]),
                                              snr_weight(scheduler.alphas_cumprod, t), cfg["contrastive_hinge"])
        total = total + weight * contrastive
    return LossTerms(total, mse, label_bce, contrastive, err_true.detach(), err_noised.detach())


def sample_seed(seed: int, key: str) -> int:
    """A per-sample seed from the run seed and the sample's key: its noise never depends on batch neighbours or
    order (the public code shares one ``global_noise`` x_T across every sample)."""
    digest = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


@torch.no_grad()
def sample_later_latents(model: DdlLdm, scheduler_config, *, prior: torch.Tensor, values: torch.Tensor,
                         static: torch.Tensor, start: torch.Tensor, end: torch.Tensor, seeds: list[int],
                         steps: int, eta: float) -> torch.Tensor:
    """DDIM (η-noise and x_T from each sample's own generator) of the later latent given the prior latent and the
    EHR window; paper: DDIM 200 steps, η = 1 (``LDM_generate_z1.yaml``)."""
    model.eval()
    device = next(model.parameters()).device
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    shape = tuple(prior.shape[1:])
    latents = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)
    prior = prior.to(device)
    encoding = model.encode(values.to(device), static.to(device), start.to(device), end.to(device))
    scheduler = make_ddim_scheduler(scheduler_config, steps)
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        eps = model.denoise(latents, prior, t, encoding.tokens, encoding.mask)
        noise = None
        if eta > 0:
            noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)
        latents = scheduler.step(eps, t, latents, eta=eta, variance_noise=noise).prev_sample
    return latents


def save_ddl_ldm(model: DdlLdm, scheduler, out_dir: Path, manifest: dict) -> None:
    model.unet.save_pretrained(out_dir / "unet")
    model.ehr_encoder.save_pretrained(out_dir / "ehr_encoder")
    model.label_head.save_pretrained(out_dir / "label_head")
    scheduler.save_pretrained(out_dir / "scheduler")
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))


def load_ddl_ldm(model_dir: Path | str) -> tuple[DdlLdm, dict, dict]:
    """(model in eval mode, the training scheduler's config, the manifest) of a ``train_ddl_ldm`` output; strict."""
    from diffusers import DDPMScheduler

    from cxrgen.models.diffusion import load_unet
    from cxrgen.models.saving import load_strict

    model_dir = Path(model_dir)
    how = "run rule train_ddl_ldm"
    if not (model_dir / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"{model_dir} is not a DDL-CXR LDM (no {MANIFEST_FILE}); {how}")
    model = DdlLdm(load_unet(model_dir / "unet"), load_strict(EhrEncoder, model_dir / "ehr_encoder", how),
                   load_strict(LabelHead, model_dir / "label_head", how))
    scheduler = DDPMScheduler.from_pretrained(model_dir / "scheduler")
    return model.eval(), scheduler.config, json.loads((model_dir / MANIFEST_FILE).read_text())


@dataclass
class PairData:
    """Training or validation pairs in memory: scaled latent posterior means [P, C, h, w] and stds (None = the means
    only) of the later and prior images, the stays' EHR series ``values`` [N, T, F] / ``static`` [N, S], each pair's
    row in them ``stay_rows`` [P], its EHR window ``start``/``end`` [P] and the later labels [P, 14] (NaN = masked)."""

    later_mean: torch.Tensor
    later_std: torch.Tensor | None
    prior_mean: torch.Tensor
    prior_std: torch.Tensor | None
    values: torch.Tensor
    static: torch.Tensor
    stay_rows: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.later_mean)


class DdlLdmTrainer:
    """Model, optimiser, EMA and train step of the DDL-CXR LDM on in-memory :class:`PairData`. Build after
    :func:`cxrgen.train.loop.seed_everything` so the initial weights are reproducible."""

    def __init__(self, cfg: dict, data: PairData):
        self.cfg, self.data = cfg, data
        self.scheduler = make_train_scheduler(cfg["schedule"])
        self.model = DdlLdm.build(cfg, latent_channels=int(data.later_mean.shape[1]),
                                  sample_size=int(data.later_mean.shape[-1]), n_features=int(data.values.shape[-1]),
                                  n_static=int(data.static.shape[-1]), max_hours=int(data.values.shape[1]),
                                  n_labels=int(data.labels.shape[-1]))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=float(cfg["lr"]),
                                           weight_decay=float(cfg["weight_decay"]))
        self.ema = attach_ema("ddl_ldm", self.model, decay=float(cfg["ema_decay"]))
        self.max_steps = 1

    def _draw(self, data: PairData, indices: list[int], generator: torch.Generator, mine, world_size: int):
        """All random numbers of a step, drawn for the global batch in a fixed order; this rank keeps its rows."""
        n, shape = len(indices) * world_size, tuple(data.later_mean.shape[1:])
        later, prior = data.later_mean[indices], data.prior_mean[indices]
        if data.later_std is not None:
            later = later + data.later_std[indices] * mine(torch.randn((n, *shape), generator=generator))
            prior = prior + data.prior_std[indices] * mine(torch.randn((n, *shape), generator=generator))
        t = mine(torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=generator))
        noise = mine(torch.randn((n, *shape), generator=generator))
        d_model = int(self.model.ehr_encoder.config.d_model)
        delta = mine(torch.randn((n, data.values.shape[1] + 2, d_model), generator=generator))
        rows = data.stay_rows[indices]
        batch = DdlBatch(later=later, prior=prior, values=data.values[rows], static=data.static[rows],
                         start=data.start[indices], end=data.end[indices], labels=data.labels[indices])
        return batch, t, noise, delta

    def loss(self, indices: list[int], generator: torch.Generator, device: torch.device, *, ramp: float,
             data: PairData | None = None, autocast=None, ctx=None) -> LossTerms:
        """Loss terms for ``indices`` of ``data`` (default: the training pairs); every draw from ``generator``.
        ``ctx`` with several ranks: ``indices`` are this rank's share of the global batch (see train_ldm)."""
        world_size, mine = global_draws(ctx)
        batch, t, noise, delta = self._draw(data or self.data, indices, generator, mine, world_size)
        batch = DdlBatch(**{k: v.to(device) for k, v in batch.__dict__.items()})
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            return ddl_loss(self.model, self.scheduler, batch, t=t.to(device), noise=noise.to(device),
                            delta=delta.to(device), cfg=self.cfg, ramp=ramp, world_size=world_size)

    def ramp(self, step: int) -> float:
        """Contrastive weight ramp: the paper code's epoch / max_epoch as step / max_steps (0 at the first step)."""
        return 1.0 if self.cfg["contrastive_ramp"] == "none" else step / max(1, self.max_steps)

    def train_step(self, indices: list[int], ctx) -> dict[str, float]:
        terms = self.loss(indices, ctx.generator, ctx.device, ramp=self.ramp(ctx.step), autocast=ctx.autocast,
                          ctx=ctx)
        grad_norm = ctx.backward_step(terms.total, self.model, self.optimizer, self.cfg["grad_clip"])
        return {"loss": float(terms.total.detach()), "mse": float(terms.mse.detach()),
                "label_bce": float(terms.label_bce.detach()), "contrastive": float(terms.contrastive.detach()),
                "grad_norm": grad_norm}

    def fit(self, loop: LoopConfig, state_dir: Path, *, on_log=None, extra_state: dict | None = None):
        """Run (or resume) training; data parallel like :class:`cxrgen.stages.train_ldm.LatentDiffusionTrainer`."""
        self.max_steps = loop.max_steps

        return run_training(loop, modules={"ddl_ldm": self.model}, optimizers={"ddl_ldm": self.optimizer},
                            loader_for=index_batches(loop, len(self.data), self.cfg["batch_size"]),
                            train_step=self.train_step, state_dir=Path(state_dir), emas={"ddl_ldm": self.ema},
                            on_log=on_log, extra_state=extra_state, desc="train_ddl_ldm", distributed_ready=True)

    @torch.no_grad()
    def evaluate(self, data: PairData, seed: int, max_items: int) -> dict[str, float]:
        """Mean loss terms (full ramp, posterior means, fixed draws) on up to ``max_items`` held-out pairs, and the
        fraction of pairs whose denoising error is lower with the true EHR than with the noised one."""
        n = min(int(max_items), len(data))
        if n == 0:
            return {}
        data = PairData(**{**data.__dict__, "later_std": None, "prior_std": None})
        generator = torch.Generator().manual_seed(seed)
        device = next(self.model.parameters()).device
        self.model.eval()
        sums = dict.fromkeys(("loss", "mse", "label_bce", "contrastive", "true_ehr_lower_error_fraction"), 0.0)
        try:
            batch = int(self.cfg["batch_size"])
            for first in range(0, n, batch):
                idx = list(range(first, min(n, first + batch)))
                terms = self.loss(idx, generator, device, ramp=1.0, data=data)
                sums["loss"] += float(terms.total) * len(idx)
                for key in ("mse", "label_bce", "contrastive"):
                    sums[key] += float(getattr(terms, key)) * len(idx)
                dims = tuple(range(1, terms.err_true.ndim))
                lower = terms.err_true.mean(dims) < terms.err_noised.mean(dims)
                sums["true_ehr_lower_error_fraction"] += float(lower.float().sum())
            return {k: v / n for k, v in sums.items()}
        finally:
            self.model.train()


def pair_data(pairs, ehr, cache, *, with_std: bool) -> PairData:
    """:class:`PairData` of the ``pairs`` rows (pairs.parquet) from the EHR series (:func:`cxrgen.icu.inputs.load_ehr`)
    and the latent cache (scaled like train_ldm: posterior moments × the cache's scaling factor)."""
    from cxrgen.icu.inputs import cache_rows, pair_labels, scaled_latents

    later_mean, later_std = scaled_latents(cache, cache_rows(cache, pairs["later_image_id"].tolist()), with_std)
    prior_mean, prior_std = scaled_latents(cache, cache_rows(cache, pairs["prior_image_id"].tolist()), with_std)
    start = torch.tensor(pairs["ehr_start_bin"].to_numpy(np.int64)).clamp(0, ehr.hours)
    end = torch.tensor(pairs["ehr_end_bin"].to_numpy(np.int64)).clamp(0, ehr.hours)
    return PairData(later_mean=later_mean, later_std=later_std, prior_mean=prior_mean, prior_std=prior_std,
                    values=ehr.values, static=ehr.static,
                    stay_rows=torch.from_numpy(ehr.rows(pairs["stay_key"].tolist())), start=start, end=end,
                    labels=pair_labels(pairs))
