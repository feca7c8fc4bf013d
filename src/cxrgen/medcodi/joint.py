"""MedCoDi-M / XGeM joint generation: cross-modal latent alignment (arXiv 2501.04614 §2.3, after CoDi, Tang et al.
2023 §3.3).

Each frozen generator (frontal LDM, lateral LDM, report diffusion model, all multi-prompt) gets

* an *environment encoder* V (:class:`EnvironmentEncoder`) that projects its own noisy latent, with the (normalised)
  timestep, into ``tokens`` vectors of the shared prompt space (width D of the prompt encoders), and
* a cross-attention path to the OTHER flow's V tokens: for the diffusers UNet a decoupled key/value projection on every
  existing cross-attention layer (:class:`PartnerAttention`, installed as an attention processor; the UNet's own query
  and output projection are reused), for the report denoiser (fully connected residual blocks, where attention over
  one pooled token is a linear map) a projection of the partner tokens added to every block
  (:class:`ReportPartner`). Both are multiplied by a zero-initialised gate, so an untrained alignment leaves joint
  generation equal to independent generation.

Only V and these layers train (:class:`JointAlignment`); the generators stay frozen. Training draws, per step, one of
the pairs (F, L), (F, T), (L, T) in round robin, noises both targets at the SAME normalised time s ∈ [0, 1) (flow m's
integer timestep is ``floor(s · T_m)``; the generators may use different schedule lengths), conditions both flows on
the combined embedding of the remaining modality (T for F+L, L for F+T, F for L+T) and sums the two flows' own
objectives (ε or v MSE, as each generator was trained). CoDi's argument (§3.3) carries over: every V maps into the one
shared space, so training the three pairs aligns every flow with every other one; a combination not trained as such
(e.g. a third flow) needs no extra layers.

Joint sampling (:func:`sample_pair`): DDIM for both flows in lock step (the same number of steps, hence the same
normalised times); at each step every flow denoises while attending to the partner's V tokens of the partner's
current latent. ``joint=False`` runs the same seeds without the joint layers (independent generation).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from cxrgen.medcodi.text_diffusion import ReportDenoiser, timestep_embedding
from cxrgen.models.diffusion import diffusion_target, make_ddim_scheduler

IMAGE_MODALITIES = ("frontal", "lateral")
MODALITIES = ("frontal", "lateral", "report")
PAIRS = (("frontal", "lateral"), ("frontal", "report"), ("lateral", "report"))
SHORT = {"frontal": "F", "lateral": "L", "report": "T"}
# contract direction keys: the given modality -> the jointly generated pair
DIRECTIONS = {"T->F+L": ("report", ("frontal", "lateral")), "L->F+T": ("lateral", ("frontal", "report")),
              "F->L+T": ("frontal", ("lateral", "report"))}
MANIFEST = "joint_alignment.json"
TIME_SCALE = 1000.0  # V sees the normalised time s as s · 1000 (the range of the generators' own timestep embeddings)


def remaining(pair: Sequence[str]) -> str:
    """The modality that conditions a pair: the one not in it."""
    (rest,) = [m for m in MODALITIES if m not in pair]
    return rest


# ---------------------------------------------------------------------------------------------------- layers


class EnvironmentEncoder(nn.Module):
    """V: a noisy latent (flattened) and its normalised time s -> ``tokens`` vectors of width ``dim``."""

    def __init__(self, in_dim: int, dim: int, hidden: int, tokens: int):
        super().__init__()
        self.tokens, self.dim, self.hidden = tokens, dim, hidden
        self.latent_in = nn.Linear(in_dim, hidden)
        self.time_in = nn.Linear(hidden, hidden)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, tokens * dim))

    def forward(self, latent: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = self.latent_in(latent.flatten(1).float())
        h = h + self.time_in(timestep_embedding(s * TIME_SCALE, self.hidden).to(h.device))
        return self.out(h).view(len(latent), self.tokens, self.dim)


class PartnerAttention(nn.Module):
    """Decoupled cross-attention of a UNet cross-attention layer's queries to the partner's V tokens (own key/value
    projections, the layer's frozen query/output projections), times a zero-initialised gate."""

    def __init__(self, dim: int, inner_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_k = nn.Linear(dim, inner_dim, bias=False)
        self.to_v = nn.Linear(dim, inner_dim, bias=False)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, attn, hidden_states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if hidden_states.ndim != 3 or attn.residual_connection or attn.rescale_output_factor != 1.0:
            raise ValueError("PartnerAttention expects a transformer block's cross-attention ([B, N, C] input)")
        batch = len(hidden_states)
        query = attn.to_q(hidden_states)
        key, value = self.to_k(tokens.to(query.dtype)), self.to_v(tokens.to(query.dtype))
        head_dim = key.shape[-1] // self.heads
        query, key, value = (x.view(batch, -1, self.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        out = F.scaled_dot_product_attention(query, key, value)
        out = out.transpose(1, 2).reshape(batch, -1, self.heads * head_dim)
        return self.gate * attn.to_out[1](attn.to_out[0](out))


class _PartnerProcessor:
    """The UNet's own cross-attention (diffusers ``AttnProcessor2_0``) plus :class:`PartnerAttention` when the call
    carries ``partner_tokens`` (``cross_attention_kwargs``). A plain object, so the UNet's state dict is unchanged."""

    def __init__(self, layer: PartnerAttention):
        self.layer, self.base = layer, AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 partner_tokens=None):
        out = self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if partner_tokens is None:
            return out
        return out + self.layer(attn, hidden_states, partner_tokens)


class _PlainProcessor(AttnProcessor2_0):
    """The default processor for the UNet's other attention layers; accepts (and ignores) ``partner_tokens``, which
    diffusers hands to every layer."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 partner_tokens=None):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class ReportPartner(nn.Module):
    """Per residual block of the report denoiser: gate_i · Linear(partner tokens, flattened) added to the features."""

    def __init__(self, dim: int, tokens: int, hidden_dim: int, blocks: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(tokens * dim, hidden_dim) for _ in range(blocks))
        self.gates = nn.Parameter(torch.zeros(blocks))


def _safe(name: str) -> str:
    return name.replace(".", "__")


def cross_attention_layers(unet) -> list[list]:
    """``[processor name, inner dim, heads]`` of every cross-attention layer of a diffusers UNet."""
    layers = []
    for name, module in unet.named_modules():
        if getattr(module, "is_cross_attention", False) and hasattr(module, "to_k"):
            layers.append([f"{name}.processor", int(module.to_k.out_features), int(module.heads)])
    if not layers:
        raise ValueError("the UNet has no cross-attention layer to attach the joint attention to")
    return layers


class JointAlignment(ModelMixin, ConfigMixin):
    """Everything that trains for joint generation: V per modality, the partner attention of both view UNets and the
    report denoiser's partner projections (built from config, saved with ``save_pretrained``)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, dim: int = 768, tokens: int = 4, hidden: int = 256, image_latent_numel: int = 4 * 64 * 64,
                 report_latent_dim: int = 768, report_hidden: int = 1280, report_blocks: int = 8,
                 attention_layers: dict | None = None):
        super().__init__()
        attention_layers = attention_layers or {}
        in_dims = {"frontal": image_latent_numel, "lateral": image_latent_numel, "report": report_latent_dim}
        self.env = nn.ModuleDict({m: EnvironmentEncoder(in_dims[m], dim, hidden, tokens) for m in MODALITIES})
        self.image_attention = nn.ModuleDict({
            view: nn.ModuleDict({_safe(name): PartnerAttention(dim, inner, heads)
                                 for name, inner, heads in attention_layers.get(view, [])})
            for view in IMAGE_MODALITIES})
        self.report_partner = ReportPartner(dim, tokens, report_hidden, report_blocks)

    @classmethod
    def for_generators(cls, generators: Generators, *, tokens: int, hidden: int) -> JointAlignment:
        """Sized for ``generators``; the partner key/value projections start as copies of the frozen cross-attention's
        own (IP-Adapter's initialisation: the partner tokens live in the same space as the prompt token)."""
        layers = {view: cross_attention_layers(generators.unets[view]) for view in IMAGE_MODALITIES}
        model = cls(dim=generators.dim, tokens=tokens, hidden=hidden,
                    image_latent_numel=int(np.prod(generators.image_shape)),
                    report_latent_dim=int(generators.denoiser.config.latent_dim),
                    report_hidden=int(generators.denoiser.config.hidden_dim),
                    report_blocks=int(generators.denoiser.config.blocks), attention_layers=layers)
        with torch.no_grad():
            for view in IMAGE_MODALITIES:
                modules = dict(generators.unets[view].named_modules())
                for name, _, _ in layers[view]:
                    attn, partner = modules[name.removesuffix(".processor")], model.image_attention[view][_safe(name)]
                    partner.to_k.weight.copy_(attn.to_k.weight)
                    partner.to_v.weight.copy_(attn.to_v.weight)
        return model

    def install(self, unets: dict) -> None:
        """Route both view UNets' cross-attention layers through their :class:`PartnerAttention`."""
        for view in IMAGE_MODALITIES:
            processors = {name: _PlainProcessor() for name in unets[view].attn_processors}
            for name, _, _ in self.config.attention_layers[view]:
                processors[name] = _PartnerProcessor(self.image_attention[view][_safe(name)])
            unets[view].set_attn_processor(processors)

    def report_forward(self, denoiser: ReportDenoiser, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                       partner_tokens: torch.Tensor) -> torch.Tensor:
        """The frozen denoiser's forward with the gated partner projection added after every residual block."""
        emb = denoiser.time_mlp(timestep_embedding(t, denoiser.config.hidden_dim))
        h = denoiser.proj_in(z)
        flat = partner_tokens.flatten(1)
        for i, block in enumerate(denoiser.res_blocks):
            h = block(h, emb, cond) + self.report_partner.gates[i] * self.report_partner.proj[i](flat)
        return denoiser.proj_out(F.silu(denoiser.norm_out(h)))


# ---------------------------------------------------------------------------------------------------- generators


@dataclass
class Generators:
    """The frozen multi-prompt generators: view UNets with their DDPM scheduler configs, the report denoiser with its
    scheduler config and manifest (latent scale, VAE), and the shared prompt width ``dim``."""

    unets: dict
    image_schedulers: dict
    image_manifests: dict
    denoiser: ReportDenoiser
    report_scheduler: object
    report_manifest: dict
    report_dir: Path
    dim: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        unet = self.unets["frontal"]
        size = unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (int(unet.config.in_channels), *size)

    def scheduler(self, modality: str):
        return self.report_scheduler if modality == "report" else self.image_schedulers[modality]

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {**self.unets, "report": self.denoiser}


def load_generators(frontal_dir: Path | str, lateral_dir: Path | str, report_dir: Path | str) -> Generators:
    """The three multi-prompt generators (rules train_medcodi_ldm, train_report_diffusion), frozen, in eval mode."""
    from diffusers import DDPMScheduler

    from cxrgen.medcodi.ldm import load_view_ldm
    from cxrgen.medcodi.text_diffusion import load_report_diffusion

    unets, schedulers, manifests = {}, {}, {}
    for view, path in (("frontal", frontal_dir), ("lateral", lateral_dir)):
        unet, scheduler_config, info = load_view_ldm(path)
        if info["view"] != view:
            raise ValueError(f"{path} holds the {info['view']} LDM, expected the {view} one")
        unets[view], schedulers[view], manifests[view] = unet, DDPMScheduler.from_config(scheduler_config), info
    denoiser, report_scheduler_config, report_manifest = load_report_diffusion(report_dir)
    dims = {int(manifests["frontal"]["embedding_dim"]), int(manifests["lateral"]["embedding_dim"]),
            int(report_manifest["cond_dim"])}
    if len(dims) != 1:
        raise ValueError(f"the generators are conditioned in different prompt widths {sorted(dims)}")
    if unets["frontal"].config.sample_size != unets["lateral"].config.sample_size:
        raise ValueError("the frontal and lateral LDMs differ in latent size")
    for module in (*unets.values(), denoiser):
        module.eval().requires_grad_(False)
    return Generators(unets=unets, image_schedulers=schedulers, image_manifests=manifests, denoiser=denoiser,
                      report_scheduler=DDPMScheduler.from_config(report_scheduler_config),
                      report_manifest=report_manifest, report_dir=Path(report_dir), dim=dims.pop())


def predict(generators: Generators, joint: JointAlignment | None, modality: str, x: torch.Tensor, t: torch.Tensor,
            cond: torch.Tensor, partner_tokens: torch.Tensor | None) -> torch.Tensor:
    """The frozen generator's output (ε or v) for ``x`` at timesteps ``t`` [B] and conditions ``cond`` [B, D];
    ``partner_tokens`` [B, tokens, D] (with ``joint``) adds the joint layers, None = the plain generator."""
    if modality == "report":
        if partner_tokens is None:
            return generators.denoiser(x, t, cond)
        return joint.report_forward(generators.denoiser, x, t, cond, partner_tokens)
    kwargs = {"partner_tokens": partner_tokens} if partner_tokens is not None else None
    return generators.unets[modality](x, t, encoder_hidden_states=cond[:, None, :],
                                      cross_attention_kwargs=kwargs).sample


# ---------------------------------------------------------------------------------------------------- training


@dataclass
class JointData:
    """Studies with all three modalities: scaled image latents per view [N, C, h, w], scaled report latents [N, d],
    L2-normalised prompt embeddings per modality [N, D], study ids."""

    latents: dict
    embeddings: dict
    study_pids: list[str]

    def __len__(self) -> int:
        return len(self.study_pids)


def complete_studies(studies, embeddings: dict, splits: Sequence[str]):
    """Rows of ``splits`` that have a frontal and a lateral image, a report and all three embeddings, in study_pid
    order, and their positions in ``embeddings``."""
    rows = studies[studies["split"].isin(list(splits)) & studies["frontal_image_id"].notna()
                   & studies["lateral_image_id"].notna()
                   & (studies["report"].fillna("").astype(str).str.strip().str.len() > 0)]
    rows = rows.sort_values("study_pid", kind="stable").reset_index(drop=True)
    position = {str(p): i for i, p in enumerate(embeddings["study_pids"].tolist())}
    missing = [p for p in rows["study_pid"] if str(p) not in position]
    if missing:
        raise KeyError(f"{len(missing)} studies are not in the embeddings, e.g. {missing[:3]}; rerun rule embed_prompts")
    at = np.asarray([position[str(p)] for p in rows["study_pid"]], dtype=np.int64)
    finite = np.ones(len(rows), dtype=bool)
    for m in MODALITIES:
        finite &= np.isfinite(embeddings[m][at]).all(axis=1) if len(at) else finite
    return rows[finite].reset_index(drop=True), at[finite]


def joint_training_data(studies, embeddings: dict, cache, vae, latent_scale: float, splits: Sequence[str]) -> JointData:
    """:class:`JointData` of the complete studies of ``splits``: image latents (posterior means, scaled as the LDMs
    saw them) from ``cache``, report latents = the VAE's posterior means × ``latent_scale``."""
    from cxrgen.icu.inputs import cache_rows, scaled_latents

    rows, at = complete_studies(studies, embeddings, splits)
    latents = {}
    for view in IMAGE_MODALITIES:
        latents[view], _ = scaled_latents(cache, cache_rows(cache, rows[f"{view}_image_id"].tolist()), False)
    latents["report"] = vae.encode_means(rows["report"].astype(str).str.strip().tolist()) * float(latent_scale)
    unit = {m: F.normalize(torch.as_tensor(embeddings[m][at], dtype=torch.float32), dim=-1) for m in MODALITIES}
    return JointData(latents=latents, embeddings=unit, study_pids=rows["study_pid"].astype(str).tolist())


def pair_at(step: int) -> tuple[str, str]:
    """Round robin over :data:`PAIRS`."""
    return PAIRS[step % len(PAIRS)]


class JointTrainer:
    """Optimiser and train step of the :class:`JointAlignment` over frozen :class:`Generators`. Build after
    :func:`cxrgen.train.loop.seed_everything`."""

    def __init__(self, cfg: dict, generators: Generators, data: JointData):
        self.cfg, self.generators, self.data = cfg, generators, data
        self.joint = JointAlignment.for_generators(generators, tokens=int(cfg["tokens"]), hidden=int(cfg["hidden"]))
        self.joint.install(generators.unets)
        self.optimizer = torch.optim.AdamW(self.joint.parameters(), lr=float(cfg["lr"]),
                                           weight_decay=float(cfg["weight_decay"]))

    def loss(self, indices: list[int], step: int, generator: torch.Generator, device: torch.device, ctx=None
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The two flows' objectives for step ``step``'s pair; draws (s, CFG drop, noise of the pair's first then
        second modality) for the global batch from ``generator`` and keeps this rank's rows."""
        world_size = ctx.world_size if ctx is not None else 1
        mine = ctx.local if ctx is not None else (lambda drawn: drawn)
        n = len(indices) * world_size
        pair = pair_at(step)
        s = mine(torch.rand(n, generator=generator))
        drop = mine(torch.rand(n, generator=generator) < float(self.cfg["cfg_dropout"]))
        cond = self.data.embeddings[remaining(pair)][indices]
        cond = torch.where(drop[:, None], torch.zeros_like(cond), cond).to(device)
        noisy, t, noise = {}, {}, {}
        for m in pair:
            z = self.data.latents[m][indices]
            noise[m] = mine(torch.randn((n, *z.shape[1:]), generator=generator))
            scheduler = self.generators.scheduler(m)
            t[m] = (s * scheduler.config.num_train_timesteps).long().clamp(max=scheduler.config.num_train_timesteps - 1)
            noisy[m] = scheduler.add_noise(z, noise[m], t[m])
        # V sees t_m / T_m, as in sampling (:func:`sample_pair`)
        tokens = {m: self.joint.env[m](noisy[m].to(device), (t[m].float() / self.generators.scheduler(m).config
                                                             .num_train_timesteps).to(device)) for m in pair}
        losses = {}
        for m, partner in (pair, pair[::-1]):
            out = predict(self.generators, self.joint, m, noisy[m].to(device), t[m].to(device), cond, tokens[partner])
            target = diffusion_target(self.generators.scheduler(m), self.data.latents[m][indices], noise[m], t[m])
            losses[m] = F.mse_loss(out.float(), target.to(device))
        total = sum(losses.values())
        return total, {"loss": float(total.detach()), **{f"loss_{SHORT[m]}_{'+'.join(SHORT[p] for p in pair)}":
                                                         float(v.detach()) for m, v in losses.items()}}

    def train_step(self, indices: list[int], ctx) -> dict[str, float]:
        loss, metrics = self.loss(indices, ctx.step, ctx.generator, ctx.device, ctx=ctx)
        metrics["grad_norm"] = ctx.backward_step(loss, self.joint, self.optimizer)
        return metrics

    def fit(self, loop, state_dir: Path, *, on_log=None, extra_state: dict | None = None):
        from cxrgen.train.loop import index_batches, run_training

        return run_training(loop, modules={"joint": self.joint}, optimizers={"joint": self.optimizer},
                            loader_for=index_batches(loop, len(self.data), int(self.cfg["batch_size"])),
                            train_step=self.train_step, state_dir=Path(state_dir), on_log=on_log,
                            extra_state=extra_state, desc="train_joint_alignment", distributed_ready=True)


def write_manifest(directory: Path, *, final_dir: Path, generator_dirs: dict, extra: dict | None = None) -> Path:
    """``joint_alignment.json``: the generators it was trained against (paths relative to the published dir)."""
    import os

    payload = {"method": "MedCoDi-M (XGeM) cross-modal latent alignment, paper §2.3",
               "generators": {m: os.path.relpath(Path(p).resolve(), Path(final_dir).resolve())
                              for m, p in generator_dirs.items()}, "pairs": [list(p) for p in PAIRS],
               **(extra or {})}
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(payload, indent=1))
    return path


def load_joint(model_dir: Path | str, generators: Generators) -> JointAlignment:
    """The trained :class:`JointAlignment` of rule train_joint_alignment, installed into ``generators``' UNets."""
    from cxrgen.models.saving import load_strict

    model_dir = Path(model_dir)
    if not (model_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"{model_dir} has no {MANIFEST}; rule train_joint_alignment writes it")
    joint = load_strict(JointAlignment, model_dir / "alignment", "rule train_joint_alignment writes it").eval()
    joint.requires_grad_(False)
    joint.install(generators.unets)
    return joint


# ---------------------------------------------------------------------------------------------------- sampling


@dataclass
class PairSettings:
    steps: int = 50
    image_guidance: float = 7.5
    image_eta: float = 1.0
    report_guidance: float = 7.5
    report_eta: float = 0.0

    def guidance(self, modality: str) -> float:
        return self.report_guidance if modality == "report" else self.image_guidance

    def eta(self, modality: str) -> float:
        return self.report_eta if modality == "report" else self.image_eta


def _shape(generators: Generators, modality: str) -> tuple[int, ...]:
    return (int(generators.denoiser.config.latent_dim),) if modality == "report" else generators.image_shape


def _guided(generators, joint, modality, x, t, cond, tokens, guidance: float) -> torch.Tensor:
    """Classifier-free guidance against the zero condition, evaluated as the single-flow samplers do (images:
    one doubled batch [null, cond]; reports: two calls). Both branches see the partner tokens."""
    tt = torch.full((len(x),), int(t), dtype=torch.long)
    if guidance == 1.0:
        return predict(generators, joint, modality, x, tt, cond, tokens)
    null = torch.zeros_like(cond)
    if modality == "report":
        out = predict(generators, joint, modality, x, tt, cond, tokens)
        out_null = predict(generators, joint, modality, x, tt, null, tokens)
        return out_null + guidance * (out - out_null)
    doubled = None if tokens is None else torch.cat([tokens, tokens])
    out = predict(generators, joint, modality, torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([null, cond]),
                  doubled)
    out_null, out_cond = out.chunk(2)
    return out_null + guidance * (out_cond - out_null)


@torch.no_grad()
def sample_pair(generators: Generators, joint: JointAlignment | None, pair: Sequence[str], conditions: torch.Tensor,
                seeds: dict[str, Sequence[int]], settings: PairSettings, *, use_joint: bool = True) -> dict:
    """Scaled latents of both modalities of ``pair`` for conditions [B, D], one seed per sample and modality
    (``seeds[m]``; every sample owns its generators, so a sample does not depend on its batch). ``use_joint``: the
    flows attend to each other's current V tokens at every step; False (or ``joint`` None): independent sampling with
    the same seeds."""
    conditions = torch.as_tensor(conditions, dtype=torch.float32)
    use_joint = use_joint and joint is not None
    rngs = {m: [torch.Generator().manual_seed(int(s)) for s in seeds[m]] for m in pair}
    for m in pair:
        if len(rngs[m]) != len(conditions):
            raise ValueError(f"{len(rngs[m])} {m} seeds for {len(conditions)} conditions")
    x = {m: torch.stack([torch.randn(_shape(generators, m), generator=g) for g in rngs[m]]) for m in pair}
    schedulers = {}
    for m in pair:
        schedulers[m] = make_ddim_scheduler(generators.scheduler(m).config, settings.steps)
        schedulers[m].set_timesteps(int(settings.steps))
    for i in range(int(settings.steps)):
        t = {m: schedulers[m].timesteps[i] for m in pair}
        tokens = {m: None for m in pair}
        if use_joint:
            for m in pair:
                total = generators.scheduler(m).config.num_train_timesteps
                tokens[m] = joint.env[m](x[m], torch.full((len(x[m]),), float(t[m]) / total))
        out = {m: _guided(generators, joint if use_joint else None, m, x[m], t[m], conditions,
                          tokens[partner], settings.guidance(m)) for m, partner in (pair, pair[::-1])}
        for m in pair:
            eta = settings.eta(m)
            noise = torch.stack([torch.randn(_shape(generators, m), generator=g) for g in rngs[m]]) if eta > 0 else None
            x[m] = schedulers[m].step(out[m], t[m], x[m], eta=eta, variance_noise=noise).prev_sample
    return x


def pair_seed(seed: int, study_pid: str, direction: str, modality: str) -> int:
    """A sample seed from (config seed, study, direction, generated modality), stable across runs and machines."""
    import hashlib

    digest = hashlib.sha256(f"{seed}|{study_pid}|{direction}|{modality}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] embedding matrices."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1).numpy().astype(np.float64)


def hamming_counts(a: np.ndarray, b: np.ndarray) -> dict[str, int]:
    """Histogram {distance: count} of the row-wise Hamming distances of two binary [N, K] matrices."""
    distances = (np.asarray(a, dtype=bool) != np.asarray(b, dtype=bool)).sum(axis=1)
    values, counts = np.unique(distances, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


def mean_of_counts(counts: dict[str, int]) -> float:
    total = sum(counts.values())
    return float(sum(int(k) * c for k, c in counts.items()) / total) if total else math.nan
