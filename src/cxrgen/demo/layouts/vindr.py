"""VinDr-CXR demo corpus in the Kaggle VinBigData layout: ``train/<image_id>.dicom`` and ``train.csv``.

Image ids and their three readers' rows are real (torchxrayvision's ``vinbigdata-train.csv``); half of the images are
drawn from those with a finding (real share: 29 %) so small corpora carry boxes. Boxes are in original pixels; the demo
film is ``downscale`` times smaller, so the CSV boxes are divided by ``downscale`` and the localised findings are drawn
inside them. Original film sizes are not in the CSV: the smallest common VinDr size holding every box is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.demo import noise as demo_noise
from cxrgen.demo.badfiles import DICOM_FILM_MIX, plan_bad_files, remove_missing
from cxrgen.demo.common import DemoContext, txrv_data_dir
from cxrgen.demo.films import FilmStyle, demo_size, render, write_film
from cxrgen.sources.vindr import NO_FINDING, TRAIN_CSV, VINDR_TO_CHEXPERT

# (rows, cols) of detector formats, smallest first; spacing options in mm (None: no spacing tag)
_SIZES = [(2048, 2048), (2500, 2048), (2880, 2304), (3072, 3072), (3408, 2800)]
_SPACINGS = [0.1, 0.139, 0.15, None]
# classes drawn as a local density inside their boxes (heart/aorta size changes are the phantom's job)
_LOCAL = {"Nodule/Mass", "Other lesion", "Lung Opacity", "Infiltration", "Consolidation", "Atelectasis",
          "Calcification", "ILD", "Pulmonary fibrosis", "Pleural effusion", "Pleural thickening"}


def _film_style(rng: np.random.Generator, spacing_given: bool) -> FilmStyle:
    tags = ("PixelSpacing",) if spacing_given else ()
    kind = int(rng.integers(4))
    if kind == 0:
        return FilmStyle(bits_stored=14, photometric="MONOCHROME1", transfer_syntax="jpeg_lossless", modality="DX",
                         spacing_tags=tags)
    if kind == 1:
        return FilmStyle(bits_stored=12, transfer_syntax="jpeg2000_lossless", modality="CR", spacing_tags=tags,
                         window=(2047.0, 4095.0))
    if kind == 2:
        return FilmStyle(bits_stored=16, transfer_syntax="explicit_le", modality="DX", spacing_tags=tags,
                         rescale_slope=2.0, rescale_intercept=-1000.0)
    return FilmStyle(bits_stored=15, photometric="MONOCHROME1", transfer_syntax="rle", modality="DX",
                     spacing_tags=tags, presentation_lut_shape="INVERSE")


def sample_images(table: pd.DataFrame, n_images: int, rng: np.random.Generator) -> list[str]:
    has_finding = table["class_name"].ne(NO_FINDING).groupby(table["image_id"]).any()
    with_f, without_f = has_finding.index[has_finding].to_numpy(), has_finding.index[~has_finding].to_numpy()
    n_with = min(len(with_f), (n_images + 1) // 2)
    picked = list(rng.choice(np.sort(with_f), n_with, replace=False))
    picked += list(rng.choice(np.sort(without_f), n_images - n_with, replace=False))
    return [str(p) for p in picked]


def _film_rows_cols(boxes: pd.DataFrame) -> tuple[int, int]:
    need_y = float(np.nan_to_num(boxes["y_max"].max(), nan=0.0))
    need_x = float(np.nan_to_num(boxes["x_max"].max(), nan=0.0))
    for rows, cols in _SIZES:
        if need_y < rows and need_x < cols:
            return rows, cols
    return int(need_y) + 64, int(need_x) + 64


def _laterality(boxes: pd.DataFrame, cols: int) -> str:
    """Side of the patient from box centres on a PA film (image left = patient right)."""
    centres = (boxes["x_min"] + boxes["x_max"]) / 2
    sides = {"right" if c < cols / 2 else "left" for c in centres.dropna()}
    return "bilateral" if len(sides) == 2 else (sides.pop() if sides else "")


def draw_local_findings(pixels: np.ndarray, boxes: pd.DataFrame) -> np.ndarray:
    """Add a soft elliptical density inside each (demo-scale) box of a localised class."""
    h, w = pixels.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    density = np.zeros_like(pixels)
    for box in boxes[boxes["class_name"].isin(_LOCAL)].itertuples(index=False):
        cy, cx = (box.y_min + box.y_max) / 2, (box.x_min + box.x_max) / 2
        ry, rx = max((box.y_max - box.y_min) / 2, 1.0), max((box.x_max - box.x_min) / 2, 1.0)
        r2 = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        density = np.maximum(density, np.clip(1.0 - r2, 0.0, 1.0))
    return np.clip(pixels + 0.12 * density, 0.0, 1.0).astype(np.float32)


def write(root: Path, n_images: int, ctx: DemoContext) -> None:
    root = Path(root)
    table = pd.read_csv(txrv_data_dir() / "vinbigdata-train.csv.gz")
    rng = ctx.rng("vindr", "layout")
    image_ids = sample_images(table, n_images, rng)
    bad = plan_bad_files(range(len(image_ids)), ctx.bad_fraction, ctx.rng("vindr", "bad_files"), DICOM_FILM_MIX)
    noisy = demo_noise.plan_for(ctx, "vindr", range(len(image_ids)), bad)
    by_image = dict(tuple(table[table["image_id"].isin(image_ids)].groupby("image_id")))
    csv_parts = []
    for i, image_id in enumerate(image_ids):
        item_rng = ctx.rng("vindr", "image", image_id)
        rows_ann = by_image[image_id].copy()
        boxes = rows_ann.dropna(subset=["x_min"])
        rows, cols = _film_rows_cols(boxes)
        spacing = _SPACINGS[int(item_rng.integers(len(_SPACINGS)))]
        h, w, demo_spacing = demo_size(rows, cols, spacing or 0.139, ctx)
        scale_y, scale_x = h / rows, w / cols  # == 1/downscale up to rounding of the film size
        for col, scale, limit in (("x_min", scale_x, w - 1), ("x_max", scale_x, w - 1), ("y_min", scale_y, h - 1),
                                  ("y_max", scale_y, h - 1)):
            rows_ann[col] = np.clip(np.round(rows_ann[col] * scale), 0, limit)
        demo_boxes = rows_ann.dropna(subset=["x_min"])
        findings = {}
        for name, group in demo_boxes.groupby("class_name"):
            label = VINDR_TO_CHEXPERT.get(name)
            if label:
                side = _laterality(group, w)
                findings[label] = side if findings.get(label, side) == side else "bilateral"
        pixels = render("PA", h, w, demo_spacing, findings, seed=int(item_rng.integers(2**31)))
        pixels = draw_local_findings(pixels, demo_boxes)
        kind = bad.get(i)
        file_id = image_id if kind != "orphan_file" else "".join(f"{int(v):08x}" for v in item_rng.integers(0, 2**32, 4))
        path = root / "train" / f"{file_id}.dicom"
        pixels = demo_noise.inject(ctx, "vindr", image_id, noisy.get(i), pixels, path.relative_to(root).as_posix())
        write_film(path, pixels, _film_style(item_rng, spacing is not None), demo_spacing, view_position="PA",
                   patient_id=file_id, phi=ctx.phi.fake_person(item_rng), uid_seed=("vindr", ctx.seed, file_id),
                   bad_kind=kind)
        if kind == "missing_file":
            remove_missing(path)
        if kind != "orphan_file":
            csv_parts.append(rows_ann)  # an orphan's file carries another id, so its real rows stay out
    root.mkdir(parents=True, exist_ok=True)
    pd.concat(csv_parts).to_csv(root / TRAIN_CSV, index=False)
