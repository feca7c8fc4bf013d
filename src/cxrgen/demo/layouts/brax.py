"""BRAX demo corpus: ``master_spreadsheet_update.csv`` plus DICOMs under
``Anonymized_DICOMs/id_<patient>/Study_<uid>/Series_<uid>/image-<uid>.dcm``.

Patients, studies, views, sex, age and the 14 labels are real CheXpert training rows (BRAX was labelled with the
CheXpert labeler, so its value conventions match), re-keyed with BRAX-style identifiers and 5-year age groups.
Column order, accession-number format and DICOM encodings are plausible choices (see :mod:`cxrgen.sources.brax`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.demo import noise as demo_noise
from cxrgen.demo.badfiles import DICOM_FILM_MIX, plan_bad_files, remove_missing
from cxrgen.demo.common import DemoContext, txrv_data_dir
from cxrgen.demo.films import FilmStyle, demo_size, render, vary_acquisition, write_film
from cxrgen.demo.sampling import phantom_seed
from cxrgen.labels import CHEXPERT_LABELS
from cxrgen.sources.brax import SPREADSHEETS

# (rows, cols, spacing mm): portrait/landscape DR detectors and a CR cassette
_FILMS = [(3072, 3072, 0.139), (2836, 2336, 0.148), (2336, 2836, 0.148), (3480, 4240, 0.1)]


def _digits_uid(rng: np.random.Generator, sep: str) -> str:
    return sep.join(f"{int(v):08d}" for v in rng.integers(0, 10**8, size=5))


def _hex_uid(rng: np.random.Generator) -> str:
    return "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, size=5))


def age_group(age: float) -> str:
    if not np.isfinite(age):
        return ""
    return "85 or more" if age >= 85 else str(int(age // 5 * 5))


def _film_style(rng: np.random.Generator) -> FilmStyle:
    kind = int(rng.integers(4))
    if kind == 0:
        return FilmStyle(bits_stored=14, transfer_syntax="jpeg2000", modality="DX", spacing_tags=("PixelSpacing",),
                         window=(8192.0, 16000.0))
    if kind == 1:
        return FilmStyle(bits_stored=16, transfer_syntax="explicit_le", modality="DX", rescale_slope=1.0,
                         rescale_intercept=-32768.0, spacing_tags=(), window=(0.0, 60000.0))
    if kind == 2:
        return FilmStyle(bits_stored=12, transfer_syntax="implicit_le", photometric="MONOCHROME1", modality="CR",
                         spacing_tags=("ImagerPixelSpacing",))
    return FilmStyle(bits_stored=10, transfer_syntax="jpeg2000_lossless", modality="CR", spacing_tags=("PixelSpacing",),
                     voi_lut_sequence=True)


def sample_chexpert_images(n_images: int, rng: np.random.Generator) -> pd.DataFrame:
    """Whole CheXpert patients (all their studies/images) until ``n_images`` images, as rows of the real CSV."""
    table = pd.read_csv(txrv_data_dir() / "chexpert_train.csv.gz")
    parts = table["Path"].str.extract(r"(patient\d+)/(study\d+)/")
    table["patient"], table["study"] = parts[0], parts[1]
    patients = table["patient"].unique()
    picked, total = [], 0
    for i in rng.permutation(len(patients)):
        if total >= n_images:
            break
        picked.append(patients[i])
        total += int((table["patient"] == patients[i]).sum())
    rows = table[table["patient"].isin(picked)]
    rows = rows.assign(order=rows["patient"].map({p: k for k, p in enumerate(picked)}))
    return rows.sort_values(["order", "study", "Path"]).head(n_images).reset_index(drop=True)


def write(root: Path, n_images: int, ctx: DemoContext) -> None:
    root = Path(root)
    rng = ctx.rng("brax", "layout")
    rows = sample_chexpert_images(n_images, rng)
    patient_ids = {p: "id_" + _hex_uid(rng) for p in rows["patient"].unique()}
    studies = {}
    for key in rows[["patient", "study"]].drop_duplicates().itertuples(index=False):
        date = pd.Timestamp(int(rng.integers(2010, 2020)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
        studies[tuple(key)] = {"study_uid": _digits_uid(rng, "."), "series_uid": _digits_uid(rng, "."),
                               "accession": str(int(rng.integers(10**11, 10**12))), "date": date.strftime("%Y%m%d")}
    bad = plan_bad_files(range(len(rows)), ctx.bad_fraction, ctx.rng("brax", "bad_files"), DICOM_FILM_MIX)
    noisy = demo_noise.plan_for(ctx, "brax", range(len(rows)), bad)
    sheet = []
    for i, row in rows.iterrows():
        st = studies[(row["patient"], row["study"])]
        item_rng = ctx.rng("brax", "image", row["Path"])
        image_uid = _digits_uid(item_rng, "-")
        rel_dir = f"{patient_ids[row['patient']]}/Study_{st['study_uid']}/Series_{st['series_uid']}"
        frontal_view = row["AP/PA"] if isinstance(row["AP/PA"], str) else ""
        view = "L" if row["Frontal/Lateral"] == "Lateral" else frontal_view
        if item_rng.random() < 0.03:
            view = ""  # BRAX leaves ViewPosition blank on some rows
        render_view = {"L": "LATERAL", "LL": "LATERAL", "RL": "LATERAL"}.get(view, view or "PA")
        sex = {"Male": "M", "Female": "F"}.get(row["Sex"], "O")
        rows_px, cols_px, spacing = _FILMS[int(item_rng.integers(len(_FILMS)))]
        h, w, demo_spacing = demo_size(rows_px, cols_px, spacing, ctx)
        findings = {k: "" for k in CHEXPERT_LABELS if k != "No Finding" and row[k] == 1.0}
        item_rng.integers(2**31)  # was the film's own phantom seed; still drawn so the later draws keep their values
        pixels = render(render_view, h, w, demo_spacing, findings, seed=phantom_seed(ctx, "brax", row["patient"]),
                        sex=sex, age=float(row["Age"]))  # one anatomy per patient
        pixels = vary_acquisition(pixels, ctx.rng("brax", "acquisition", row["Path"]))
        path = root / "Anonymized_DICOMs" / rel_dir / f"image-{image_uid}.dcm"
        pixels = demo_noise.inject(ctx, "brax", row["Path"], noisy.get(i), pixels, path.relative_to(root).as_posix())
        kind = bad.get(i)
        write_film(path, pixels, _film_style(item_rng), demo_spacing, view_position=view or None,
                   patient_id=patient_ids[row["patient"]], phi=ctx.phi.fake_person(item_rng),
                   uid_seed=("brax", ctx.seed, image_uid), bad_kind=kind,
                   extra={"AccessionNumber": st["accession"], "StudyDate": st["date"], "PatientSex": sex,
                          "PatientAge": f"{int(row['Age']):03d}Y"})
        if kind == "missing_file":
            remove_missing(path)
        if kind == "orphan_file":
            continue
        sheet.append({"PatientID": patient_ids[row["patient"]], "AccessionNumber": st["accession"],
                      "DicomPath": f"Anonymized_DICOMs/{rel_dir}/image-{image_uid}.dcm",
                      "PngPath": f"images/{rel_dir}/image-{image_uid}.png", "PatientSex": sex,
                      "PatientAge": age_group(float(row["Age"])), "StudyDate": st["date"],
                      **{k: row[k] for k in CHEXPERT_LABELS},
                      "ViewPosition": view, "Rows": h, "Columns": w, "Manufacturer": int(item_rng.integers(0, 4))})
    root.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(sheet)
    frame.index.name = None
    frame.to_csv(root / SPREADSHEETS[0], index=True)  # BRAX's spreadsheet starts with an unnamed index column
