"""Rule ``sample_ldm_grid``: the sample grid of a trained LDM (rule ``train_ldm``), drawn from its saved directory.

Rows are the template reports of :data:`cxrgen.prompts.GRID_FINDINGS` (one ``unconditional`` row for an LDM without
text conditioning), ``columns`` seeds ``seed, seed + 1, …`` per row, DDIM with the settings of ``ldm.sample_grid``.
The saved ``unet/`` holds the EMA weights, and the autoencoder and text encoder are the ones the LDM was trained with,
so the picture is the one the trainer used to draw at the end of training. A rule of its own: changing the grid's
settings redraws the picture without retraining the model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cxrgen.pipeline import CxrPipeline
from cxrgen.prompts import GRID_FINDINGS, finding_prompt
from cxrgen.report.sample_grid import SampleGrid, grid_seeds, grid_settings, write_sample_grid


def ldm_grid_images(pipe: CxrPipeline, grid_cfg: dict, seed: int) -> tuple[torch.Tensor, list[str], list[str]]:
    """(images [rows·columns, 1, H, W] row-major, row names, row prompts) of the grid of the LDM ``pipe``."""
    conditional = pipe.info["conditioning"] == "text"
    row_names = list(GRID_FINDINGS) if conditional else ["unconditional"]
    prompts = [finding_prompt(name, 0) if conditional else "" for name in row_names]
    seeds = grid_seeds(grid_cfg, seed)
    images = pipe([p for p in prompts for _ in seeds], [s for _ in prompts for s in seeds],
                  grid_settings(grid_cfg))["low"]
    return images, row_names, prompts


def sample_ldm_grid(*, ldm_dir: Path | str, grid_cfg: dict, seed: int, out_png: Path | str, out_json: Path | str,
                    ae_dir: Path | str | None = None, clip_dir: Path | str | None = None,
                    tracking_json: Path | str | None = None, job_name: str = "sample_ldm_grid") -> dict:
    """Write the grid of the LDM in ``ldm_dir`` to ``out_png`` and its settings, rows, seeds and timings to
    ``out_json`` (one tracked job; ``tracking_json`` None: untracked). ``ae_dir``/``clip_dir`` override the parts
    named in the LDM's ``cxrgen_pipeline.json`` (the workflow passes the same directories, as declared inputs).
    Returns the json's payload."""

    def draw(pipe: CxrPipeline) -> SampleGrid:
        images, row_names, prompts = ldm_grid_images(pipe, grid_cfg, seed)
        return SampleGrid(images, row_names, rows=dict(zip(row_names, prompts, strict=True)),
                          provenance={"conditioning": pipe.info["conditioning"],
                                      "ldm_mlflow_run_id": pipe.info.get("mlflow_run_id")})

    return write_sample_grid(stage="sample_ldm_grid", grid_cfg=grid_cfg, seed=seed, out_png=out_png,
                             out_json=out_json, tracking_json=tracking_json, job_name=job_name, draw=draw,
                             load=lambda: CxrPipeline.from_dir(ldm_dir, ae_dir=ae_dir, clip_dir=clip_dir,
                                                               use_sr=False))
