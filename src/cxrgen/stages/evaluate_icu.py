"""Stage ``evaluate_icu``: AUROC/AUPRC of the ICU predictors (mortality; macro over phenotypes) pooled over seeds,
with bootstrap intervals over the test stays, overall and by hours since the last CXR, and the paired comparison
"ddl_cxr vs ehr_last_cxr" (the paper's claim) per group (library: :mod:`cxrgen.icu.evaluation`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrgen.icu.evaluation import evaluate_arms, results_markdown
from cxrgen.train.job import tracked_job, write_json

RESULTS_JSON, RESULTS_MD = "icu_results.json", "icu_results.md"


def evaluate_icu(*, prediction_files: list[Path | str], cfg: dict, out_dir: Path | str,
                 tracking_json: Path | str | None = None, job_name: str = "evaluate_icu") -> dict:
    """Read the predictions.parquet of every arm × seed (rule train_icu_predictor) and write ``out_dir`` with
    ``icu_results.json`` and ``icu_results.md``; ``cfg`` = section ``icu.evaluation``."""
    out_dir = Path(out_dir)
    frame = pd.concat([pd.read_parquet(p) for p in prediction_files], ignore_index=True)
    with tracked_job(tracking_json, job_name, params={"icu_evaluation": cfg, "files": len(prediction_files)},
                     tags={"cxrgen.stage": "ddl_cxr:evaluate"}) as job:
        results = evaluate_arms(frame, cfg)
        tmp = job.staging(out_dir)
        write_json(tmp / RESULTS_JSON, results)
        (tmp / RESULTS_MD).write_text(results_markdown(results))
        overall = results["groups"]["overall"]["arms"]
        for arm, metrics in overall.items():
            job.log_metrics({f"{arm}/{m}": v["value"] for m, v in metrics.items() if v["value"] is not None})
        job.publish(tmp, out_dir, artifacts=[RESULTS_JSON, RESULTS_MD])
    return results
