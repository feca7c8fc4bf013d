"""The in/outpainting figure (one row per edit and seed: original, mask, result, difference) and its markdown table
(rule ``inpaint_images``, :mod:`cxrgen.stages.inpaint_images`)."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def save_inpainting_grid(rows: list[dict], out_path: Path | str, tile_inches: float = 2.2) -> None:
    """``rows``: ``{"title", "before", "mask", "after"}`` with images [1, H, W] in [-1, 1] and the mask [1, H, W]
    bool. Columns: original, original with the mask in red, result, |result − original| (×2 to show small changes).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ("original", "mask", "result", "|result - original| x2")
    fig, axes = plt.subplots(max(1, len(rows)), len(columns), squeeze=False,
                             figsize=(tile_inches * len(columns), tile_inches * max(1, len(rows)) + 0.3))
    for ax in axes.flat:
        ax.axis("off")
    for r, row in enumerate(rows):
        before = ((row["before"][0] + 1) / 2).clamp(0, 1).numpy()
        after = ((row["after"][0] + 1) / 2).clamp(0, 1).numpy()
        overlay = torch.from_numpy(before)[..., None].repeat(1, 1, 3)
        overlay[row["mask"][0]] = overlay[row["mask"][0]] * 0.5 + torch.tensor([0.5, 0.0, 0.0])
        tiles = (before, overlay.numpy(), after, (2 * abs(after - before)).clip(0, 1))
        for c, tile in enumerate(tiles):
            axes[r][c].imshow(tile, cmap="gray", vmin=0, vmax=1)
            if r == 0:
                axes[r][c].set_title(columns[c], fontsize=8)
        axes[r][0].text(-0.05, 0.5, row["title"], transform=axes[r][0].transAxes, rotation=90, ha="right",
                        va="center", fontsize=7)
    if not rows:
        axes[0][0].text(0.5, 0.5, "no edits configured", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def inpainting_markdown(payload: dict, figure_name: str) -> str:
    """The summary fragment: settings, the figure, and per sample the fidelity outside the mask and the evaluator's
    probability of the edit's finding before and after."""
    s = payload["settings"]
    lines = ["# In- and outpainting (Cheff §5)", "",
             f"RePaint resampling on the DDIM grid of LDM `{payload['ldm']}`: {s['steps']} steps, "
             f"jump length {s['jump_length']}, {s['jump_n_sample']} resamplings "
             f"({payload['model_calls_per_sample']} denoiser calls per sample), guidance {s['guidance_scale']}, "
             f"known pixels pasted back: {'yes' if s['paste_known'] else 'no'}. Outside the mask a result can at best "
             "match the autoencoder round trip of the original (\"AE\" column); the latent cells inpainting keeps "
             "should decode to that round trip (\"kept cells\"; the cells next to the mask are regenerated too; the "
             "decoder's group normalisation pools statistics over the whole image, so a large regenerated region can "
             "shift the kept region's intensity). "
             "p: the in-domain evaluator's probability of the edit's finding on the original, its round trip and the "
             "result.", "",
             f"![in/outpainting]({figure_name})", "",
             "| edit | seed | masked % | PSNR outside, result (dB) | PSNR outside, AE (dB) | PSNR kept cells vs AE "
             "(dB) | max abs outside | finding | p original | p AE | p result |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in payload["samples"]:
        lines.append(
            f"| {row['name']} | {row['seed']} | {100 * row['masked_fraction']:.1f} | {_fmt(row['psnr_outside'], 1)} | "
            f"{_fmt(row['psnr_outside_autoencoder'], 1)} | {_fmt(row['psnr_kept_cells_vs_autoencoder'], 1)} | "
            f"{_fmt(row['max_abs_outside'])} | {row['finding'] or '–'} | {_fmt(row.get('p_before'))} | "
            f"{_fmt(row.get('p_autoencoder'))} | {_fmt(row.get('p_after'))} |")
    lines += ["", f"{payload['seconds']:.1f} s of sampling for {len(payload['samples'])} samples."]
    return "\n".join(lines) + "\n"
