"""Stage ``report_icu``: the DDL-CXR report fragment ``icu.md`` (cohort vs published, outcome tables, the paper's claim
by hours since the last CXR, image quality, computed notes) and its figures (library: :mod:`cxrgen.report.icu`)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from cxrgen.report import read_section_json
from cxrgen.report.icu import icu_figure, icu_markdown

log = logging.getLogger(__name__)


def report_icu(*, cohort_json: Path | str | None, results_json: Path | str | None, quality_json: Path | str | None,
               out_md: Path | str, out_png: Path | str, quality_grid: Path | str | None = None,
               out_grid: Path | str | None = None) -> str:
    """Write ``out_md`` and ``out_png``, and copy the image-quality grid ``quality_grid`` to ``out_grid`` (without
    the grid, ``out_grid`` is a figure saying the results are missing). Returns the markdown."""
    out_md, out_png = Path(out_md), Path(out_png)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    cohort, results, quality = (read_section_json(path) for path in (cohort_json, results_json, quality_json))
    icu_figure(results, out_png)
    grid_link = None
    if out_grid is not None:
        out_grid = Path(out_grid)
        if quality_grid is not None and Path(quality_grid).is_file():
            shutil.copyfile(quality_grid, out_grid)
        else:
            icu_figure(None, out_grid)
        grid_link = os.path.relpath(out_grid, out_md.parent)
    text = icu_markdown(cohort, results, quality, figure=os.path.relpath(out_png, out_md.parent), grid=grid_link)
    out_md.write_text(text, encoding="utf-8")
    return text
