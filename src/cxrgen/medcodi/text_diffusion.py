"""MedCoDi-M / XGeM's report diffusion model: ε-prediction on the report VAE's latents, conditioned on the X-ray views.

Paper (arXiv 2501.04614 §3.2.2): the report "UNet" follows Versatile Diffusion's fully connected residual blocks
(FCResBlock): the 768-d text latent is expanded to a 320×4 = 1280 hidden feature, and residual blocks with GroupNorm,
SiLU and skip connections denoise it. :class:`ReportDenoiser` is that stack: input projection to ``hidden_dim``,
``blocks`` FCResBlocks that each add the timestep embedding, and per block the condition. In CoDi/MedCoDi-M the
condition is one pooled prompt vector reached through cross-attention; attention over a single key token has softmax
weight 1, so it reduces to a learned linear map of that token added to the features, which is what each block applies
(no attention kernel needed).

Condition (paper §2.2, multi-prompt training): for the report the other modalities are the frontal and the lateral
view. Each training step draws, per study, a uniformly random non-empty subset of the views the study has
(:func:`draw_view_subset`) and combines their prompt embeddings as the mean of the L2-normalised vectors
(:func:`combine_prompt_embeddings`, Eq. 1). ``single`` prompting (the MedCoDi ablation) always uses the frontal view
alone. A share ``cfg_dropout`` of the conditions is replaced by the null condition (zeros; a combined embedding is
never zero) for classifier-free guidance.

The model predicts ε (the paper's objective, Eq. 2); ``schedule.prediction_type: v_prediction`` is the demo's
option (Salimans & Ho 2022): with few CPU steps an ε-model's error is amplified ~1/√ᾱ_T ≈ 15× in the first DDIM step's
x₀ estimate and the samples leave the VAE's latent region.

The latents are the VAE's posterior means, multiplied by ``latent_scale`` = 1 / their standard deviation over the
training reports (unit variance, as Stable Diffusion's scaling factor does for image latents).
:func:`sample_reports` runs DDIM with per-sample seeds and CFG, then greedy VAE decoding.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from cxrgen.models.diffusion import diffusion_target, make_ddim_scheduler, make_train_scheduler
from cxrgen.train.latent_diffusion import global_draws

IMAGE_VIEWS = ("frontal", "lateral")
PROMPTINGS = ("multi", "single")
MANIFEST = "report_diffusion.json"
HOW_TO_MAKE = "rule train_report_diffusion writes results/medcodi/report_diffusion/<prompting>"


# ---------------------------------------------------------------------------------------------------- conditions


def view_subsets(available: tuple[str, ...] | list[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``available`` (in ``available``'s order), smallest first: 2^k - 1 of them."""
    return [combo for size in range(1, len(available) + 1) for combo in itertools.combinations(available, size)]


def draw_view_subset(available: tuple[str, ...] | list[str], uniform: float) -> tuple[str, ...]:
    """The subset picked by ``uniform`` ∈ [0, 1) among :func:`view_subsets` (each with probability 1/(2^k - 1), paper
    §2.2); the random number comes from the caller so a data-parallel step can draw the global batch's numbers."""
    subsets = view_subsets(available)
    if not subsets:
        raise ValueError("no modality available to prompt with")
    return subsets[min(len(subsets) - 1, int(uniform * len(subsets)))]


def combine_prompt_embeddings(embeddings: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Mean of the L2-normalised rows of ``embeddings`` [k, D] (paper Eq. 1 with equal weights) → [D]."""
    embeddings = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    if embeddings.ndim != 2 or len(embeddings) == 0 or not torch.isfinite(embeddings).all():
        raise ValueError(f"need a [k >= 1, D] finite embedding matrix, got shape {tuple(embeddings.shape)}")
    return F.normalize(embeddings, dim=-1).mean(dim=0)


def prompt_views(prompting: str) -> tuple[str, ...]:
    """Views a report is prompted with: frontal and lateral (``multi``) or frontal only (``single``)."""
    if prompting not in PROMPTINGS:
        raise ValueError(f"prompting = {prompting!r}; allowed: {', '.join(PROMPTINGS)}")
    return IMAGE_VIEWS if prompting == "multi" else IMAGE_VIEWS[:1]


def condition_options(embeddings: dict[str, np.ndarray], prompting: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per study the combined condition of every subset it can draw: ``(options [N, S, D], n_options [N])`` with S =
    the number of non-empty subsets of the prompting's views (unused slots are zeros); n_options = 0 where the study
    has none of the views (it cannot be prompted). ``embeddings``: view → [N, D] with NaN rows for a missing view."""
    views = prompt_views(prompting)
    n, dim = embeddings[views[0]].shape
    options = torch.zeros(n, len(view_subsets(views)), dim)
    counts = torch.zeros(n, dtype=torch.long)
    for row in range(n):
        present = tuple(v for v in views if np.isfinite(embeddings[v][row]).all())
        for slot, subset in enumerate(view_subsets(present)):
            options[row, slot] = combine_prompt_embeddings(np.stack([embeddings[v][row] for v in subset]))
        counts[row] = len(view_subsets(present))
    return options, counts


def pick_conditions(options: torch.Tensor, counts: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Row i's condition = its option ``floor(uniform_i · counts_i)``: the uniform subset draw of
    :func:`draw_view_subset`, batched. Rows with no option get the null condition (zeros)."""
    slots = torch.clamp((uniforms * counts).long(), max=options.shape[1] - 1).clamp(min=0)
    picked = options[torch.arange(len(options)), slots]
    return torch.where((counts > 0)[:, None], picked, torch.zeros_like(picked))


def study_conditions(studies: Path | str, embeddings_npz: Path | str, splits: list[str]) -> pd.DataFrame:
    """Study-table rows of ``splits`` with a non-empty report, in study_pid order, joined with their prompt
    embeddings (rule embed_prompts) as object columns ``frontal``/``lateral`` ([D] arrays, NaN where absent)."""
    table = pd.read_parquet(studies)
    table = table[table["split"].isin(list(splits))].copy()
    table["report"] = table["report"].fillna("").astype(str).str.strip()
    table = table[table["report"].str.len() > 0].sort_values("study_pid", kind="stable").reset_index(drop=True)
    with np.load(embeddings_npz, allow_pickle=False) as npz:
        position = {str(pid): i for i, pid in enumerate(npz["study_pids"])}
        views = {v: np.asarray(npz[v], dtype=np.float32) for v in IMAGE_VIEWS}
    missing = [pid for pid in table["study_pid"] if str(pid) not in position]
    if missing:
        raise ValueError(f"{len(missing)} studies of {studies} have no prompt embeddings in {embeddings_npz} "
                         f"(e.g. {missing[:3]}); rerun rule embed_prompts")
    rows = [position[str(pid)] for pid in table["study_pid"]]
    for view in IMAGE_VIEWS:
        table[view] = list(views[view][rows]) if rows else []
    return table


def embedding_matrix(table: pd.DataFrame, view: str) -> np.ndarray:
    return np.stack(table[view].to_list()).astype(np.float32) if len(table) else np.zeros((0, 0), np.float32)


# ---------------------------------------------------------------------------------------------------- model


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding [B, dim] (DDPM / CompVis ``timestep_embedding``: cos then sin)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(embedding, (0, dim % 2))


class FCResBlock(nn.Module):
    """GroupNorm → SiLU → Linear, + projected (timestep) embedding, GroupNorm → SiLU → Dropout → Linear, + skip;
    then + a linear map of the condition (cross-attention to one token)."""

    def __init__(self, width: int, emb_dim: int, cond_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(groups, width), nn.GroupNorm(groups, width)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.dropout = nn.Dropout(dropout)
        self.context = nn.Linear(cond_dim, width)
        nn.init.zeros_(self.fc2.weight)  # each block starts as the identity (CompVis zero_module on the out layer)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = self.fc1(F.silu(self.norm1(h))) + self.emb(F.silu(emb))
        x = self.fc2(self.dropout(F.silu(self.norm2(x))))
        h = h + x
        return h + self.context(cond)


class ReportDenoiser(ModelMixin, ConfigMixin):
    """ε(z_t, t, c) for text latents [B, latent_dim] and conditions [B, cond_dim] (see the module docstring)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, latent_dim: int = 768, cond_dim: int = 768, hidden_dim: int = 1280, blocks: int = 8,
                 norm_groups: int = 32, dropout: float = 0.0):
        super().__init__()
        if hidden_dim % norm_groups:
            raise ValueError(f"report_diffusion.model.hidden_dim {hidden_dim} is not divisible by norm_groups "
                             f"{norm_groups}")
        self.time_mlp = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim))
        self.proj_in = nn.Linear(latent_dim, hidden_dim)
        self.res_blocks = nn.ModuleList(FCResBlock(hidden_dim, hidden_dim, cond_dim, norm_groups, dropout)
                                    for _ in range(blocks))
        self.norm_out = nn.GroupNorm(norm_groups, hidden_dim)
        self.proj_out = nn.Linear(hidden_dim, latent_dim)

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.config.hidden_dim))
        h = self.proj_in(z)
        for block in self.res_blocks:
            h = block(h, emb, cond)
        return self.proj_out(F.silu(self.norm_out(h)))


def build_denoiser(cfg: dict, latent_dim: int, cond_dim: int) -> ReportDenoiser:
    arch = cfg["model"]
    return ReportDenoiser(latent_dim=latent_dim, cond_dim=cond_dim, hidden_dim=int(arch["hidden_dim"]),
                          blocks=int(arch["blocks"]), norm_groups=int(arch["norm_groups"]),
                          dropout=float(arch["dropout"]))


# ---------------------------------------------------------------------------------------------------- training


class ReportDiffusionTrainer:
    """Denoiser, optimizer, EMA and train step on scaled latents [N, latent_dim] with per-study condition options
    (:func:`condition_options`). Build after :func:`cxrgen.train.loop.seed_everything`."""

    def __init__(self, cfg: dict, latents: torch.Tensor, options: torch.Tensor, counts: torch.Tensor):
        from cxrgen.train.loop import attach_ema

        self.cfg, self.latents, self.options, self.counts = cfg, latents, options, counts
        self.scheduler = make_train_scheduler(cfg["schedule"])
        self.model = build_denoiser(cfg, latent_dim=latents.shape[1], cond_dim=options.shape[2])
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=float(cfg["lr"]),
                                           weight_decay=float(cfg["weight_decay"]))
        self.ema = attach_ema("denoiser", self.model, decay=float(cfg["ema_decay"]))

    def loss(self, indices: list[int], generator: torch.Generator, device: torch.device, ctx=None,
             autocast=None) -> torch.Tensor:
        """MSE to the prediction target (ε, or v) for the given studies; draws (subset uniform, CFG drop, t, ε) for the global batch from
        ``generator``, in this order, and keeps this rank's rows (``ctx.local``)."""
        world_size, mine = global_draws(ctx)
        n = len(indices) * world_size
        uniforms = mine(torch.rand(n, generator=generator))
        drop = mine(torch.rand(n, generator=generator) < float(self.cfg["cfg_dropout"]))
        t = mine(torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=generator))
        noise = mine(torch.randn((n, self.latents.shape[1]), generator=generator))
        z = self.latents[indices]
        cond = pick_conditions(self.options[indices], self.counts[indices], uniforms)
        cond = torch.where(drop[:, None], torch.zeros_like(cond), cond)
        noisy = self.scheduler.add_noise(z, noise, t)
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            prediction = self.model(noisy.to(device), t.to(device), cond.to(device))
        return F.mse_loss(prediction.float(), diffusion_target(self.scheduler, z, noise, t).to(device))

    def train_step(self, indices: list[int], ctx) -> dict[str, float]:
        loss = self.loss(indices, ctx.generator, ctx.device, ctx=ctx, autocast=ctx.autocast)
        grad_norm = ctx.backward_step(loss, self.model, self.optimizer)
        return {"loss": float(loss.detach()), "grad_norm": grad_norm}

    def fit(self, loop, state_dir: Path, *, on_log=None, extra_state: dict | None = None):
        from cxrgen.train.loop import StepBatchSampler, run_training

        world = loop.resolved_world()

        def loader_for(start: int):
            return iter(StepBatchSampler(len(self.latents), int(self.cfg["batch_size"]), seed=loop.seed,
                                         start_step=start, max_steps=loop.max_steps, rank=world.rank,
                                         world_size=world.world_size))

        return run_training(loop, modules={"denoiser": self.model}, optimizers={"denoiser": self.optimizer},
                            loader_for=loader_for, train_step=self.train_step, state_dir=Path(state_dir),
                            emas={"denoiser": self.ema}, on_log=on_log, extra_state=extra_state,
                            desc="train_report_diffusion", distributed_ready=True)


def latent_scale(means: torch.Tensor) -> float:
    """1 / standard deviation of the training posterior means over all entries (unit-variance latents)."""
    std = float(means.double().std())
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"the report VAE's training latents have standard deviation {std}; cannot scale them")
    return 1.0 / std


def write_manifest(directory: Path, *, final_dir: Path, vae_dir: Path | str, scale: float, prompting: str,
                   cond_dim: int, extra: dict | None = None) -> Path:
    """``report_diffusion.json``: the VAE (path relative to the published model dir), latent scale, prompting."""
    import os

    payload = {"vae_dir": os.path.relpath(Path(vae_dir).resolve(), Path(final_dir).resolve()),
               "latent_scale": scale, "prompting": prompting, "prompt_views": list(prompt_views(prompting)),
               "cond_dim": cond_dim, **(extra or {})}
    path = directory / MANIFEST
    path.write_text(json.dumps(payload, indent=1))
    return path


# ---------------------------------------------------------------------------------------------------- sampling


def read_manifest(model_dir: Path | str) -> dict:
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} has no {MANIFEST}; {HOW_TO_MAKE}")
    return json.loads(path.read_text())


@torch.no_grad()
def sample_latents(denoiser: ReportDenoiser, train_scheduler_config, conditions: torch.Tensor, seeds: list[int],
                   steps: int, guidance: float, eta: float = 0.0) -> torch.Tensor:
    """DDIM sampling of scaled text latents [B, latent_dim]: every sample's initial noise (and η noise) comes from its
    own ``torch.Generator(seed)``, so a sample does not depend on the rest of the batch. CFG on the model output (ε or
    v): out = out(∅) + guidance · (out(c) − out(∅)), with ∅ the zero condition; NaN rows of ``conditions`` are
    unconditional."""
    conditions = torch.as_tensor(conditions, dtype=torch.float32)
    if len(seeds) != len(conditions):
        raise ValueError(f"{len(seeds)} seeds for {len(conditions)} conditions")
    device = next(denoiser.parameters()).device
    unconditional = ~torch.isfinite(conditions).all(dim=1)
    cond = torch.where(unconditional[:, None], torch.zeros_like(conditions), conditions).to(device)
    null = torch.zeros_like(cond)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    dim = int(denoiser.config.latent_dim)
    z = torch.stack([torch.randn(dim, generator=g) for g in generators]).to(device)
    scheduler = make_ddim_scheduler(train_scheduler_config, steps)
    scheduler.set_timesteps(int(steps))
    for t in scheduler.timesteps:
        tt = torch.full((len(z),), int(t), device=device, dtype=torch.long)
        out = denoiser(z, tt, cond)
        if guidance != 1.0:
            out_null = denoiser(z, tt, null)
            out = torch.where(unconditional[:, None].to(device), out_null, out_null + guidance * (out - out_null))
        variance_noise = None
        if eta > 0:
            variance_noise = torch.stack([torch.randn(dim, generator=g) for g in generators]).to(device)
        z = scheduler.step(out, t, z, eta=eta, variance_noise=variance_noise).prev_sample
    return z


def load_report_diffusion(model_dir: Path | str) -> tuple[ReportDenoiser, dict, dict]:
    """(EMA denoiser, its training scheduler config, manifest) of a ``train_report_diffusion`` output."""
    from diffusers import DDPMScheduler

    from cxrgen.models.saving import load_strict

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    denoiser = load_strict(ReportDenoiser, model_dir / "denoiser", HOW_TO_MAKE)
    scheduler_config = DDPMScheduler.load_config(model_dir / "scheduler")
    return denoiser, scheduler_config, manifest


def sample_reports(model_dir: Path | str, vae_dir: Path | str | None, conditions, seeds: list[int], steps: int = 50,
                   guidance: float = 7.5, eta: float = 0.0, batch_size: int = 64) -> list[str]:
    """Reports generated from prompt conditions [B, D] (combine views with :func:`combine_prompt_embeddings`; a NaN
    row = unconditional) with one seed per report: DDIM (``steps``, CFG ``guidance``, ``eta``) on the model of rule
    train_report_diffusion in ``model_dir``, latents unscaled and decoded greedily by the report VAE ``vae_dir``
    (None: the VAE recorded in the model's manifest)."""
    from cxrgen.medcodi.text_vae import load_text_vae

    denoiser, scheduler_config, manifest = load_report_diffusion(model_dir)
    vae = load_text_vae(vae_dir if vae_dir is not None else Path(model_dir) / manifest["vae_dir"])
    conditions = torch.as_tensor(np.asarray(conditions, dtype=np.float32))
    if conditions.ndim != 2 or conditions.shape[1] != int(manifest["cond_dim"]):
        raise ValueError(f"conditions of shape {tuple(conditions.shape)}; the model expects [B, {manifest['cond_dim']}]")
    if vae.latent_dim != int(denoiser.config.latent_dim):
        raise ValueError(f"the VAE in {vae_dir} has {vae.latent_dim}-d latents, the report diffusion model "
                         f"{denoiser.config.latent_dim}-d")
    reports: list[str] = []
    for start in range(0, len(conditions), batch_size):
        z = sample_latents(denoiser, scheduler_config, conditions[start:start + batch_size],
                           list(seeds[start:start + batch_size]), steps, guidance, eta)
        reports.extend(vae.decode(z.cpu() / float(manifest["latent_scale"])))
    return reports
