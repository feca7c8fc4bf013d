"""Stage ``generate_medcodi_twins``: the synthetic pool of the per-view utility experiments (MedCoDi-M §4.5, issue 12
"Also"): one image per sampled training study of a view, generated from its report by MedCoDi-M's multi-prompt view
LDM (``T->F`` / ``T->L``; :mod:`cxrgen.medcodi.utility`), decoded by the autoencoder and written in the store format
the downstream harness reads (as rule ``generate`` writes its train twins)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.icu.image_quality import decode_scaled
from cxrgen.medcodi.ldm import load_embeddings, load_view_ldm, sample_view
from cxrgen.medcodi.utility import DIRECTIONS, report_conditions, twin_index_rows, twin_seed, twin_studies
from cxrgen.report.figures import save_grid
from cxrgen.store.shards import ShardWriter, shard_path
from cxrgen.train.job import tracked_job, write_json

GRID_COLUMNS = 8


def generate_medcodi_twins(*, studies: Path | str, embeddings: Path | str, index: Path | str, ldm_dir: Path | str,
                           ae_dir: Path | str, view: str, cfg: dict, seed: int, resolution: int,
                           out_root: Path | str, tracking_json: Path | str | None = None,
                           job_name: str = "generate_medcodi_twins") -> dict:
    """Twins of ``view`` for the studies of :func:`~cxrgen.medcodi.utility.twin_studies` (``cfg`` = section
    ``medcodi.utility.twins``: splits, n, DDIM steps / η / guidance, batch size) sampled by the view LDM ``ldm_dir``
    (rule train_medcodi_ldm, multi prompting) with per-twin seeds from (``seed``, study, direction) and decoded by
    ``ae_dir`` at ``resolution`` (the store's low resolution, which the decoder must produce).

    Writes ``out_root`` atomically: ``<resolution>px/synthetic/shard-0000.bin``, ``index.parquet`` (the columns of
    :func:`~cxrgen.medcodi.utility.twin_index_rows` plus shard/offset/nbytes/sha256), ``grid.png``, ``metrics.json``.
    Returns the metrics."""
    from cxrgen.models.autoencoder import load_autoencoder

    out_root = Path(out_root)
    table = pd.read_parquet(studies)
    prompts = load_embeddings(embeddings)
    real_index = pd.read_parquet(index, columns=["image_id", "view"])
    rows = twin_studies(table, prompts, view=view, splits=cfg["splits"], n=cfg["n"], seed=seed)
    if rows.empty:
        raise ValueError(f"generate_medcodi_twins: no {cfg['splits']} studies with a {view} image, a report and a "
                         f"label in {studies}")
    direction = DIRECTIONS[view]
    seeds = [twin_seed(seed, pid, direction) for pid in rows["study_pid"]]
    index_rows = twin_index_rows(rows, real_index, view=view, seeds=seeds)
    model = load_view_ldm(ldm_dir)
    if model[2]["view"] != view or model[2]["prompting"] != "multi":
        raise ValueError(f"{ldm_dir} is the {model[2]['view']}-{model[2]['prompting']} LDM; the {view} twins need "
                         f"the {view}-multi one")
    autoencoder = load_autoencoder(ae_dir)
    params = {"twins": cfg, "view": view, "direction": direction, "n_twins": len(rows), "seed": seed}
    with tracked_job(tracking_json, job_name, params=params, tags={"cxrgen.stage": f"medcodi:twins:{view}"}) as job:
        started = time.perf_counter()
        latents = sample_view(None, report_conditions(rows, prompts), seeds, steps=int(cfg["steps"]),
                              guidance=float(cfg["guidance_scale"]), eta=float(cfg["eta"]),
                              batch_size=int(cfg["batch_size"]), model=model)
        images = decode_scaled(autoencoder, latents, float(model[2]["scaling_factor"]), int(cfg["batch_size"]))
        seconds = time.perf_counter() - started
        if images.shape[-1] != resolution or images.shape[-2] != resolution:
            raise ValueError(f"the autoencoder decodes {tuple(images.shape[-2:])} images; the store's low resolution "
                             f"is {resolution}")
        pixels = np.round(images.squeeze(1).double().numpy() * 65535.0).astype(np.uint16)

        tmp = job.staging(out_root)
        with ShardWriter(shard_path(tmp, resolution, "synthetic", 0)) as writer:
            blobs = [writer.append(image) for image in pixels]
        index_rows["shard"] = 0
        index_rows[f"offset_{resolution}"] = [b[0] for b in blobs]
        index_rows[f"nbytes_{resolution}"] = [b[1] for b in blobs]
        index_rows[f"sha256_{resolution}"] = [b[2] for b in blobs]
        index_rows.to_parquet(tmp / "index.parquet", index=False)
        shown = images[:GRID_COLUMNS] * 2 - 1
        save_grid(shown, [f"{direction} twins"], len(shown), tmp / "grid.png")
        metrics = {"view": view, "direction": direction, "prompting": "multi", "n_images": len(index_rows),
                   "store_views": {str(k): int(v) for k, v in index_rows["view"].value_counts().items()},
                   "resolution": resolution, "seconds": seconds, "seconds_per_image": seconds / len(index_rows),
                   "steps": int(cfg["steps"]), "eta": float(cfg["eta"]),
                   "guidance_scale": float(cfg["guidance_scale"]), "mlflow_run_id": job.run_id}
        write_json(tmp / "metrics.json", metrics)
        job.log_metrics({"seconds_per_image": metrics["seconds_per_image"], "n_images": len(index_rows)})
        job.publish(tmp, out_root, artifacts=["grid.png", "metrics.json"])
    return metrics
