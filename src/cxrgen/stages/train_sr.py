"""Stage ``train_sr`` / ``finetune_sr``: SR3-style super-resolution (Cheff §5, §7.3.3).

Both workflow rules call :func:`train_sr`; the ``mode`` argument picks the variant:

* ``mode="bicubic"`` (rule ``train_sr``): x_LR = bicubic downsampling of the stored HR image (or the store's low-res
  copy, ``sr.lr_source``); hyperparameters from ``sr.base``.
* ``mode="decoded"`` (rule ``finetune_sr``): x_LR = D(E(x_LR)) through the autoencoder in ``ae_dir`` (posterior mode,
  no latent noise: what the LDM's decoded samples look like); weights initialised from the base model in
  ``init_dir``; hyperparameters from ``sr.finetune``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrgen.models.sr import (
    MODES,
    SRModel,
    build_sr,
    count_parameters,
    diffusion_loss,
    load_sr,
    random_crops,
    resize_bicubic,
    save_sr,
    super_resolve,
)
from cxrgen.report.figures import plot_loss_history
from cxrgen.train.data import StoreImages, select_rows
from cxrgen.train.job import TrackedJob, Trained, tracked_training, write_json
from cxrgen.train.loop import LoopResult, StepBatchSampler, attach_ema, run_training, seed_everything
from cxrgen.train.sections import loop_config

log = logging.getLogger(__name__)


class _LowResMaker:
    """x_LR for a batch of HR images: bicubic (or stored) low-res, optionally passed through the autoencoder."""

    def __init__(self, low_res: int, lr_source: str, autoencoder=None):
        self.low_res, self.lr_source, self.autoencoder = low_res, lr_source, autoencoder

    @torch.no_grad()
    def __call__(self, high: torch.Tensor, stored_low: torch.Tensor | None) -> torch.Tensor:
        low = stored_low if self.lr_source == "store" else resize_bicubic(high, self.low_res)
        if self.autoencoder is not None:
            latents = self.autoencoder.encode(low).latent_dist.mode()
            low = self.autoencoder.decode(latents).sample.clamp(-1.0, 1.0)
        return low


def _load_autoencoder(ae_dir: Path, device: torch.device):
    from cxrgen.models.autoencoder import load_autoencoder

    ae = load_autoencoder(ae_dir)
    ae.eval().requires_grad_(False).to(device)
    return ae


def _batch(images_hr: StoreImages, images_lr: StoreImages | None, indices: list[int]):
    high = torch.stack([images_hr.image(i) for i in indices])
    low = torch.stack([images_lr.image(i) for i in indices]) if images_lr is not None else None
    return high, low


def _to_unit(images: torch.Tensor) -> np.ndarray:
    return ((images.detach().cpu().float().clamp(-1, 1) + 1) / 2).numpy()[:, 0]


def image_quality(prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean PSNR (dB), SSIM (:func:`cxrgen.evaluate.metrics.ssim`) and MSE over a batch, on images mapped to [0, 1]
    (Cheff Table 2 metrics)."""
    from skimage.metrics import peak_signal_noise_ratio

    from cxrgen.evaluate.metrics import ssim

    pred, true = _to_unit(prediction), _to_unit(target)
    psnr = [peak_signal_noise_ratio(t, p, data_range=1.0) for p, t in zip(pred, true, strict=True)]
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim(pred, true))),
            "mse": float(np.mean((pred - true) ** 2))}


def _save_grid(path: Path, columns: dict[str, torch.Tensor], high_res: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = next(iter(columns.values())).shape[0]
    fig, axes = plt.subplots(rows, len(columns), figsize=(2 * len(columns), 2 * rows), squeeze=False)
    for c, (title, images) in enumerate(columns.items()):
        if images.shape[-1] != high_res:  # show LR at its own pixel size (nearest), not smoothed
            images = torch.nn.functional.interpolate(images, size=(high_res, high_res), mode="nearest")
        for r, img in enumerate(_to_unit(images)):
            axes[r, c].imshow(img, cmap="gray", vmin=0, vmax=1)
            axes[r, c].axis("off")
        axes[0, c].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _final_model(model: SRModel, ema) -> SRModel:
    if ema is None:
        return model
    import copy

    unet = copy.deepcopy(model.unet)
    ema.copy_to(unet.parameters())
    return SRModel(unet, model.scheduler, model.low_res, model.high_res, model.mode)


def _validate(model: SRModel, val_hr: StoreImages, val_lr: StoreImages | None, make_low: _LowResMaker, *,
              n_images: int, steps: int, seed: int, device: torch.device) -> tuple[dict[str, float], dict]:
    indices = list(range(min(n_images, len(val_hr))))
    high, stored_low = _batch(val_hr, val_lr, indices)
    low = make_low(high.to(device), None if stored_low is None else stored_low.to(device)).cpu()
    generators = [torch.Generator().manual_seed(seed * 100003 + i) for i in indices]
    sr = super_resolve(model, low, steps=steps, eta=0.0, generator=generators).cpu()
    bicubic = resize_bicubic(low, model.high_res)
    sr_q, bic_q = image_quality(sr, high), image_quality(bicubic, high)
    metrics = {f"val_{k}_sr": v for k, v in sr_q.items()} | {f"val_{k}_bicubic": v for k, v in bic_q.items()}
    return metrics, {"LR": low, "bicubic": bicubic, "SR": sr, "HR": high}


def train_sr(*, index_path: Path | str, store_root: Path | str, low_res: int, high_res: int, cfg: dict, seed: int,
             state_dir: Path | str, out_dir: Path | str, tracking_json: Path | str | None, job_name: str,
             mode: str = "bicubic", ae_dir: Path | str | None = None, init_dir: Path | str | None = None,
             stop_after_steps: int | None = None) -> dict:
    """Train (mode ``bicubic``) or fine-tune (mode ``decoded``) the super-resolution model.

    Inputs: the store index (``index_path``; train split for training, val split for validation, views
    ``cfg["views"]``), the store shards (``store_root``, both ``low_res`` and ``high_res`` present), the validated
    ``sr`` config section ``cfg``, and for ``decoded`` the autoencoder directory ``ae_dir`` (required) and the base SR
    directory ``init_dir`` (optional, Cheff fine-tunes the base; its architecture then overrides ``cfg["model"]``).
    ``state_dir``: resumable checkpoints (not a workflow output). ``tracking_json``: written by init_tracking, or None.

    Output: ``out_dir`` (written atomically at the end) with ``model_index.json``, ``unet/``, ``scheduler/``
    (see :mod:`cxrgen.models.sr`), ``metrics.json``, ``val_grid.png`` (LR | bicubic | SR | HR) and
    ``loss_curve.png``. Returns the metrics dict. ``stop_after_steps`` simulates a kill (tests).

    Data parallel: run on every rank by :func:`cxrgen.train.distributed.launch` (``launch(train_sr, n, **kwargs)``;
    the arguments must pickle) or torchrun, the ranks train one model together, each on its slice of every global
    batch of ``batch_size`` images; crops, timesteps and noise are drawn for the global batch, so the weights are
    those of a single-process run (up to float summation order; with ``sr.model.dropout`` > 0 the ranks' dropout
    masks are their own). Rank 0 alone opens the MLflow run, validates and writes ``out_dir``; the other ranks
    return ``{"rank": r, "steps": n}`` once training is done.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "decoded" and ae_dir is None:
        raise ValueError("mode 'decoded' needs the autoencoder directory (ae_dir)")
    phase = cfg["base"] if mode == "bicubic" else cfg["finetune"]
    state_dir, out_dir = Path(state_dir), Path(out_dir)
    loop_cfg = loop_config({**cfg["loop"], "max_steps": int(phase["max_steps"])}, seed,
                           stop_after_steps=stop_after_steps)
    device = loop_cfg.resolved_device()
    world = loop_cfg.resolved_world()

    index = pd.read_parquet(index_path)
    train_rows = select_rows(index, splits=["train"], views=cfg["views"])
    val_rows = select_rows(index, splits=["val"], views=cfg["views"])
    if val_rows.empty:
        val_rows = train_rows
    with_store_lr = cfg["lr_source"] == "store"
    train_hr = StoreImages(store_root, train_rows, high_res)
    train_lr = StoreImages(store_root, train_rows, low_res) if with_store_lr else None
    val_hr = StoreImages(store_root, val_rows, high_res)
    val_lr = StoreImages(store_root, val_rows, low_res) if with_store_lr else None

    seed_everything(int(seed))
    if init_dir is not None:
        model = load_sr(init_dir)
        if (model.low_res, model.high_res) != (low_res, high_res):
            raise ValueError(f"init model maps {model.low_res}->{model.high_res}, asked for {low_res}->{high_res}")
        model.mode = mode
        model.unet.train()
    else:
        model = build_sr(cfg, low_res=low_res, high_res=high_res, mode=mode)
    autoencoder = _load_autoencoder(Path(ae_dir), device) if mode == "decoded" else None
    make_low = _LowResMaker(low_res, cfg["lr_source"], autoencoder)
    # Cheff §7.3.3: Adam (5e-5 base, 2e-5 fine-tuning)
    optimizer = torch.optim.Adam(model.unet.parameters(), lr=float(phase["lr"]))
    ema = attach_ema("unet", model.unet, float(cfg["ema_decay"])) if cfg["ema_decay"] else None

    crop = cfg["train_crop"]
    levels = len(model.unet.config.block_out_channels)
    if crop is not None and (crop > high_res or crop % 2 ** (levels - 1)):
        raise ValueError(f"sr.train_crop ({crop}) must be <= high_res ({high_res}) and divisible by 2^{levels - 1}")

    def loader_for(start: int):
        sampler = StepBatchSampler(len(train_hr), int(cfg["batch_size"]), seed=int(seed), start_step=start,
                                   max_steps=loop_cfg.max_steps, rank=world.rank, world_size=world.world_size)
        return (_batch(train_hr, train_lr, indices) for indices in sampler)

    def train_step(batch, ctx) -> dict[str, float]:
        high, stored_low = batch
        high = high.to(ctx.device)
        low = make_low(high, None if stored_low is None else stored_low.to(ctx.device))
        condition = resize_bicubic(low, high_res)
        ranks = {"rank": ctx.rank, "world_size": ctx.world_size}  # draws for the global batch, this rank's rows
        if crop:
            high, condition = random_crops([high, condition], crop, ctx.generator, **ranks)
        with ctx.autocast():
            loss = diffusion_loss(model, high, condition, ctx.generator, cfg["loss"], **ranks)
        grad_norm = ctx.backward_step(loss, model.unet, optimizer)
        return {"loss": loss.item(), "grad_norm": grad_norm}

    def fit(job: TrackedJob) -> LoopResult:
        return run_training(loop_cfg, modules={"unet": model.unet}, optimizers={"unet": optimizer},
                            loader_for=loader_for, train_step=train_step, state_dir=state_dir,
                            emas={"unet": ema} if ema else None, on_log=job.record, extra_state=job.extra,
                            desc=f"sr-{mode}", distributed_ready=True)

    def publish(trained: Trained) -> dict:
        job, result = trained.job, trained.result
        final = _final_model(model, ema)
        val_metrics, columns = _validate(final, val_hr, val_lr, make_low, n_images=int(cfg["validation"]["images"]),
                                         steps=int(cfg["validation"]["steps"]), seed=int(seed), device=device)
        history = job.extra["history"]
        metrics = {
            "mode": mode, "low_res": low_res, "high_res": high_res, "steps": result.steps_done,
            "final_loss": history[-1]["loss"] if history else float("nan"),
            "seconds_per_step": trained.seconds_per_step, "n_train": len(train_rows),
            "n_params": count_parameters(final.unet), "validation_steps": int(cfg["validation"]["steps"]),
            **val_metrics, "mlflow_run_id": job.run_id, "world_size": trained.world.world_size,
        }
        tmp = job.staging(out_dir)
        final.unet.to("cpu")
        save_sr(final, tmp)
        final.unet.to(device)
        write_json(tmp / "metrics.json", metrics)
        _save_grid(tmp / "val_grid.png", columns, high_res)
        plot_loss_history(history, tmp / "loss_curve.png", title="", ylabel="noise loss", log=False)
        job.log_metrics(val_metrics, result.steps_done)
        job.publish(tmp, out_dir, artifacts=["metrics.json", "val_grid.png", "loss_curve.png"],
                    tags={"cxrgen.weights": str(out_dir.resolve())})
        log.info("SR %s: PSNR %.2f dB (bicubic %.2f), SSIM %.3f (bicubic %.3f)", mode, metrics["val_psnr_sr"],
                 metrics["val_psnr_bicubic"], metrics["val_ssim_sr"], metrics["val_ssim_bicubic"])
        return metrics

    params = {"sr": cfg, "mode": mode, "low_res": low_res, "high_res": high_res, "seed": seed,
              "n_train": len(train_rows), "n_params": count_parameters(model.unet),
              "ae_dir": str(ae_dir), "init_dir": str(init_dir)}
    return tracked_training(tracking_json, job_name, world=world, params=params, tags={"cxrgen.stage": f"sr:{mode}"},
                            state_dir=state_dir, fit=fit, publish=publish)
