"""Rule ``report_training``: every model's loss curve, the diffusion models' sample grids (rules
``sample_ldm_grid``/``sample_dkim_grid``) and the other models' reconstruction / validation grids, tiled into one report
figure per kind (:mod:`cxrgen.report.training`)."""

from __future__ import annotations

from pathlib import Path

from cxrgen.report.training import CURVE_FILES, SAMPLE_FILES, find_figures, tile_figures


def report_training(model_dirs: dict[str, Path | str], curves_path: Path | str, samples_path: Path | str,
                    sample_grids: dict[str, Path | str] | None = None) -> dict:
    """The loss curves and reconstruction/validation grids of ``model_dirs`` and the sample grids ``sample_grids``
    (``{model name: png}``); returns the number of tiles of each figure."""
    curves = tile_figures(find_figures(model_dirs, CURVE_FILES), curves_path)
    grids = find_figures(model_dirs, SAMPLE_FILES)
    grids.update({f"{model}: samples": Path(path) for model, path in (sample_grids or {}).items()})
    samples = tile_figures(grids, samples_path, columns=2, tile_inches=6.0)
    return {"curves": curves, "sample_grids": samples}
