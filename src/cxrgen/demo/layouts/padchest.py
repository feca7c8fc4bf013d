"""Demo PadChest in the BIMCV release layout.

Layout written under ``root``: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (real rows of the shipped
table, same 36 columns including the unnamed index column) and ``<ImageDir>/<ImageID>`` 16-bit grayscale PNGs holding
``BitsStored_DICOM``-bit values (0 … 2**bits − 1), MONOCHROME2.

The demo films are ``downscale`` times smaller, so in the written CSV ``Rows_DICOM``/``Columns_DICOM`` are divided and
``SpatialResolution_DICOM`` (when present) multiplied by ``downscale``; every other cell is the real value. Rows without
a spacing are rendered at 0.15 mm × downscale (the median-ish real value, offline-data.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from cxrgen.demo import noise as demo_noise
from cxrgen.demo.badfiles import IMAGE_FILE_MIX, plan_bad_files
from cxrgen.demo.common import DemoContext
from cxrgen.demo.films import vary_acquisition
from cxrgen.demo.phantom import PhantomSpec, render_phantom
from cxrgen.demo.sampling import image_pixels, phantom_seed, read_shipped, sample_patients, save_image, write_table
from cxrgen.sources.padchest import CSV_NAME, PADCHEST_SECOND_LABEL, PADCHEST_TO_CHEXPERT, PROJECTION_TO_VIEW

DEFAULT_SPACING_MM = 0.15


def _side(locations: list[str]) -> str:
    left = any("left" in loc for loc in locations)
    right = any("right" in loc for loc in locations)
    if (left and right) or any("bilateral" in loc for loc in locations):
        return "bilateral"
    return "left" if left else ("right" if right else "")


def _merge_sides(a: str, b: str) -> str:
    if a == b or not b:
        return a
    return b if not a else "bilateral"


def padchest_findings(by_sentence: str) -> dict[str, str]:
    """``LabelsLocalizationsBySentence`` -> CheXpert-named phantom findings with laterality from the sentence's
    ``loc left``/``loc right``/``loc … bilateral`` terms (both sides across sentences -> bilateral)."""
    try:
        sentences = ast.literal_eval(by_sentence)
    except (ValueError, SyntaxError):
        return {}
    if sentences and all(isinstance(item, str) for item in sentences):
        sentences = [sentences]  # single-sentence reports are stored as a flat list
    findings: dict[str, str] = {}
    for sentence in sentences:
        terms = [str(t).strip().lower() for t in sentence]
        side = _side([t for t in terms if t.startswith("loc ")])
        for term in terms:
            for label in (PADCHEST_TO_CHEXPERT.get(term), PADCHEST_SECOND_LABEL.get(term)):
                if label is None or label == "No Finding":
                    continue
                findings[label] = _merge_sides(findings[label], side) if label in findings else side
    return findings


def write(root: Path, n_images: int, ctx: DemoContext) -> None:
    """Write a demo PadChest of ``n_images`` sampled real rows under ``root``."""
    root = Path(root)
    table = read_shipped(f"{CSV_NAME}.gz")
    is_normal = (table["Labels"].str.strip() == "['normal']").to_numpy()
    rows = table.iloc[sample_patients(table["PatientID"], is_normal, n_images, ctx.rng("padchest", "rows"))].copy()

    scale = float(ctx.downscale)
    height = (rows["Rows_DICOM"].astype(float) / scale).round().clip(lower=16).astype(int)
    width = (rows["Columns_DICOM"].astype(float) / scale).round().clip(lower=16).astype(int)
    spacing = rows["SpatialResolution_DICOM"].str.strip()
    has_spacing = ~spacing.isin(["", "None", "nan", "NaN"])
    rows["Rows_DICOM"], rows["Columns_DICOM"] = height.astype(str), width.astype(str)
    rows.loc[has_spacing, "SpatialResolution_DICOM"] = [f"{float(s) * scale:.6g}" for s in spacing[has_spacing]]

    keys = rows["ImageID"].tolist()
    bad = plan_bad_files(keys, ctx.bad_fraction, ctx.rng("padchest", "bad"), IMAGE_FILE_MIX)
    noisy = demo_noise.plan_for(ctx, "padchest", keys, bad)
    for record in rows.to_dict("records"):
        key = record["ImageID"]
        kind = bad.get(key)
        if kind == "missing_file":
            continue
        view = PROJECTION_TO_VIEW.get(record["Projection"].strip().upper(), "UNKNOWN")
        try:
            mm = float(record["SpatialResolution_DICOM"])
        except ValueError:
            mm = DEFAULT_SPACING_MM * scale
        try:
            age = float(record["StudyDate_DICOM"][:4]) - float(record["PatientBirth"])
        except ValueError:
            age = 50.0
        spec = PhantomSpec(view=view if view != "UNKNOWN" else "PA", height_px=int(record["Rows_DICOM"]),
                           width_px=int(record["Columns_DICOM"]), spacing_mm=mm,
                           sex=record["PatientSex_DICOM"] if record["PatientSex_DICOM"] in ("M", "F") else "U",
                           age=age, findings=padchest_findings(record["LabelsLocalizationsBySentence"]),
                           seed=phantom_seed(ctx, "padchest", record["PatientID"]))  # one anatomy per patient
        image = vary_acquisition(render_phantom(spec), ctx.rng("padchest", "acquisition", key))
        image = demo_noise.inject(ctx, "padchest", key, noisy.get(key), image, f"{record['ImageDir']}/{key}")
        pixels = image_pixels(image, kind, bits_stored=int(record["BitsStored_DICOM"]), dtype=np.uint16)
        save_image(root / record["ImageDir"] / key, pixels, "PNG", kind)

    write_table(rows[[bad.get(k) != "orphan_file" for k in keys]], root / CSV_NAME)
