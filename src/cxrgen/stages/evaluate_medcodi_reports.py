"""Stage ``evaluate_medcodi_reports``: BLEU-1..4 (MedCoDi-M Table 4) and report-labeler F1 (Table 5) of the reports
of rule generate_medcodi_reports, per direction, with the labeler's own ceiling on the real reports and examples.
Library: :mod:`cxrgen.medcodi.report_generation` (its docstring says which ground truth and why)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from cxrgen.labels import LABEL_COLUMNS
from cxrgen.medcodi.report_generation import TABLE5_LABELS, evaluate_reports
from cxrgen.train.job import tracked_job, write_json

GROUND_TRUTH = ("the project's report labeler (cxrgen.text.labeler) on the study's reference impression, as the "
                "paper's MIMIC-CXR labels are the CheXpert labeler's output on the real report; a label counts only "
                "where that ground truth is defined (blank = undefined; uncertain per label_policy.uncertain; No "
                "Finding blank = 0)")


def evaluate_medcodi_reports(*, generated: Path | str, studies: Path | str, index: Path | str, cfg: dict,
                             prompting: str, out_json: Path | str, tracking_json: Path | str | None = None,
                             job_name: str = "evaluate_medcodi_reports") -> dict:
    """Write ``out_json`` = {"prompting", "directions": {d: {"n", "bleu", "labeler_f1", "support"}}, "reference",
    "examples", "ground_truth", "label_policy", ...} for config section ``medcodi.report_generation.evaluation``
    (``uncertain``, ``examples``)."""
    out_json = Path(out_json)
    params = {"report_generation_evaluation": cfg, "prompting": prompting}
    with tracked_job(tracking_json, job_name, params=params,
                     tags={"cxrgen.stage": f"medcodi:report_evaluation:{prompting}"}) as job:
        started = time.perf_counter()
        reports = pd.read_parquet(generated)
        table = pd.read_parquet(studies)
        store = pd.read_parquet(index, columns=["image_id", "label_source", *("raw_" + c for c in LABEL_COLUMNS)])
        result = evaluate_reports(reports, table, store, labels=TABLE5_LABELS, uncertain=str(cfg["uncertain"]),
                                  examples=int(cfg["examples"]))
        payload = {"prompting": prompting, "method": "MedCoDi-M (XGeM)" if prompting == "multi" else
                   "MedCoDi (single-prompt ablation)", **result, "ground_truth": GROUND_TRUTH,
                   "label_policy": {"uncertain": cfg["uncertain"], "blank": "undefined"},
                   "seconds": round(time.perf_counter() - started, 2), "mlflow_run_id": job.run_id}
        staged = write_json(out_json.with_name(out_json.name + ".tmp"), payload)
        for direction, scores in result["directions"].items():
            job.log_metrics({**{f"bleu{n}": v for n, v in scores["bleu"].items()},
                             **{f"f1_{a}": scores["labeler_f1"][a] for a in ("micro", "macro", "weighted")}},
                            prefix=f"{direction}/")
        job.publish(staged, out_json, artifacts=[str(out_json)])
    return payload
