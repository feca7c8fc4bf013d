"""Sampling cost: DDIM 50 steps vs DDPM 1000 steps, wall time per image, on the tiny demo-size text-conditioned UNet.

    .venv/bin/python benchmarks/bench_sampling.py [--images 4] [--ddpm-steps-timed 1000] [--guidance 4]

Both samplers run the same untrained UNet (16x16x3 latents = 64 px with f=4; base 64, mults 1,2,2, attention
at 8² and 4², head dim 32) with classifier-free guidance on the same batch. ``--ddpm-steps-timed N`` < 1000 times the first N
DDPM steps and extrapolates linearly (said so in the output). Prints DDPM/DDIM as the ratio against the DDIM baseline.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import DDPMScheduler

from cxrgen.models.diffusion import LatentSampler, SamplerSettings, build_unet, denoise, make_train_scheduler

DEMO_UNET = {"base_channels": 64, "channel_mult": [1, 2, 2], "layers_per_block": 1,
             "attention_downsample_factors": [2, 4], "attention_head_dim": 32, "norm_num_groups": 32}
SCHEDULE = {"timesteps": 1000, "beta_start": 0.0015, "beta_end": 0.0295, "beta_schedule": "scaled_linear"}


class RandomTextEncoder:
    """Fixed random token embeddings (the text tower's cost is negligible next to the UNet's)."""

    dim, context_length = 256, 77

    def encode(self, texts):
        g = torch.Generator().manual_seed(0)
        return torch.randn(len(texts), self.context_length, self.dim, generator=g), \
            torch.ones(len(texts), self.context_length, dtype=torch.bool)


@torch.no_grad()
def ddpm_sample(unet, encoder, n: int, guidance: float, timed_steps: int) -> tuple[float, int]:
    scheduler = DDPMScheduler.from_config(make_train_scheduler(SCHEDULE).config, steps_offset=0)
    scheduler.set_timesteps(1000)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 16, 16, generator=g)
    tokens, mask = encoder.encode([""] * n)
    context, masks = torch.cat([tokens, tokens]), torch.cat([mask, mask])
    started = time.perf_counter()
    steps = 0
    for t in scheduler.timesteps[:timed_steps]:
        eps_null, eps_cond = denoise(unet, torch.cat([x, x]), t, context, masks).chunk(2)
        x = scheduler.step(eps_null + guidance * (eps_cond - eps_null), t, x, generator=g).prev_sample
        steps += 1
    return time.perf_counter() - started, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--ddpm-steps-timed", type=int, default=1000)
    args = parser.parse_args()
    torch.manual_seed(0)
    encoder = RandomTextEncoder()
    unet = build_unet(DEMO_UNET, latent_channels=3, sample_size=16, cross_attention_dim=encoder.dim).eval()
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    sampler = LatentSampler(unet, make_train_scheduler(SCHEDULE).config, encoder.encode)
    sampler.sample(["warm-up"], [0], SamplerSettings(steps=2, guidance_scale=args.guidance))
    started = time.perf_counter()
    sampler.sample(["x"] * args.images, list(range(args.images)),
                   SamplerSettings(steps=args.ddim_steps, eta=1.0, guidance_scale=args.guidance))
    ddim = (time.perf_counter() - started) / args.images
    seconds, steps = ddpm_sample(unet, encoder, args.images, args.guidance, args.ddpm_steps_timed)
    ddpm = seconds * 1000 / steps / args.images
    note = "" if steps == 1000 else f" (extrapolated from {steps} timed steps)"
    print(f"UNet {params:.2f}M params, 16x16x3 latents, batch {args.images}, CFG {args.guidance} "
          f"({torch.get_num_threads()} threads)")
    print(f"DDIM {args.ddim_steps:4d} steps: {ddim:8.3f} s per image  (baseline)")
    print(f"DDPM 1000 steps: {ddpm:8.3f} s per image{note}")
    print(f"ratio DDPM/DDIM: {ddpm / ddim:.1f}x (step-count ratio {1000 / args.ddim_steps:.0f}x)")


if __name__ == "__main__":
    main()
