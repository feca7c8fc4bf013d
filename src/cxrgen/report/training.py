"""Training curves and end-of-training figures of every model, gathered into report figures.

Trainers write their figures inside their (protected, atomic) model directories; the diffusion models' sample grids
are rules of their own (``sample_ldm_grid``, ``sample_dkim_grid``: ``results/reports/training/grids/``). The report
needs plain output files, so rule ``report_training`` (:mod:`cxrgen.stages.report_training`) tiles them into one
figure per kind: loss curves, and sample / reconstruction grids.
"""

from __future__ import annotations

from pathlib import Path

CURVE_FILES = ("loss_curve.png", "loss.png")
SAMPLE_FILES = ("recon_grid.png", "val_grid.png")  # in model directories (autoencoder, SR)


def find_figures(model_dirs: dict[str, Path | str], names: tuple[str, ...]) -> dict[str, Path]:
    """``{model name: first existing file of names}`` for every model directory that has one."""
    found = {}
    for model, directory in model_dirs.items():
        for name in names:
            path = Path(directory) / name
            if path.is_file():
                found[f"{model}: {name.removesuffix('.png')}"] = path
                break
    return found


def tile_figures(figures: dict[str, Path], out_path: Path | str, columns: int = 3, tile_inches: float = 4.0) -> int:
    """One PNG with every figure as a titled tile (row-major); returns the number of tiles. With no figure, a
    figure saying so (the report must never be missing an item)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    items = list(figures.items())
    columns = max(1, min(columns, len(items) or 1))
    rows = max(1, -(-len(items) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(tile_inches * columns, tile_inches * 0.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, path) in zip(axes.flat, items, strict=False):
        ax.imshow(mpimg.imread(path))
        ax.set_title(title, fontsize=9)
    if not items:
        axes[0][0].text(0.5, 0.5, "no figures found", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return len(items)
