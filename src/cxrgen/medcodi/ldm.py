"""MedCoDi-M / XGeM image LDMs (arXiv 2501.04614 §2.2, §3.2.2): one latent diffusion model per view (frontal,
lateral) on the shared autoencoder's latents, conditioned by multi-prompt training (:mod:`cxrgen.medcodi.prompting`)
on the frozen prompt encoders' embeddings (``results/medcodi/embeddings.npz``).

The condition enters the UNet as ONE cross-attention token of the embedding width D (the pooled prompt vector, as the
paper's code feeds ``text_features.unsqueeze(1)``). Training reuses :class:`cxrgen.train.latent_diffusion.
LatentDiffusionTrainer` with a :class:`~cxrgen.medcodi.prompting.MultiPromptConditioner` hook and a cosine learning
rate with linear warm-up (code: ``get_cosine_schedule_with_warmup``, 20 % warm-up).

A trained model directory (rule ``train_medcodi_ldm``, ``results/medcodi/ldm/{view}-{prompting}/``)::

    unet/               diffusers UNet2DConditionModel (EMA weights), cross_attention_dim = D
    scheduler/          DDPMScheduler (Stable Diffusion schedule β 0.00085→0.012 "scaled_linear", ε-prediction)
    medcodi_ldm.json    view, prompting, prompt modalities, embedding_dim, null condition, latent shape, scaling
                        factor, relative path to the autoencoder
    metrics.json, loss.png

Sampling (:func:`sample_view`): DDIM with classifier-free guidance against the zero null condition; every sample owns
a generator seeded with its seed, so a (condition, seed) pair gives the same latent in any batch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrgen.medcodi.prompting import MultiPromptConditioner, null_condition, prompt_modalities
from cxrgen.models.diffusion import LatentSampler, SamplerSettings, load_unet
from cxrgen.train.latent_diffusion import LatentDiffusionTrainer

MANIFEST_FILE = "medcodi_ldm.json"
MODEL_NAME = "medcodi_m_view_ldm"


# ---------------------------------------------------------------------------------------------------- data


def load_embeddings(path: Path | str) -> dict[str, np.ndarray]:
    """``embeddings.npz`` of rule embed_prompts: ``study_pids`` [N] and ``frontal``/``lateral``/``report`` [N, D]
    (float32, NaN rows where the study lacks the modality)."""
    with np.load(path, allow_pickle=False) as data:
        missing = {"study_pids", "frontal", "lateral", "report"} - set(data.files)
        if missing:
            raise KeyError(f"{path} lacks {sorted(missing)}; it must come from rule embed_prompts")
        found = {k: data[k] for k in ("study_pids", "frontal", "lateral", "report")}
    found["study_pids"] = found["study_pids"].astype(str)
    dims = {found[m].shape[1] for m in ("frontal", "lateral", "report")}
    if len(dims) != 1:
        raise ValueError(f"{path}: the modalities' embeddings differ in width {sorted(dims)}")
    return found


@dataclass
class ViewData:
    """Training (or held-out) items of one view LDM: scaled latents of the study's image of that view, their prompt
    embeddings [N, M, D] (NaN = absent) and study ids; ``skipped`` counts studies with the image but no prompt."""

    mean: torch.Tensor
    std: torch.Tensor | None
    embeddings: np.ndarray
    study_pids: list[str]
    skipped_no_prompt: int

    def __len__(self) -> int:
        return len(self.mean)


def view_training_data(studies: pd.DataFrame, embeddings: dict[str, np.ndarray], cache, *, view: str, prompting: str,
                       splits: Sequence[str], with_std: bool) -> ViewData:
    """Studies of ``splits`` that have an image of ``view`` (``{view}_image_id``) and at least one prompt modality
    (multi: the other view or the report; single: the report) with its embedding. Latents from the cache (scaled
    like train_ldm); a study image missing from the cache or a study missing from the embeddings raises."""
    from cxrgen.icu.inputs import cache_rows, scaled_latents

    modalities = prompt_modalities(view, prompting)
    rows = studies[studies["split"].isin(list(splits)) & studies[f"{view}_image_id"].notna()]
    position = {pid: i for i, pid in enumerate(embeddings["study_pids"].tolist())}
    absent = [p for p in rows["study_pid"] if p not in position]
    if absent:
        raise KeyError(f"{len(absent)} studies are not in the embeddings, e.g. {absent[:3]}; the study table and "
                       "embeddings.npz must come from the same run of build_study_table / embed_prompts")
    at = np.asarray([position[p] for p in rows["study_pid"]], dtype=np.int64)
    stacked = np.stack([embeddings[m][at] for m in modalities], axis=1).astype(np.float32)  # [N, M, D]
    has_prompt = np.isfinite(stacked).all(axis=-1).any(axis=1)
    rows, stacked = rows[has_prompt], stacked[has_prompt]
    mean, std = scaled_latents(cache, cache_rows(cache, rows[f"{view}_image_id"].tolist()), with_std)
    return ViewData(mean=mean, std=std, embeddings=stacked, study_pids=rows["study_pid"].tolist(),
                    skipped_no_prompt=int((~has_prompt).sum()))


# ---------------------------------------------------------------------------------------------------- training


def warmup_cosine(warmup_fraction: float, max_steps: int):
    """``lr_schedule`` hook: linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 0 (paper code
    ``get_cosine_schedule_with_warmup(num_warmup_steps=0.2·total)``)."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    def build(optimizer: torch.optim.Optimizer):
        return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=int(warmup_fraction * max_steps),
                                               num_training_steps=max_steps)

    return build


def view_trainer(cfg: dict, data: ViewData, *, view: str, prompting: str) -> LatentDiffusionTrainer:
    """The shared LDM trainer with the multi-prompt conditioner of ``data`` (config section ``medcodi.ldm``). Build
    after :func:`cxrgen.train.loop.seed_everything`."""
    conditioner = MultiPromptConditioner(data.embeddings, prompt_modalities(view, prompting), prompting,
                                         float(cfg["cfg_dropout"]))
    return LatentDiffusionTrainer(cfg, latent_mean=data.mean, latent_std=data.std, texts=[],
                                  conditioner=conditioner, desc=f"train_medcodi_ldm[{view}-{prompting}]",
                                  lr_schedule=warmup_cosine(float(cfg["warmup_fraction"]), int(cfg["max_steps"])))


def manifest(*, view: str, prompting: str, dim: int, latent_shape: list[int], scaling_factor: float,
             ae_dir: Path | str, out_dir: Path | str, extra: dict | None = None) -> dict:
    return {"model": MODEL_NAME, "view": view, "prompting": prompting,
            "prompt_modalities": list(prompt_modalities(view, prompting)), "embedding_dim": int(dim),
            "null_condition": "zero", "latent_shape": list(latent_shape), "scaling_factor": float(scaling_factor),
            "autoencoder": os.path.relpath(Path(ae_dir).resolve(), Path(out_dir).resolve()), **(extra or {})}


def save_view_ldm(trainer: LatentDiffusionTrainer, out_dir: Path, info: dict) -> None:
    """unet/ (the trainer's current weights: copy the EMA in first), scheduler/ and the manifest into ``out_dir``."""
    trainer.unet.save_pretrained(out_dir / "unet")
    trainer.scheduler.save_pretrained(out_dir / "scheduler")
    (out_dir / MANIFEST_FILE).write_text(json.dumps(info, indent=1))


# ---------------------------------------------------------------------------------------------------- sampling


def load_view_ldm(model_dir: Path | str):
    """(UNet in eval mode, the training scheduler's config, manifest) of a ``train_medcodi_ldm`` output; strict."""
    from diffusers import DDPMScheduler

    model_dir = Path(model_dir)
    if not (model_dir / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"{model_dir} is not a MedCoDi-M view LDM (no {MANIFEST_FILE}); run rule "
                                "train_medcodi_ldm")
    info = json.loads((model_dir / MANIFEST_FILE).read_text())
    unet = load_unet(model_dir / "unet")
    return unet, DDPMScheduler.from_pretrained(model_dir / "scheduler").config, info


def _token_encoder(dim: int):
    def encode(vectors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in vectors])[:, None, :]
        if tokens.shape[-1] != dim:
            raise ValueError(f"conditions have width {tokens.shape[-1]}, the model expects {dim}")
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.long)

    return encode


@torch.no_grad()
def sample_view(model_dir: Path | str, conditions: torch.Tensor | np.ndarray, seeds: Sequence[int], steps: int = 50,
                guidance: float = 7.5, *, eta: float = 1.0, batch_size: int | None = None,
                model=None) -> torch.Tensor:
    """Latents [B, C, h, w] (scaled, as the LDM sees them; decode with :func:`cxrgen.models.diffusion.
    decode_latents`) for ``conditions`` [B, D] (combined prompt embeddings, :func:`cxrgen.medcodi.prompting.combine`)
    with one seed each. DDIM ``steps`` with η = ``eta`` and classifier-free guidance ``guidance`` against the zero null
    condition (paper demo: 50 steps, η 1, scale 7.5). ``batch_size`` chunks the work (the result does not depend on
    it up to float rounding); ``model`` = an already loaded ``(unet, scheduler_config, manifest)``."""
    unet, scheduler_config, info = model if model is not None else load_view_ldm(model_dir)
    conditions = torch.as_tensor(np.asarray(conditions, dtype=np.float32))
    if conditions.ndim != 2 or len(conditions) != len(seeds):
        raise ValueError(f"conditions must be [B, D] with one seed per row; got {tuple(conditions.shape)} and "
                         f"{len(seeds)} seeds")
    dim = int(info["embedding_dim"])
    sampler = LatentSampler(unet, scheduler_config, _token_encoder(dim), null_prompt=null_condition(dim))
    settings = SamplerSettings(steps=int(steps), eta=float(eta), guidance_scale=float(guidance))
    chunk = int(batch_size) if batch_size else len(seeds)
    parts = [sampler.sample(list(conditions[i:i + chunk]), list(seeds[i:i + chunk]), settings)
             for i in range(0, len(seeds), chunk)]
    return torch.cat(parts).cpu()
