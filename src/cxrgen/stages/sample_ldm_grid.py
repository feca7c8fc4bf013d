"""Rule ``sample_ldm_grid``: the sample grid of a trained LDM (rule ``train_ldm``), drawn from its saved directory.

Rows are the template reports of :data:`cxrgen.prompts.GRID_FINDINGS` (one ``unconditional`` row for an LDM without
text conditioning), ``columns`` seeds ``seed, seed + 1, …`` per row, DDIM with the settings of ``ldm.sample_grid``.
The saved ``unet/`` holds the EMA weights, and the autoencoder and text encoder are the ones the LDM was trained with,
so the picture is the one the trainer used to draw at the end of training. A rule of its own: changing the grid's
settings redraws the picture without retraining the model.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from cxrgen.evaluate.outputs import StagedFiles
from cxrgen.models.diffusion import SamplerSettings
from cxrgen.pipeline import CxrPipeline
from cxrgen.prompts import GRID_FINDINGS, finding_prompt
from cxrgen.report.figures import save_grid
from cxrgen.train.job import tracked_job, write_json


def ldm_grid_images(pipe: CxrPipeline, grid_cfg: dict, seed: int) -> tuple[torch.Tensor, list[str], list[str]]:
    """(images [rows·columns, 1, H, W] row-major, row names, row prompts) of the grid of the LDM ``pipe``."""
    conditional = pipe.info["conditioning"] == "text"
    columns = int(grid_cfg["columns"])
    row_names = list(GRID_FINDINGS) if conditional else ["unconditional"]
    prompts = [finding_prompt(name, 0) if conditional else "" for name in row_names]
    seeds = [int(seed) + c for c in range(columns)]
    settings = SamplerSettings(steps=int(grid_cfg["steps"]), eta=float(grid_cfg["eta"]),
                               guidance_scale=float(grid_cfg["guidance_scale"]))
    images = pipe([p for p in prompts for _ in seeds], [s for _ in prompts for s in seeds], settings)["low"]
    return images, row_names, prompts


def sample_ldm_grid(*, ldm_dir: Path | str, grid_cfg: dict, seed: int, out_png: Path | str, out_json: Path | str,
                    ae_dir: Path | str | None = None, clip_dir: Path | str | None = None,
                    tracking_json: Path | str | None = None, job_name: str = "sample_ldm_grid") -> dict:
    """Write the grid of the LDM in ``ldm_dir`` to ``out_png`` and its settings, rows, seeds and timings to
    ``out_json`` (one tracked job; ``tracking_json`` None: untracked). ``ae_dir``/``clip_dir`` override the parts
    named in the LDM's ``cxrgen_pipeline.json`` (the workflow passes the same directories, as declared inputs).
    Returns the json's payload."""
    with tracked_job(tracking_json, job_name, params={"sample_grid": grid_cfg, "seed": seed},
                     tags={"cxrgen.stage": "sample_ldm_grid"}) as job:
        started = time.perf_counter()
        pipe = CxrPipeline.from_dir(ldm_dir, ae_dir=ae_dir, clip_dir=clip_dir, use_sr=False)
        loaded = time.perf_counter()
        images, row_names, prompts = ldm_grid_images(pipe, grid_cfg, seed)
        columns = int(grid_cfg["columns"])
        files = StagedFiles(job, {"figure": out_png, "json": out_json})
        save_grid(images, row_names, columns, files["figure"])
        payload = {"rows": dict(zip(row_names, prompts, strict=True)),
                   "seeds": [int(seed) + c for c in range(columns)], "sample_grid": grid_cfg,
                   "conditioning": pipe.info["conditioning"], "ldm_mlflow_run_id": pipe.info.get("mlflow_run_id"),
                   "load_seconds": loaded - started, "seconds": time.perf_counter() - loaded,
                   "mlflow_run_id": job.run_id}
        write_json(files["json"], payload)
        job.log_metrics({"seconds": payload["seconds"]})
        files.publish(artifacts=["figure", "json"])
    return payload
