"""Stage ``evaluate_medcodi_utility``: one view's utility experiments (rule ``run_view_downstream``, every experiment
and seed) as a JSON table and a markdown fragment (MedCoDi-M §4.5, frontal and lateral reported separately)."""

from __future__ import annotations

import json
from pathlib import Path

from cxrgen.medcodi.utility import DIRECTIONS, utility_table
from cxrgen.report.downstream import downstream_markdown, summarise
from cxrgen.train.job import write_json


def evaluate_medcodi_utility(*, view: str, metrics_paths: list[Path | str], out_json: Path | str,
                             out_md: Path | str, demo_note: bool = True) -> dict:
    """Aggregate ``results/medcodi/utility/{view}/<experiment>/<seed>/metrics.json`` into ``out_json`` (layout of
    :func:`cxrgen.medcodi.utility.utility_table`: per experiment and arm the sizes and mean ± 95 % t half-width of
    the test AUROC/F1 averages over seeds) and ``out_md`` (the harness' tables under a per-view heading)."""
    results = [json.loads(Path(p).read_text()) for p in metrics_paths]
    if not results:
        raise ValueError(f"evaluate_medcodi_utility: no {view} results")
    views = {tuple(r["views"] or ()) for r in results}
    if len(views) != 1:
        raise ValueError(f"evaluate_medcodi_utility: the {view} results mix store views {sorted(views)}")
    summary = summarise(results)
    table = utility_table(view, results, summary)
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(out_json), table)
    fragment = downstream_markdown(results, summary, demo_note).replace(
        "## Downstream augmentation experiments",
        f"### MedCoDi-M utility experiments: {view} films (synthetic pool: {DIRECTIONS[view]} twins)", 1)
    Path(out_md).write_text(fragment.replace("\n### ", "\n#### "))
    return table
