"""Rule ``report_downstream``: every ``run_downstream`` result (all experiments and seeds) aggregated into a markdown
fragment, a figure and a JSON table (:mod:`cxrgen.report.downstream`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cxrgen.report.downstream import downstream_markdown, plot_downstream, summarise


def report_downstream(*, metrics_paths: list[Path | str], out_md: Path | str, out_png: Path | str,
                      out_json: Path | str, demo_note: bool = True) -> pd.DataFrame:
    """Aggregate ``results/downstream/<experiment>/<seed>/metrics.json`` files into a markdown fragment (protocol +
    one table per experiment, mean ± 95 % t-CI over seeds), a figure (macro AUROC per arm) and a JSON table."""
    results = [json.loads(Path(p).read_text()) for p in metrics_paths]
    if not results:
        raise ValueError("report_downstream: no downstream results")
    table = summarise(results)
    Path(out_md).parent.mkdir(parents=True, exist_ok=True)
    Path(out_md).write_text(downstream_markdown(results, table, demo_note))
    plot_downstream(table, out_png)
    Path(out_json).write_text(table.to_json(orient="records", indent=1))
    return table
