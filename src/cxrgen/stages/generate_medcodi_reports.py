"""Stage ``generate_medcodi_reports``: MedCoDi-M / XGeM reports generated from the test studies' real films for the
directions F->T, L->T and F+L->T (arXiv 2501.04614 §4.2) with the report diffusion model of one prompting mode.
Library: :mod:`cxrgen.medcodi.report_generation`."""

from __future__ import annotations

import time
from pathlib import Path

from cxrgen.medcodi.report_generation import generate_reports
from cxrgen.train.job import tracked_job


def generate_medcodi_reports(*, studies: Path | str, embeddings: Path | str, model_dir: Path | str,
                             vae_dir: Path | str, cfg: dict, prompting: str, seed: int, out_path: Path | str,
                             tracking_json: Path | str | None = None,
                             job_name: str = "generate_medcodi_reports") -> dict:
    """Write ``out_path`` (parquet: study_pid, direction, seed, report) for config section
    ``medcodi.report_generation`` (``splits``, ``max_studies``, ``sample``) with the model ``model_dir`` of rule
    train_report_diffusion and the report VAE ``vae_dir``. Returns the counts per direction and the seconds."""
    sample = cfg["sample"]
    out_path = Path(out_path)
    params = {"report_generation": cfg, "prompting": prompting, "seed": seed}
    with tracked_job(tracking_json, job_name, params=params,
                     tags={"cxrgen.stage": f"medcodi:report_generation:{prompting}"}) as job:
        started = time.perf_counter()
        generated = generate_reports(studies=studies, embeddings=embeddings, model_dir=model_dir, vae_dir=vae_dir,
                                     splits=list(cfg["splits"]), seed=seed, steps=int(sample["steps"]),
                                     guidance=float(sample["guidance_scale"]), eta=float(sample["eta"]),
                                     batch_size=int(sample["batch_size"]), max_studies=cfg["max_studies"])
        seconds = time.perf_counter() - started
        counts = {str(k): int(v) for k, v in generated["direction"].value_counts(sort=False).items()}
        staged = out_path.with_name(out_path.name + ".tmp")
        staged.parent.mkdir(parents=True, exist_ok=True)
        generated.to_parquet(staged, index=False)
        job.log_metrics({f"n_{d}": n for d, n in counts.items()} | {"seconds": seconds})
        job.publish(staged, out_path, artifacts=[str(out_path)])
    return {"prompting": prompting, "n": counts, "seconds": round(seconds, 2), "mlflow_run_id": job.run_id}
