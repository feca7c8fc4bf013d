"""Rule ``init_tracking`` (a local rule, run once before any tracked job): the MLflow experiment and the pipeline's
parent run (:mod:`cxrgen.train.tracking`); it also creates the database schema, which concurrent first connections
to a fresh SQLite store would race on."""

from __future__ import annotations

import json
from pathlib import Path

from cxrgen.train.tracking import create_pipeline_run


def init_tracking(out_json: Path | str, experiment: str, results_dir: Path | str) -> dict:
    """Create (or reuse) the experiment and a parent run for this pipeline; write their ids to ``out_json`` (the
    ``tracking_json`` every tracked job opens its child run with)."""
    info = create_pipeline_run(experiment, Path(results_dir))
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(out_json).write_text(json.dumps(info, indent=1))
    return info
