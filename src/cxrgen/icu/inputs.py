"""Readers of the ICU cohort files (rule build_icu_cohort, ``results/icu/cohort/``) and their joins to the latent
cache, as the DDL-CXR models use them. The formats are the shared contract of issue 13:

- ``stays.parquet``: one prediction stay per row (stay_key, patient_pid, split, age, sex, mortality, pheno_<slug> ×25,
  last_image_id, last_image_hours, hours_since_last_image, last_image_bin);
- ``pairs.parquet``: ordered image pairs within a stay (pair_key, stay_key, split, prior_image_id, later_image_id,
  prior_hours, later_hours, ehr_start_bin, ehr_end_bin, the later image's 14 CheXpert labels 1.0/0.0/NaN);
- ``ehr.npz``: stay_keys [N], values float32 [N, T, 76], static float32 [N, 2], observed bool [N, T, 17], columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrgen.labels import LABEL_COLUMNS

STAYS_FILE, PAIRS_FILE, EHR_FILE = "stays.parquet", "pairs.parquet", "ehr.npz"
PREDICTIONS_FILE = "predictions.parquet"  # in each train_icu_predictor output directory
MORTALITY = "mortality"
PHENOTYPE_PREFIX = "pheno_"
LAST_IMAGE_BINS = ("<12", "12-24", "24-36", ">=36")


@dataclass
class EhrSeries:
    """The cohort's hourly series, addressed by stay_key through :meth:`rows`."""

    stay_keys: np.ndarray
    values: torch.Tensor  # [N, T, F] float32
    static: torch.Tensor  # [N, S] float32
    columns: list[str]

    @property
    def hours(self) -> int:
        return int(self.values.shape[1])

    def rows(self, stay_keys) -> np.ndarray:
        position = {k: i for i, k in enumerate(self.stay_keys.tolist())}
        missing = [k for k in stay_keys if k not in position]
        if missing:
            raise KeyError(f"{len(missing)} stay(s) have no EHR series in ehr.npz, e.g. {missing[:3]}")
        return np.asarray([position[k] for k in stay_keys], dtype=np.int64)


def load_ehr(cohort_dir: Path | str) -> EhrSeries:
    with np.load(Path(cohort_dir) / EHR_FILE, allow_pickle=False) as data:
        keys = np.asarray(data["stay_keys"]).astype(str)
        values = torch.from_numpy(np.asarray(data["values"], dtype=np.float32))
        static = torch.from_numpy(np.asarray(data["static"], dtype=np.float32))
        columns = [str(c) for c in data["columns"]] if "columns" in data.files else []
    if values.ndim != 3 or len(values) != len(keys) or len(static) != len(keys):
        raise ValueError(f"{cohort_dir}/{EHR_FILE}: values {tuple(values.shape)}, static {tuple(static.shape)} and "
                         f"{len(keys)} stay_keys do not match")
    return EhrSeries(stay_keys=keys, values=values, static=static, columns=columns)


def read_stays(cohort_dir: Path | str) -> pd.DataFrame:
    return pd.read_parquet(Path(cohort_dir) / STAYS_FILE)


def read_pairs(cohort_dir: Path | str) -> pd.DataFrame:
    return pd.read_parquet(Path(cohort_dir) / PAIRS_FILE)


def pair_label_columns(pairs: pd.DataFrame) -> list[str]:
    """The pairs' 14 later-image label columns in :data:`cxrgen.labels.LABEL_COLUMNS` order (``lbl_x``,
    ``label_lbl_x`` or ``label_x``)."""
    found = []
    for column in LABEL_COLUMNS:
        bare = column.removeprefix("lbl_")
        for candidate in (column, f"label_{column}", f"label_{bare}"):
            if candidate in pairs.columns:
                found.append(candidate)
                break
        else:
            raise KeyError(f"pairs.parquet has no column for label {column!r} (tried {column}, label_{column}, "
                           f"label_{bare})")
    return found


def pair_labels(pairs: pd.DataFrame) -> torch.Tensor:
    """[P, 14] float32, 1/0 and NaN = uncertain or missing (masked in the loss). Anything else raises: the
    paper code's 0–3 coding must never reach a binary loss."""
    labels = pairs[pair_label_columns(pairs)].to_numpy(dtype=np.float64)
    known = labels[np.isfinite(labels)]
    bad = np.setdiff1d(np.unique(known), [0.0, 1.0])
    if len(bad):
        raise ValueError(f"pair labels must be 1.0, 0.0 or NaN (explicit binary policy), found {bad.tolist()}")
    return torch.from_numpy(labels.astype(np.float32))


def phenotype_columns(stays: pd.DataFrame) -> list[str]:
    return [c for c in stays.columns if c.startswith(PHENOTYPE_PREFIX)]


def task_columns(stays: pd.DataFrame) -> list[str]:
    """Prediction targets: in-hospital mortality, then the phenotypes in file order."""
    return [MORTALITY, *phenotype_columns(stays)]


def prediction_window(stays: pd.DataFrame, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Hourly bins [start, end) from the last image to the prediction time for each stay: start = floor(last image
    hour) clipped at 0, end = ceil(prediction hour) clipped at T; at least one bin. The cohort's own
    ``ehr_start_bin``/``ehr_end_bin`` columns win when stays.parquet has them."""
    if {"ehr_start_bin", "ehr_end_bin"} <= set(stays.columns):
        return (stays["ehr_start_bin"].to_numpy(np.int64), stays["ehr_end_bin"].to_numpy(np.int64))
    last = stays["last_image_hours"].to_numpy(np.float64)
    prediction = last + stays["hours_since_last_image"].to_numpy(np.float64)
    end = np.clip([math.ceil(p - 1e-9) for p in prediction], 1, n_bins).astype(np.int64)
    start = np.clip(np.floor(last), 0, None).astype(np.int64)
    return np.minimum(start, end - 1), end


def last_image_bin(hours_since_last_image) -> np.ndarray:
    """The poster's time-since-last-CXR groups: <12, 12–24, 24–36, ≥36 h."""
    hours = np.asarray(hours_since_last_image, dtype=np.float64)
    return np.asarray(LAST_IMAGE_BINS, dtype=object)[np.digitize(hours, [12.0, 24.0, 36.0])]


def cache_rows(cache, image_ids) -> np.ndarray:
    """Rows of the latent cache (:class:`cxrgen.data.latents.LatentCache`) holding ``image_ids``; missing ids raise."""
    position = dict(zip(cache.index["image_id"].tolist(), cache.index["row"].tolist(), strict=True))
    missing = [i for i in image_ids if i not in position]
    if missing:
        raise KeyError(f"{len(missing)} image(s) are not in the latent cache, e.g. {missing[:3]}; the cohort and "
                       "the cache must come from the same store")
    return np.asarray([position[i] for i in image_ids], dtype=np.int64)


def scaled_latents(cache, rows: np.ndarray, with_std: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Posterior means (and stds) of cache rows times the cache's scaling factor (the LDM's latent space)."""
    scale = cache.scaling_factor
    mean = torch.from_numpy(np.asarray(cache.mean[rows], dtype=np.float32)) * scale
    std = torch.from_numpy(np.asarray(cache.std[rows], dtype=np.float32)) * scale if with_std else None
    return mean, std
