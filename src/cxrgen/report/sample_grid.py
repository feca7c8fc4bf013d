"""What the sample-grid rules (``sample_ldm_grid``, ``sample_dkim_grid``) share: DDIM settings and seeds from a
``sample_grid`` config section, and the tracked job that loads the saved pipeline, draws the grid and writes the
picture with its json (settings, rows, seeds, timings)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cxrgen.evaluate.outputs import StagedFiles
from cxrgen.models.diffusion import SamplerSettings
from cxrgen.report.figures import save_grid
from cxrgen.train.job import tracked_job, write_json


def grid_settings(grid_cfg: dict) -> SamplerSettings:
    """The DDIM settings (``steps``, ``eta``, ``guidance_scale``) of a ``sample_grid`` section."""
    return SamplerSettings(steps=int(grid_cfg["steps"]), eta=float(grid_cfg["eta"]),
                           guidance_scale=float(grid_cfg["guidance_scale"]))


def grid_seeds(grid_cfg: dict, seed: int) -> list[int]:
    """One seed per column: ``seed, seed + 1, …`` (every row uses the same ones)."""
    return [int(seed) + c for c in range(int(grid_cfg["columns"]))]


@dataclass
class SampleGrid:
    images: torch.Tensor  # [rows·columns, 1, H, W], row-major
    row_names: list[str]
    rows: object  # what the json records of the rows
    provenance: dict = field(default_factory=dict)  # e.g. the MLflow run of the model drawn from


def write_sample_grid(*, stage: str, load: Callable[[], object], draw: Callable[[object], SampleGrid],
                      grid_cfg: dict, seed: int, out_png: Path | str, out_json: Path | str,
                      tracking_json: Path | str | None, job_name: str) -> dict:
    """One tracked job (``tracking_json`` None: untracked): ``load()`` the pipeline, ``draw(pipeline)`` its grid, write
    the picture to ``out_png`` and its settings, rows, seeds, the grid's provenance and the load and drawing times to
    ``out_json``. Returns the json's payload."""
    with tracked_job(tracking_json, job_name, params={"sample_grid": grid_cfg, "seed": seed},
                     tags={"cxrgen.stage": stage}) as job:
        started = time.perf_counter()
        pipe = load()
        loaded = time.perf_counter()
        grid = draw(pipe)
        files = StagedFiles(job, {"figure": out_png, "json": out_json})
        save_grid(grid.images, grid.row_names, int(grid_cfg["columns"]), files["figure"])
        payload = {"rows": grid.rows, "seeds": grid_seeds(grid_cfg, seed), "sample_grid": grid_cfg, **grid.provenance,
                   "load_seconds": loaded - started, "seconds": time.perf_counter() - loaded,
                   "mlflow_run_id": job.run_id}
        write_json(files["json"], payload)
        job.log_metrics({"seconds": payload["seconds"]})
        files.publish(artifacts=["figure", "json"])
    return payload
