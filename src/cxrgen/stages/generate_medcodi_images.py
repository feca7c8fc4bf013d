"""Stage ``generate_medcodi_images``: the MedCoDi-M / XGeM any-to-any image generation of one view LDM (paper §4.1,
Tables 2-3) — every test study's image of that view from the real inputs of each direction (library:
:mod:`cxrgen.medcodi.generation`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from cxrgen.medcodi.generation import (
    GeneratedDirection,
    direction_conditions,
    direction_seed,
    generate_direction,
    load_view_autoencoder,
    save_generated,
    view_directions,
)
from cxrgen.train.job import tracked_job

log = logging.getLogger(__name__)


def generate_medcodi_images(*, model_dir: Path | str, studies: Path | str, embeddings: Path | str, cfg: dict,
                            seed: int, out_path: Path | str, tracking_json: Path | str | None = None,
                            job_name: str = "generate_medcodi_images") -> dict:
    """Write ``out_path`` (the npz of :mod:`cxrgen.medcodi.generation`) for the view LDM ``model_dir`` (rule
    train_medcodi_ldm). ``cfg`` = section ``medcodi`` narrowed to ``generation`` (``split``, ``steps``, ``eta``,
    ``guidance_scale``, ``batch_size``, ``max_studies``). Returns a summary (n and seconds per direction)."""
    import torch

    from cxrgen.medcodi.ldm import load_embeddings, load_view_ldm

    out_path, cfg = Path(out_path), cfg["generation"]
    unet, scheduler_config, info = load_view_ldm(model_dir)
    view, prompting = info["view"], info["prompting"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unet.to(device)
    autoencoder = load_view_autoencoder(model_dir, info).to(device)
    table, prompts = pd.read_parquet(studies), load_embeddings(embeddings)
    conditions = {d: direction_conditions(table, prompts, d, split=cfg["split"], max_studies=cfg["max_studies"])
                  for d in view_directions(view)}
    settings = {"steps": int(cfg["steps"]), "guidance": float(cfg["guidance_scale"]), "eta": float(cfg["eta"]),
                "batch_size": int(cfg["batch_size"])}
    params = {"medcodi_generation": cfg, "seed": seed, "view": view, "prompting": prompting,
              **{f"n/{d}": len(c) for d, c in conditions.items()}}
    summary = {"view": view, "prompting": prompting, "directions": {}}
    with tracked_job(tracking_json, job_name, params=params,
                     tags={"cxrgen.stage": f"medcodi:generate:{view}-{prompting}"}) as job:
        generated = {}
        for direction, found in conditions.items():
            started = time.perf_counter()
            seeds = [direction_seed(seed, pid, direction) for pid in found.study_pids]
            images = generate_direction((unet, scheduler_config, info), autoencoder, found.conditions, seeds,
                                        **settings)
            generated[direction] = GeneratedDirection(images, found.study_pids, seeds)
            seconds = time.perf_counter() - started
            summary["directions"][direction] = {"n": len(found), "seconds": seconds}
            log.info("%s %s-%s: %d images in %.1f s", direction, view, prompting, len(found), seconds)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        staged = out_path.with_name(out_path.name + ".tmp")
        save_generated(staged, generated, {"view": view, "prompting": prompting, "split": cfg["split"],
                                           "seed": int(seed), "model": str(model_dir), **settings})
        job.log_metrics({f"{key}/{d}": v[key] for d, v in summary["directions"].items() for key in ("n", "seconds")})
        job.publish(staged, out_path)
    return summary
