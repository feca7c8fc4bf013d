"""LDM training throughput with cached latents (rule cache_latents) vs encoding images with the AE on the fly.

    .venv/bin/python benchmarks/bench_ldm_latents.py [--steps 6] [--batch 16]

Demo sizes: 64 px images, AutoencoderKL blocks (32,64,128), f=4 → 16x16x3 latents; the tiny text-conditioned UNet of
bench_sampling.py; text tokens from a fixed random context (same cost in both variants). Both variants do the same
optimizer step; the on-the-fly variant adds vae.encode (no grad) + posterior sampling. Prints steps/s and the ratio
against the cached-latents baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cxrgen.models.autoencoder import build_autoencoder
from cxrgen.models.diffusion import build_unet, denoise, make_train_scheduler

DEMO_UNET = {"base_channels": 64, "channel_mult": [1, 2, 2], "layers_per_block": 1,
             "attention_downsample_factors": [2, 4], "attention_head_dim": 32, "norm_num_groups": 32}
DEMO_AE = {"block_out_channels": [32, 64, 128], "layers_per_block": 1, "latent_channels": 3, "norm_num_groups": 32,
           "mid_block_attention": False}
SCHEDULE = {"timesteps": 1000, "beta_start": 0.0015, "beta_end": 0.0295, "beta_schedule": "scaled_linear"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    vae = build_autoencoder(DEMO_AE, 64).eval().requires_grad_(False)
    unet = build_unet(DEMO_UNET, latent_channels=3, sample_size=16, cross_attention_dim=256)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    scheduler = make_train_scheduler(SCHEDULE)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 1, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        cached_mean, cached_std = posterior.mean.clone(), posterior.std.clone()
    context = torch.randn(args.batch, 77, 256, generator=g)
    mask = torch.ones(args.batch, 77, dtype=torch.bool)

    def step(on_the_fly: bool) -> None:
        if on_the_fly:
            with torch.no_grad():
                dist = vae.encode(images).latent_dist
                mean, std = dist.mean, dist.std
        else:
            mean, std = cached_mean, cached_std
        z = mean + std * torch.randn(mean.shape, generator=g)
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        noise = torch.randn(z.shape, generator=g)
        loss = F.mse_loss(denoise(unet, scheduler.add_noise(z, noise, t), t, context, mask), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    variants = {"cached latents": False, "AE on the fly": True}
    seconds = dict.fromkeys(variants, 0.0)
    for fly in variants.values():
        step(fly)  # warm-up
    for _ in range(args.steps):  # interleaved, so load changes on a shared machine hit both variants alike
        for name, fly in variants.items():
            started = time.perf_counter()
            step(fly)
            seconds[name] += time.perf_counter() - started
    results = {name: args.steps / seconds[name] for name in variants}
    base = results["cached latents"]
    print(f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M, AE {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M, "
          f"batch {args.batch}, 64 px -> 16x16x3 ({torch.get_num_threads()} threads)")
    for name, rate in results.items():
        print(f"{name:15s}: {rate:6.3f} steps/s ({1 / rate:6.3f} s/step)  ratio vs cached: {rate / base:.2f}x")
    print(f"cached latents are {base / results['AE on the fly']:.2f}x faster per step")


if __name__ == "__main__":
    main()
