"""Demo CheXpert in the "small" release layout.

Layout written under ``root``: ``CheXpert-v1.0-small/train.csv``, ``valid.csv`` and
``CheXpert-v1.0-small/{train,valid}/patientNNNNN/studyN/viewN_{frontal,lateral}.jpg`` (8-bit grayscale JPEGs).

- train.csv rows are real rows of the shipped train table, byte-identical (labels keep 1.0/0.0/-1.0/blank).
- valid.csv: a tenth of the sampled patients (at least one) are renumbered from ``patient64541`` on, as the real
  validation patients are, moved to ``valid/`` and given the valid.csv convention of binary labels: positive stays
  ``1.0``, negative, uncertain and blank become ``0.0`` (the real valid labels are radiologist consensus, no blanks).
- One phantom seed per patient: a study's frontal and lateral films and a patient's studies show the same patient
  (the row's findings select what is drawn; each film is its own acquisition, :func:`cxrgen.demo.films.vary_acquisition`).
- Film size: small-release JPEGs are roughly 320 px wide and 390 px high (sizes vary); the demo divides that by
  ``downscale / 3``, so ``downscale=3`` gives the real small size. The phantom assumes a 390 mm high film (about
  2,500 px × 0.15 mm originals), so anatomy keeps its physical size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrgen.demo import noise as demo_noise
from cxrgen.demo.badfiles import IMAGE_FILE_MIX, plan_bad_files
from cxrgen.demo.common import DemoContext
from cxrgen.demo.films import vary_acquisition
from cxrgen.demo.phantom import PhantomSpec, render_phantom
from cxrgen.demo.sampling import image_pixels, phantom_seed, read_shipped, sample_patients, save_image, write_table
from cxrgen.labels import CHEXPERT_LABELS

RELEASE = "CheXpert-v1.0-small"
SMALL_WIDTH_PX, SMALL_HEIGHT_PX = 320, 390
FILM_HEIGHT_MM = 390.0
FIRST_VALID_PATIENT = 64541  # train patients are 00001-64540 (Irvin et al., AAAI 2019: 65,240 patients in total)
VALID_SHARE = 0.1


def film_size(downscale: float) -> tuple[int, int]:
    """(height, width) of the demo JPEGs."""
    factor = max(downscale / 3.0, 1e-6)
    return max(16, int(round(SMALL_HEIGHT_PX / factor))), max(16, int(round(SMALL_WIDTH_PX / factor)))


def chexpert_findings(record: dict[str, str]) -> dict[str, str]:
    return {name: "" for name in CHEXPERT_LABELS[1:] if record[name].strip() == "1.0"}


def write(root: Path, n_images: int, ctx: DemoContext) -> None:
    """Write a demo CheXpert-v1.0-small of ``n_images`` sampled real rows under ``root``."""
    root = Path(root)
    table = read_shipped("chexpert_train.csv.gz")
    patient = table["Path"].str.extract(r"(patient\d+)", expand=False)
    is_normal = (table["No Finding"] == "1.0").to_numpy()
    rows = table.iloc[sample_patients(patient, is_normal, n_images, ctx.rng("chexpert", "rows"))].copy()
    rows["_patient"] = rows["Path"].str.extract(r"(patient\d+)", expand=False)

    patients = sorted(set(rows["_patient"]))
    n_valid = max(1, int(round(VALID_SHARE * len(patients)))) if len(patients) > 1 else 0
    valid = sorted(ctx.rng("chexpert", "valid").choice(patients, size=n_valid, replace=False).tolist())
    renumber = {p: f"patient{FIRST_VALID_PATIENT + i:05d}" for i, p in enumerate(valid)}
    is_valid = rows["_patient"].isin(valid)
    for p, new in renumber.items():
        mine = rows["_patient"] == p
        rows.loc[mine, "Path"] = rows.loc[mine, "Path"].str.replace(f"/train/{p}/", f"/valid/{new}/", regex=False)
    for name in CHEXPERT_LABELS:
        rows.loc[is_valid, name] = np.where(rows.loc[is_valid, name] == "1.0", "1.0", "0.0")

    keys = rows["Path"].tolist()
    bad = plan_bad_files(keys, ctx.bad_fraction, ctx.rng("chexpert", "bad"), IMAGE_FILE_MIX)
    noisy = demo_noise.plan_for(ctx, "chexpert", keys, bad)
    height, width = film_size(ctx.downscale)
    for record in rows.to_dict("records"):
        kind = bad.get(record["Path"])
        if kind == "missing_file":
            continue
        lateral = record["Frontal/Lateral"] == "Lateral"
        view = "LATERAL" if lateral else (record["AP/PA"] if record["AP/PA"] in ("AP", "PA") else "PA")
        spec = PhantomSpec(view=view, height_px=height, width_px=width, spacing_mm=FILM_HEIGHT_MM / height,
                           sex={"Male": "M", "Female": "F"}.get(record["Sex"], "U"), age=float(record["Age"]),
                           findings=chexpert_findings(record), seed=phantom_seed(ctx, "chexpert", record["_patient"]))
        image = vary_acquisition(render_phantom(spec), ctx.rng("chexpert", "acquisition", record["Path"]))
        image = demo_noise.inject(ctx, "chexpert", record["Path"], noisy.get(record["Path"]), image, record["Path"])
        save_image(root / record["Path"], image_pixels(image, kind), "JPEG", kind)

    listed = rows[[bad.get(k) != "orphan_file" for k in keys]].drop(columns="_patient")
    listed_valid = listed["Path"].str.contains("/valid/", regex=False)
    write_table(listed[~listed_valid], root / RELEASE / "train.csv")
    write_table(listed[listed_valid], root / RELEASE / "valid.csv")
