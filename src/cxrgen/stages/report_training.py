"""Rule ``report_training``: every model's loss curve and sample / reconstruction grid, tiled into one report figure
per kind (:mod:`cxrgen.report.training`)."""

from __future__ import annotations

from pathlib import Path

from cxrgen.report.training import CURVE_FILES, SAMPLE_FILES, find_figures, tile_figures


def report_training(model_dirs: dict[str, Path | str], curves_path: Path | str, samples_path: Path | str) -> dict:
    """The loss curves and the sample/reconstruction grids of ``model_dirs``; returns the number of tiles of each."""
    curves = tile_figures(find_figures(model_dirs, CURVE_FILES), curves_path)
    samples = tile_figures(find_figures(model_dirs, SAMPLE_FILES), samples_path, columns=2, tile_inches=6.0)
    return {"curves": curves, "sample_grids": samples}
