"""Rule ``train_autoencoder``: train the KL autoencoder on the store's train split, compute the latent scale factor,
evaluate PSNR/SSIM on the val split, write the model directory."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrgen.models.autoencoder import (
    AutoencoderObjective,
    FeaturePerceptualLoss,
    PatchDiscriminator,
    build_autoencoder,
    clip_perceptual_network,
    config_summary,
    downsampling_factor,
    latent_scale_factor,
    reconstruction_metrics,
    save_autoencoder,
)
from cxrgen.report.figures import plot_loss_history
from cxrgen.train.collectives import global_batch_norm, mean_over_ranks
from cxrgen.train.data import StoreImages, select_rows
from cxrgen.train.job import TrackedJob, Trained, tracked_training, write_json
from cxrgen.train.loop import LoopResult, StepBatchSampler, run_training, seed_everything
from cxrgen.train.sections import loop_config
from cxrgen.train.tracking import config_digest

log = logging.getLogger(__name__)

HISTORY_FILE = "history.jsonl"


def train_autoencoder(*, index_path: Path | str, store_root: Path | str, resolution: int, cfg: dict, seed: int,
                      state_dir: Path | str, out_dir: Path | str, tracking_json: Path | str | None, job_name: str,
                      clip_dir: Path | str | None = None, perceptual_net: FeaturePerceptualLoss | None = None,
                      stop_after_steps: int | None = None) -> dict:
    """Train (or resume) the autoencoder and write ``out_dir`` atomically (via ``<out_dir>.tmp``).

    Inputs: the unified index + store (train split for training and the scale factor, val split for metrics, both
    restricted to ``cfg["views"]``), images at ``resolution`` px; ``cfg`` = the validated ``autoencoder`` section;
    ``clip_dir`` = output of rule ``train_clip``, required iff ``cfg["perceptual"]["kind"] == "clip"``
    (``perceptual_net`` overrides it, for library users and tests); ``state_dir`` = resumable checkpoints (not an
    output); ``tracking_json`` = the file written by ``init_tracking`` (None: no MLflow).
    Outputs in ``out_dir``: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (diffusers ``save_pretrained``;
    ``config.scaling_factor`` = 1/std of training latents), ``metrics.json``, ``recon_grid.png`` (val originals above
    reconstructions), ``loss_curve.png``. Returns the metrics dict. ``stop_after_steps`` simulates a kill (tests).

    Data parallel: run on every rank by :func:`cxrgen.train.distributed.launch` (``launch(train_autoencoder, n,
    **kwargs)``; the arguments must pickle) or torchrun, the ranks train one model together, each on its slice of
    every global batch of ``batch_size`` images: the posterior samples are drawn for the global batch, the
    discriminator's batch norm uses the global batch's statistics and the adaptive GAN weight the global batch's
    gradients, so the weights are those of a single-process run (up to float summation order). Rank 0 alone opens
    the MLflow run, computes the scale factor and the validation metrics and writes ``out_dir``; the other ranks
    return ``{"rank": r, "steps": n}`` once training is done.
    """
    state_dir, out_dir = Path(state_dir), Path(out_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    index = pd.read_parquet(index_path)
    views = list(cfg["views"]) or None
    train_rows = select_rows(index, splits=["train"], views=views)
    val_rows = select_rows(index, splits=["val"], views=views)
    train_set = StoreImages(store_root, train_rows, resolution)
    loop_cfg = loop_config(cfg, seed, stop_after_steps=stop_after_steps)
    device = loop_cfg.resolved_device()
    world = loop_cfg.resolved_world()

    seed_everything(seed)
    vae = build_autoencoder(cfg, resolution)
    modules: dict[str, torch.nn.Module] = {"vae": vae}
    betas = tuple(cfg["adam_betas"])
    optimizers = {"vae": torch.optim.Adam(vae.parameters(), lr=cfg["lr"], betas=betas)}
    discriminator = None
    if cfg["gan"]["enabled"]:
        discriminator = PatchDiscriminator(1, cfg["gan"]["channels"], cfg["gan"]["layers"])
        if world.world_size > 1:  # its batch norm normalises by the global batch's statistics, as one process does
            global_batch_norm(discriminator)
        modules["discriminator"] = discriminator
        optimizers["discriminator"] = torch.optim.Adam(discriminator.parameters(), lr=cfg["lr"], betas=betas)
    perceptual = _perceptual(cfg, clip_dir, perceptual_net)
    if perceptual is not None:
        perceptual.to(device)
    objective = AutoencoderObjective(
        kl_weight=cfg["kl_weight"], perceptual=perceptual, perceptual_weight=cfg["perceptual"]["weight"],
        discriminator=discriminator, gan_start=cfg["gan"]["start_step"], gan_weight=cfg["gan"]["weight"],
        adaptive_weight=cfg["gan"]["adaptive_weight"],
        gradient_mean=mean_over_ranks if world.world_size > 1 else None)

    def loader_for(start: int):
        sampler = StepBatchSampler(len(train_set), cfg["batch_size"], seed=seed, start_step=start,
                                   max_steps=loop_cfg.max_steps, rank=world.rank, world_size=world.world_size)
        return iter(torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=0))

    def train_step(batch: dict, ctx) -> dict[str, float]:
        x = batch["image"].to(ctx.device)
        with ctx.autocast():
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(_posterior_sample(posterior, ctx)).sample
            loss, metrics = objective.generator_loss(x, recon, posterior, ctx.step, vae.decoder.conv_out.weight)
        # each backward step sums its module's gradients over the ranks (the discriminator's stray gradients from
        # the generator loss are cleared by its own step's zero_grad)
        metrics["grad_norm"] = ctx.backward_step(loss, vae, optimizers["vae"])
        if objective.gan_active(ctx.step):
            with ctx.autocast():
                d_loss, d_metrics = objective.discriminator_loss(x, recon)
            d_metrics["disc_grad_norm"] = ctx.backward_step(d_loss, discriminator, optimizers["discriminator"])
            metrics.update(d_metrics)
        return metrics

    def fit(job: TrackedJob) -> LoopResult:
        def on_log(metrics: dict[str, float], step: int) -> None:
            with open(state_dir / HISTORY_FILE, "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
            job.log_metrics(metrics, step, prefix="train/")

        return run_training(loop_cfg, modules=modules, optimizers=optimizers, loader_for=loader_for,
                            train_step=train_step, state_dir=state_dir, on_log=on_log, extra_state=job.extra,
                            desc="autoencoder", distributed_ready=True)

    def publish(trained: Trained) -> dict:  # rank 0 alone computes the scale factor, validates and writes
        job, result = trained.job, trained.result
        vae.eval()
        scale = _scale_factor(vae, train_set, cfg["scale_sample_size"], cfg["batch_size"], seed, device)
        vae.register_to_config(scaling_factor=scale)
        val_set = StoreImages(store_root, val_rows, resolution)
        val = _validate(vae, val_set, cfg["val_max_images"], cfg["batch_size"], device, cfg["grid_images"])
        factor = downsampling_factor(vae)
        metrics = {
            "steps": result.steps_done, "resumed_from": result.resumed_from, "scaling_factor": scale,
            "val_psnr": val["psnr"], "val_ssim": val["ssim"], "val_l1": val["l1"], "n_val_images": val["n"],
            "n_train_images": len(train_set), "resolution": resolution,
            "latent_shape": [vae.config.latent_channels, resolution // factor, resolution // factor],
            "parameters": config_summary(vae)["parameters"],
            "seconds_per_step_this_run": trained.seconds_per_step,
            "mlflow_run_id": job.run_id, "world_size": trained.world.world_size,
        }
        tmp = job.staging(out_dir)
        save_autoencoder(vae.cpu(), tmp)
        write_json(tmp / "metrics.json", metrics)
        _save_grid(val["grid_original"], val["grid_recon"], tmp / "recon_grid.png")
        plot_loss_history(_read_history(state_dir / HISTORY_FILE), tmp / "loss_curve.png", title="",
                          ylabel="L1", key="l1")
        job.log_metrics({"val/psnr": val["psnr"], "val/ssim": val["ssim"], "val/l1": val["l1"],
                         "scaling_factor": scale}, result.steps_done)
        job.publish(tmp, out_dir, artifacts=["recon_grid.png", "loss_curve.png", "metrics.json"])
        return metrics

    params = {"autoencoder": cfg, "resolution": resolution, "seed": seed, "n_train": len(train_rows),
              "n_val": len(val_rows)}
    return tracked_training(tracking_json, job_name, world=world, params=params, state_dir=state_dir,
                            tags={"snakemake.rule": "train_autoencoder", "config.sha256": config_digest(cfg)},
                            fit=fit, publish=publish)


def _posterior_sample(posterior, ctx) -> torch.Tensor:
    """z = mean + std·ε with ε drawn from the loop's generator for the global batch (this rank keeps its rows): the
    draw of diffusers' ``posterior.sample(generator)`` in a single process."""
    n = posterior.mean.shape[0] * ctx.world_size
    eps = torch.randn((n, *posterior.mean.shape[1:]), generator=ctx.generator, dtype=posterior.mean.dtype)
    return posterior.mean + posterior.std * ctx.local(eps).to(posterior.mean.device)


def _read_history(path: Path) -> list[dict]:
    """The logged training points (a resumed run re-logs the steps after its last checkpoint; plots keep the last)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _perceptual(cfg: dict, clip_dir, perceptual_net) -> FeaturePerceptualLoss | None:
    if perceptual_net is not None:
        return perceptual_net
    if cfg["perceptual"]["kind"] == "none" or cfg["perceptual"]["weight"] == 0:
        return None
    if clip_dir is None:
        raise ValueError("autoencoder.perceptual.kind = 'clip' needs the CLIP model directory (clip_dir) of rule "
                         "train_clip; set autoencoder.perceptual.kind: none to train without a perceptual term")
    return clip_perceptual_network(clip_dir)


@torch.no_grad()
def encode_posteriors(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of a batch of images in [-1, 1] (float32, on the images' device)."""
    posterior = vae.encode(images).latent_dist
    return posterior.mean.float(), posterior.std.float()


def _scale_factor(vae, dataset: StoreImages, sample_size: int, batch_size: int, seed: int,
                  device: torch.device) -> float:
    chosen = np.sort(np.random.default_rng([seed, 7]).permutation(len(dataset))[: min(sample_size, len(dataset))])
    means, stds = [], []
    for start in range(0, len(chosen), batch_size):
        batch = torch.stack([dataset.image(int(i)) for i in chosen[start : start + batch_size]]).to(device)
        mean, std = encode_posteriors(vae, batch)
        means.append(mean.cpu())
        stds.append(std.cpu())
    return latent_scale_factor(torch.cat(means), torch.cat(stds))


@torch.no_grad()
def _validate(vae, dataset: StoreImages, max_images: int, batch_size: int, device: torch.device,
              grid_images: int = 8) -> dict:
    n = min(max_images, len(dataset))
    if n == 0:
        raise ValueError("the validation split is empty: cannot report PSNR/SSIM")
    psnr, ssim, l1 = [], [], []
    grid_original = grid_recon = None
    for start in range(0, n, batch_size):
        x = torch.stack([dataset.image(i) for i in range(start, min(n, start + batch_size))]).to(device)
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        scores = reconstruction_metrics(x, recon)
        psnr.append(scores["psnr"].cpu())
        ssim.append(scores["ssim"].cpu())
        l1.append((x - recon).abs().flatten(1).mean(1).cpu())
        if grid_original is None:
            grid_original, grid_recon = x[:grid_images].cpu(), recon[:grid_images].cpu()
    psnr_all = torch.cat(psnr)
    return {"psnr": float(psnr_all[torch.isfinite(psnr_all)].mean()) if torch.isfinite(psnr_all).any() else math.inf,
            "ssim": float(torch.cat(ssim).mean()), "l1": float(torch.cat(l1).mean()), "n": n,
            "grid_original": grid_original, "grid_recon": grid_recon}


def _save_grid(original: torch.Tensor, recon: torch.Tensor, path: Path) -> None:
    """Two rows: originals on top, reconstructions below, 2-px white gutters."""
    from PIL import Image

    n, _, h, w = original.shape
    gap = 2
    canvas = np.full((2 * h + 3 * gap, n * w + (n + 1) * gap), 255, dtype=np.uint8)
    for row, images in enumerate((original, recon)):
        pixels = ((images[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        for i in range(n):
            top, left = gap + row * (h + gap), gap + i * (w + gap)
            canvas[top : top + h, left : left + w] = pixels[i]
    Image.fromarray(canvas).save(path)
