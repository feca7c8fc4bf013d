"""Figures every stage draws the same way: image grids and training curves."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_grid(images, row_names: list[str], columns: int, path: Path | str,
              column_titles: list[str] | None = None) -> None:
    """A grid PNG of (N,1,H,W) images in [-1, 1]: ``len(row_names)`` rows × ``columns`` images (row-major), rows
    labelled (and columns titled when ``column_titles`` is given)."""
    plt = _pyplot()
    pixels = ((images.clamp(-1, 1) + 1) / 2).squeeze(1).cpu().numpy()
    rows = len(row_names)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns + 1.6, 1.6 * rows), squeeze=False)
    for r in range(rows):
        for c in range(columns):
            ax = axes[r][c]
            k = r * columns + c
            if k < len(pixels):
                ax.imshow(pixels[k], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(row_names[r], rotation=0, ha="right", va="center", fontsize=8)
            if r == 0 and column_titles and c < len(column_titles):
                ax.set_title(column_titles[c], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass
class Series:
    """One line of a curve panel. ``axis="right"`` puts it on a twin y axis (e.g. recall next to a loss)."""

    label: str
    steps: list[float]
    values: list[float]
    axis: str = "left"
    marker: str | None = None
    linestyle: str = "-"


def series(points: Iterable[dict], key: str, label: str | None = None, **style) -> Series:
    """``key`` over ``step`` from logged points; a step logged twice (a resumed run re-logs the steps after its last
    checkpoint) keeps its last value."""
    by_step = {p["step"]: p[key] for p in points if key in p and p[key] is not None}
    steps = sorted(by_step)
    return Series(label or key, steps, [by_step[s] for s in steps], **style)


@dataclass
class Panel:
    title: str = ""
    lines: list[Series] = field(default_factory=list)
    ylabel: str = "loss"
    log: bool = False
    right_ylabel: str | None = None
    right_ylim: tuple[float, float] | None = None
    right_hlines: list[float] = field(default_factory=list)


def plot_curves(path: Path | str, panels: list[Panel], *, panel_size: tuple[float, float] = (5.0, 3.2),
                dpi: int = 100) -> None:
    """Training curves: one panel per :class:`Panel`, side by side."""
    plt = _pyplot()
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(panel_size[0] * n, panel_size[1]), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=False):
        right = ax.twinx() if any(s.axis == "right" for s in panel.lines) else None
        for line in panel.lines:
            target = right if line.axis == "right" else ax
            if line.steps:
                target.plot(line.steps, line.values, marker=line.marker, linestyle=line.linestyle, lw=1,
                            label=line.label)
        ax.set_xlabel("step")
        ax.set_ylabel(panel.ylabel)
        if panel.log and any(np.all(np.asarray(s.values) > 0) and s.values for s in panel.lines if s.axis == "left"):
            ax.set_yscale("log")
        if panel.title:
            ax.set_title(panel.title, fontsize=9)
        if right is not None:
            for y in panel.right_hlines:
                right.axhline(y, color="grey", linewidth=0.6)
            right.set_ylabel(panel.right_ylabel or "")
            if panel.right_ylim:
                right.set_ylim(*panel.right_ylim)
            right.legend(loc="upper right", fontsize=7)
        if len(panel.lines) > 1 or right is not None:
            ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_loss_history(history: list[dict], path: Path | str, title: str = "training loss", ylabel: str = "loss",
                      key: str = "loss", log: bool = True) -> None:
    """The common case: one logged loss over steps."""
    plot_curves(path, [Panel(title, [series(history, key)], ylabel=ylabel, log=log)])


def title_room(fig) -> float:
    """Top of the tight-layout box that leaves about 0.4 inch for a figure title."""
    return 1.0 - 0.4 / fig.get_figheight()
