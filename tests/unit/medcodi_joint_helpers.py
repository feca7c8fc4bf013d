"""A tiny MedCoDi-M generator set for the joint-generation tests: the view-LDM helpers' studies, embeddings and latent
cache with a real (untrained) tiny autoencoder, 2-step multi-prompt LDMs per view, the report VAE and report diffusion
model of the text helpers' tiny sizes, and the tiny ``medcodi.joint`` config as the rules see it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from evaluate_helpers import narrowed
from medcodi_ldm_helpers import medcodi_ldm_cfg, write_medcodi_inputs
from medcodi_text_helpers import medcodi_cfg

from cxrgen.config import validate_config
from cxrgen.hashing import dir_digest
from cxrgen.stages.train_medcodi_ldm import train_medcodi_ldm
from cxrgen.stages.train_report_diffusion import train_report_diffusion
from cxrgen.stages.train_text_vae import train_text_vae

RESOLUTION = 16  # tiny autoencoder: 3x8x8 latents <-> 16 px images


def joint_cfg(**overrides) -> dict:
    """A validated tiny ``medcodi.joint`` (overrides win)."""
    tiny = {"tokens": 2, "hidden": 16, "lr": 1e-2, "batch_size": 4, "max_steps": 3, "checkpoint_every": 1,
            "log_every": 1, "sampling": {"steps": 3, "image_guidance": 2.0, "report_guidance": 2.0},
            "evaluation": {"bootstrap_resamples": 50}}
    section = validate_config({"sources": {"nih": {}}, "medcodi": {"joint": {**tiny, **overrides}}})["medcodi"]
    return section["joint"]


def rule_cfg(rule: str, **overrides) -> dict:
    """What the workflow hands ``rule`` (workflow/config_sections.yaml) of the tiny ``medcodi.joint``."""
    return narrowed({"joint": joint_cfg(**overrides)}, rule)["joint"]


def _tiny_autoencoder(ae_dir, latents_dir) -> None:
    """A real (untrained) AutoencoderKL in place of the helpers' stand-in, and the cache re-stamped with its digest."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=3, block_out_channels=(8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=RESOLUTION, scaling_factor=0.5)
    (ae_dir / "config.json").unlink()
    vae.save_pretrained(ae_dir, safe_serialization=True)
    meta = json.loads((latents_dir / "meta.json").read_text())
    meta["autoencoder_sha256"] = dir_digest(ae_dir)
    (latents_dir / "meta.json").write_text(json.dumps(meta))


def build_generators(root: Path) -> dict:
    """Studies, embeddings, latent cache and real tiny AE; 2-step multi-prompt LDMs per view, report VAE and report
    diffusion model under ``root``; returns their paths."""
    paths = write_medcodi_inputs(root)
    _tiny_autoencoder(paths["ae"], paths["latents"])
    for view in ("frontal", "lateral"):
        paths[view] = root / f"ldm-{view}"
        train_medcodi_ldm(studies=paths["studies"], embeddings=paths["embeddings"], latents_dir=paths["latents"],
                          ae_dir=paths["ae"], cfg=medcodi_ldm_cfg(), view=view, prompting="multi", seed=0,
                          out_dir=paths[view], state_dir=root / f"state-{view}")
    paths["vae"], paths["report"] = root / "text_vae", root / "report"
    train_text_vae(studies=paths["studies"], cfg=medcodi_cfg("text_vae"), seed=0, out_dir=paths["vae"],
                   state_dir=root / "state-vae")
    train_report_diffusion(studies=paths["studies"], embeddings=paths["embeddings"], vae_dir=paths["vae"],
                           cfg=medcodi_cfg("report_diffusion", max_steps=2, val_max_items=1), prompting="multi",
                           seed=0, out_dir=paths["report"], state_dir=root / "state-report")
    paths["root"] = root
    return paths
