"""Demo NIH ChestX-ray14 in the release layout, plus sampling/bad-file helpers shared by the CheXpert and PadChest
writers.

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

import functools
import gzip
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrgen.demo.common import DemoContext, txrv_data_dir
from cxrgen.demo.phantom import PhantomSpec, render_phantom
from cxrgen.sources.nih import NIH_TO_CHEXPERT, RELEASE_PNG_WIDTH, TEST_LIST, TRAIN_VAL_LIST

DATA_ENTRY = "Data_Entry_2017_v2020.csv"
BBOX_LIST = "BBox_List_2017.csv"
NORMAL_SHARE = 0.3  # share of demo images drawn from all-normal patients, so findings dominate the rest
MAX_IMAGES_PER_PATIENT = 4
DEMO_TEST_SHARE = 0.2
BAD_KINDS = ("truncated", "missing_file", "orphan", "rgb")

# ----------------------------------------------------------------------------------------------------------------------
# shared helpers


def read_shipped(name: str) -> pd.DataFrame:
    """A torchxrayvision metadata table with every value kept as the exact string of the file (round-trips byte for
    byte through :func:`write_table`). Cached per process; callers get a copy."""
    return _read_shipped(name).copy()


@functools.lru_cache(maxsize=4)
def _read_shipped(name: str) -> pd.DataFrame:
    table = pd.read_csv(txrv_data_dir() / name, dtype=str, keep_default_na=False)
    return table.rename(columns={c: "" for c in table.columns if c.startswith("Unnamed: ")})


def write_table(table: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, lineterminator="\n")


def sample_patients(patients: pd.Series, is_normal: np.ndarray, n_images: int, rng: np.random.Generator,
                    normal_share: float = NORMAL_SHARE, max_per_patient: int = MAX_IMAGES_PER_PATIENT) -> np.ndarray:
    """Row positions of ``n_images`` rows drawn whole-patient-wise: about ``normal_share`` of the images from patients
    whose images are all normal, the rest from patients with at least one finding (their positive images plus at most
    one normal one); at most ``max_per_patient`` random images per patient. Returned in table order."""
    codes, _ = pd.factorize(patients.to_numpy(), sort=True)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(codes.max() + 2 if len(codes) else 1))
    all_normal = pd.Series(is_normal).groupby(codes).all().to_numpy()
    quota = {True: int(round(normal_share * n_images))}
    quota[False] = n_images - quota[True]
    chosen: list[np.ndarray] = []
    for normal in (False, True):
        pool = np.flatnonzero(all_normal == normal)
        need = quota[normal]
        for patient in pool[rng.permutation(len(pool))]:
            if need <= 0:
                break
            rows = order[bounds[patient] : bounds[patient + 1]]
            rows = rows[rng.permutation(len(rows))]
            if not normal:  # a finding patient: its positive images, plus one normal one for a mixed history
                positive = rows[~is_normal[rows]][:max_per_patient]
                rows = np.concatenate([positive, rows[is_normal[rows]][: min(1, max_per_patient - len(positive))]])
            take = rows[: min(max_per_patient, need)]
            chosen.append(take)
            need -= len(take)
    picked = np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=int)
    return picked


def plan_bad_files(keys: list[str], bad_fraction: float, rng: np.random.Generator) -> dict[str, str]:
    """``ceil(bad_fraction * n)`` keys -> a bad-file kind, cycling through :data:`BAD_KINDS`."""
    n_bad = min(len(keys), math.ceil(bad_fraction * len(keys))) if bad_fraction > 0 else 0
    picked = rng.choice(len(keys), size=n_bad, replace=False) if n_bad else []
    return {keys[int(i)]: BAD_KINDS[j % len(BAD_KINDS)] for j, i in enumerate(sorted(picked))}


def phantom_seed(ctx: DemoContext, source: str, key: str) -> int:
    return int(ctx.rng(source, "phantom", key).integers(2**31))


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def tinted_rgb(image: np.ndarray) -> np.ndarray:
    """An RGB rendering whose channels differ (a colour screenshot instead of a radiograph)."""
    gray = np.clip(image, 0, 1)
    return to_uint8(np.stack([gray, gray * 0.8, 0.2 + 0.6 * gray], axis=-1))


def truncate_file(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(16, int(len(data) * keep))])


def save_image(path: Path, pixels: np.ndarray, fmt: str, kind: str | None) -> None:
    """Write ``pixels`` (uint8/uint16 gray or uint8 RGB) as PNG/JPEG and apply the ``truncated`` bad kind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "JPEG":
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    else:
        # zlib level 1: the noisy phantoms compress poorly anyway and level 6 triples the demo write time
        Image.fromarray(pixels).save(path, format="PNG", compress_level=1)
    if kind == "truncated":
        truncate_file(path)


# ----------------------------------------------------------------------------------------------------------------------
# NIH


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
    bad = plan_bad_files(keys, ctx.bad_fraction, ctx.rng("nih", "bad"))

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
                           seed=phantom_seed(ctx, "nih", key))
        image = render_phantom(spec)
        pixels = tinted_rgb(image) if kind == "rgb" else to_uint8(image)
        save_image(root / "images" / key, pixels, "PNG", kind)

    listed = rows[[bad.get(k) != "orphan" for k in keys]]
    write_table(listed, root / DATA_ENTRY)
    side = _official_side(np.array(sorted(set(listed["Patient ID"]))), ctx)
    is_test = listed["Patient ID"].map(side).eq("test").to_numpy()
    (root / TEST_LIST).write_text("".join(f"{k}\n" for k in listed["Image Index"][is_test]))
    (root / TRAIN_VAL_LIST).write_text("".join(f"{k}\n" for k in listed["Image Index"][~is_test]))

    with gzip.open(txrv_data_dir() / f"{BBOX_LIST}.gz", "rt", newline="") as fh:
        lines = fh.read().splitlines(keepends=True)
    wanted = set(listed["Image Index"])
    (root / BBOX_LIST).write_text(lines[0] + "".join(ln for ln in lines[1:] if ln.split(",", 1)[0] in wanted))
