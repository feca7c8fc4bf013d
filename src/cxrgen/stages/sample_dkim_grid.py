"""Rule ``sample_dkim_grid``: the sample grid of a trained DKIM adapter (rule ``train_dkim``) on its frozen base LDM,
drawn from the saved directories.

For each finding of :data:`cxrgen.prompts.GRID_FINDINGS` the adapter knows (else its first finding), two rows with the
same template report and the same seeds ``seed, seed + 1, …``: the base LDM alone, then base + DKIM with the
finding's labels (:func:`cxrgen.prompts.grid_labels`). DDIM with the settings of ``dkim.sample_grid``. The saved
adapter holds the EMA weights. A rule of its own: changing the grid's settings redraws the picture without retraining.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cxrgen.models.diffusion import LatentSampler, decode_latents
from cxrgen.pipeline import CxrPipeline
from cxrgen.prompts import GRID_FINDINGS, finding_prompt, grid_labels
from cxrgen.report.sample_grid import SampleGrid, grid_seeds, grid_settings, write_sample_grid


def dkim_grid_images(pipe: CxrPipeline, grid_cfg: dict, seed: int) -> tuple[torch.Tensor, list[str]]:
    """(images [2·F·columns, 1, H, W] row-major, row names) of the grid of ``pipe`` (an LDM with its DKIM adapter)."""
    adapter = pipe.sampler.adapter
    columns = int(grid_cfg["columns"])
    findings = [f for f in GRID_FINDINGS if f in adapter.findings] or adapter.findings[:1]
    prompts = [finding_prompt(f, 0) for f in findings for _ in range(columns)]
    seeds = [s for _ in findings for s in grid_seeds(grid_cfg, seed)]
    labels = np.repeat(grid_labels(findings), columns, axis=0)
    settings = grid_settings(grid_cfg)
    base = LatentSampler(pipe.sampler.unet, pipe.sampler.scheduler_config, pipe.text_encoder.encode)
    without = decode_latents(pipe.autoencoder, base.sample(prompts, seeds, settings).cpu())
    with_dkim = pipe(prompts, seeds, settings, labels=labels)["low"]
    images, names = [], []
    for k, finding in enumerate(findings):
        names += [finding, f"{finding} + DKIM"]
        images += [without[k * columns:(k + 1) * columns], with_dkim[k * columns:(k + 1) * columns]]
    return torch.cat(images), names


def sample_dkim_grid(*, dkim_dir: Path | str, ldm_dir: Path | str, grid_cfg: dict, seed: int, out_png: Path | str,
                     out_json: Path | str, ae_dir: Path | str | None = None, clip_dir: Path | str | None = None,
                     tracking_json: Path | str | None = None, job_name: str = "sample_dkim_grid") -> dict:
    """Write the grid of the adapter ``dkim_dir`` on the LDM ``ldm_dir`` (refused if the adapter was trained for
    another base UNet) to ``out_png`` and its settings, rows, seeds and timings to ``out_json``, as one tracked job.
    ``ae_dir``/``clip_dir`` override the parts named in the LDM's ``cxrgen_pipeline.json``. Returns the json's
    payload."""

    def draw(pipe: CxrPipeline) -> SampleGrid:
        images, names = dkim_grid_images(pipe, grid_cfg, seed)
        adapter_run = pipe.sampler.adapter.config.provenance.get("mlflow_run_id")
        return SampleGrid(images, names, rows=names, provenance={"dkim_mlflow_run_id": adapter_run})

    return write_sample_grid(stage="sample_dkim_grid", grid_cfg=grid_cfg, seed=seed, out_png=out_png,
                             out_json=out_json, tracking_json=tracking_json, job_name=job_name, draw=draw,
                             load=lambda: CxrPipeline.from_dir(ldm_dir, ae_dir=ae_dir, clip_dir=clip_dir,
                                                               dkim_dir=dkim_dir, use_sr=False))
