"""Demo NIH ChestX-ray14 in the release layout.

Layout written under ``root``: ``images/<Image Index>`` (8-bit grayscale PNGs, ``1024/downscale`` px square),
``Data_Entry_2017_v2020.csv`` (real rows, byte-identical to the shipped table), ``train_val_list.txt``,
``test_list.txt`` and ``BBox_List_2017.csv`` (real box rows of the sampled images, header kept verbatim).

Official test membership is not in the shipped Data_Entry table. Google's adjudicated labels
(``google2019_nih-chest-xray-labels.csv.gz``, Majkowska et al., Radiology 2020) are taken to have drawn their test
images from the official NIH test split and their validation images from train_val (as we read the paper; not
checkable offline; the two sets are patient-disjoint in the shipped file), so sampled patients found there keep that
side; other patients go to the test list with probability 0.2 (demo choice, by patient).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.demo import noise as demo_noise
from cxrgen.demo.badfiles import IMAGE_FILE_MIX, plan_bad_files
from cxrgen.demo.common import DemoContext, txrv_data_dir
from cxrgen.demo.films import vary_acquisition
from cxrgen.demo.phantom import PhantomSpec, render_phantom
from cxrgen.demo.sampling import image_pixels, phantom_seed, read_shipped, sample_patients, save_image, write_table
from cxrgen.sources.nih import NIH_TO_CHEXPERT, RELEASE_PNG_WIDTH, TEST_LIST, TRAIN_VAL_LIST

DATA_ENTRY = "Data_Entry_2017_v2020.csv"
BBOX_LIST = "BBox_List_2017.csv"
DEMO_TEST_SHARE = 0.2

def nih_findings(finding_labels: str) -> dict[str, str]:
    """NIH findings -> CheXpert-named phantom findings (no laterality in NIH labels)."""
    names = [name.strip() for name in finding_labels.split("|")]
    return {NIH_TO_CHEXPERT[n]: "" for n in names if n in NIH_TO_CHEXPERT and n != "No Finding"}


def _official_side(patients: np.ndarray, ctx: DemoContext) -> dict[str, str]:
    google = pd.read_csv(txrv_data_dir() / "google2019_nih-chest-xray-labels.csv.gz", dtype=str,
                         usecols=["Patient ID", "Set Id"])
    known = dict(zip(google["Patient ID"].str.strip(), google["Set Id"].str.strip(), strict=True))
    rng = ctx.rng("nih", "test_list")
    side = {}
    for patient in patients:  # sorted, so the draws are deterministic
        draw = rng.random() < DEMO_TEST_SHARE
        side[patient] = known.get(patient) or ("test" if draw else "val")
    return {p: ("test" if s == "test" else "train_val") for p, s in side.items()}


def write(root: Path, n_images: int, ctx: DemoContext) -> None:
    """Write a demo ChestX-ray14 of ``n_images`` sampled real rows under ``root``."""
    root = Path(root)
    table = read_shipped(f"{DATA_ENTRY}.gz")
    is_normal = (table["Finding Labels"].str.strip() == "No Finding").to_numpy()
    rows = table.iloc[sample_patients(table["Patient ID"], is_normal, n_images, ctx.rng("nih", "rows"))]
    rows = rows.reset_index(drop=True)
    keys = rows["Image Index"].tolist()
    bad = plan_bad_files(keys, ctx.bad_fraction, ctx.rng("nih", "bad"), IMAGE_FILE_MIX)
    noisy = demo_noise.plan_for(ctx, "nih", keys, bad)

    size = max(16, int(round(RELEASE_PNG_WIDTH / ctx.downscale)))
    for record in rows.to_dict("records"):
        key = record["Image Index"]
        kind = bad.get(key)
        if kind == "missing_file":
            continue
        # effective spacing of the resized PNG, as the adapter reports it
        spacing = float(record["OriginalImagePixelSpacing[x"]) * float(record["OriginalImage[Width"]) / size
        spec = PhantomSpec(view=record["View Position"] if record["View Position"] in ("PA", "AP") else "PA",
                           height_px=size, width_px=size, spacing_mm=spacing,
                           sex=record["Patient Gender"] if record["Patient Gender"] in ("M", "F") else "U",
                           age=float(record["Patient Age"]), findings=nih_findings(record["Finding Labels"]),
                           seed=phantom_seed(ctx, "nih", record["Patient ID"]))  # one anatomy per patient
        image = vary_acquisition(render_phantom(spec), ctx.rng("nih", "acquisition", key))
        image = demo_noise.inject(ctx, "nih", key, noisy.get(key), image, f"images/{key}")
        save_image(root / "images" / key, image_pixels(image, kind), "PNG", kind)

    listed = rows[[bad.get(k) != "orphan_file" for k in keys]]
    write_table(listed, root / DATA_ENTRY)
    side = _official_side(np.array(sorted(set(listed["Patient ID"]))), ctx)
    is_test = listed["Patient ID"].map(side).eq("test").to_numpy()
    (root / TEST_LIST).write_text("".join(f"{k}\n" for k in listed["Image Index"][is_test]))
    (root / TRAIN_VAL_LIST).write_text("".join(f"{k}\n" for k in listed["Image Index"][~is_test]))

    with gzip.open(txrv_data_dir() / f"{BBOX_LIST}.gz", "rt", newline="") as fh:
        lines = fh.read().splitlines(keepends=True)
    wanted = set(listed["Image Index"])
    (root / BBOX_LIST).write_text(lines[0] + "".join(ln for ln in lines[1:] if ln.split(",", 1)[0] in wanted))
