"""Real-row sampling and image saving for the demo writers that copy a shipped metadata table (NIH, CheXpert,
PadChest): byte-exact table reading/writing, whole-patient sampling, per-image phantom seeds, PNG/JPEG saving."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrgen.demo.badfiles import tinted_rgb, truncate_file
from cxrgen.demo.common import DemoContext, txrv_data_dir

NORMAL_SHARE = 0.3  # share of demo images drawn from all-normal patients, so findings dominate the rest
MAX_IMAGES_PER_PATIENT = 4


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
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=int)


def phantom_seed(ctx: DemoContext, source: str, key: str) -> int:
    """The phantom (anatomy) seed of ``key``: every layout keys it by the patient, so all films of one patient show
    one anatomy (patient re-identification on chest films exploits exactly that, Packhäuser et al. 2022)."""
    return int(ctx.rng(source, "phantom", key).integers(2**31))


def image_pixels(image: np.ndarray, kind: str | None, bits_stored: int = 8, dtype: type = np.uint8) -> np.ndarray:
    """A phantom in [0, 1] -> gray ``dtype`` pixels holding ``bits_stored``-bit values (0 … 2**bits − 1), or the
    tinted 8-bit RGB of the ``rgb`` bad kind."""
    if kind == "rgb":
        return tinted_rgb(image)
    return np.round(np.clip(image, 0, 1) * (2**bits_stored - 1)).astype(dtype)


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
