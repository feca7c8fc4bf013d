"""Stage ``generate_ddl_latents``: DDL-CXR's up-to-date latent CXR at prediction time for every prediction stay,
sampled by the trained LDM (rule train_ddl_ldm) from the stay's last image latent and the EHR recorded since it
(arXiv 2410.17918, ``LDM_generate_z1.yaml``: DDIM, η = 1). Each stay's noise comes from its own seed (run seed,
stay_key), not from one noise tensor shared by every sample as in the public code."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from cxrgen.icu.ddl_ldm import load_ddl_ldm, sample_later_latents, sample_seed
from cxrgen.icu.inputs import cache_rows, load_ehr, prediction_window, read_stays, scaled_latents
from cxrgen.train.job import tracked_job

log = logging.getLogger(__name__)


def generate_ddl_latents(*, cohort_dir: Path | str, latents_dir: Path | str, ae_dir: Path | str,
                         model_dir: Path | str, cfg: dict, seed: int, out_path: Path | str,
                         tracking_json: Path | str | None = None, job_name: str = "generate_ddl_latents") -> dict:
    """Write ``out_path`` (``latents.npz``: ``stay_keys`` [N] in stays.parquet order, ``latents`` float32
    [N, C, h, w] in the LDM's scaled latent space — divide by ``scaling_factor`` before the AE decoder —,
    ``scaling_factor``) for every stay of ``cohort_dir``/stays.parquet. ``cfg`` = section ``icu.generation``
    (``steps``, ``eta``, ``batch_size``). Returns a summary dict."""
    from cxrgen.data.latents import load_latents

    out_path = Path(out_path)
    cache = load_latents(latents_dir, ae_dir=ae_dir)
    model, scheduler_config, manifest = load_ddl_ldm(model_dir)
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))  # the sampler follows the model's device
    stays = read_stays(cohort_dir)
    ehr = load_ehr(cohort_dir)
    if abs(float(manifest["scaling_factor"]) - cache.scaling_factor) > 1e-6:
        raise ValueError(f"{model_dir} was trained on latents scaled by {manifest['scaling_factor']}, the cache "
                         f"{latents_dir} has {cache.scaling_factor}: retrain the LDM on this cache")
    prior, _ = scaled_latents(cache, cache_rows(cache, stays["last_image_id"].tolist()), with_std=False)
    if list(prior.shape[1:]) != list(manifest["latent_shape"]):
        raise ValueError(f"cache latents {list(prior.shape[1:])} != the LDM's {manifest['latent_shape']}")
    start, end = prediction_window(stays, ehr.hours)
    rows = ehr.rows(stays["stay_key"].tolist())
    keys = stays["stay_key"].astype(str).tolist()
    seeds = [sample_seed(seed, k) for k in keys]
    steps, eta, batch = int(cfg["steps"]), float(cfg["eta"]), int(cfg["batch_size"])
    params = {"sampling": cfg, "seed": seed, "n_stays": len(stays), "model_dir": str(model_dir)}
    with tracked_job(tracking_json, job_name, params=params, tags={"cxrgen.stage": "ddl_cxr:generate"}) as job:
        started = time.perf_counter()
        out = []
        for first in range(0, len(stays), batch):
            sl = slice(first, first + batch)
            out.append(sample_later_latents(
                model, scheduler_config, prior=prior[sl], values=ehr.values[rows[sl]], static=ehr.static[rows[sl]],
                start=torch.from_numpy(start[sl]), end=torch.from_numpy(end[sl]), seeds=seeds[sl], steps=steps,
                eta=eta))
        latents = torch.cat(out).cpu().numpy().astype(np.float32) if out else np.zeros((0, *prior.shape[1:]),
                                                                                        np.float32)
        seconds = time.perf_counter() - started
        out_path.parent.mkdir(parents=True, exist_ok=True)
        staged = out_path.with_name(out_path.name + ".tmp")
        with open(staged, "wb") as handle:
            np.savez(handle, stay_keys=np.asarray(keys, dtype=str), latents=latents,
                     scaling_factor=np.float64(cache.scaling_factor))
        summary = {"n_stays": len(keys), "steps": steps, "eta": eta, "seconds": seconds,
                   "seconds_per_stay": seconds / max(1, len(keys)), "latent_shape": list(latents.shape[1:])}
        job.log_metrics(summary)
        job.publish(staged, out_path)
    log.info("generated %d latents in %.1f s", len(keys), seconds)
    return summary
