"""Rule ``build_icu_cohort``: the DDL-CXR ICU cohort (prediction stays, image pairs, hourly EHR series) from MIMIC-IV
and MIMIC-CXR, split like the unified store (:mod:`cxrgen.icu.cohort`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.icu.cohort import Cohort, build_cohort
from cxrgen.icu.timeseries import COLUMNS
from cxrgen.privacy import resolve_salt

log = logging.getLogger(__name__)

STORE_COLUMNS = ["image_id", "patient_pid", "split"]


def write_cohort(cohort: Cohort, out_dir: Path | str) -> dict[str, Path]:
    """stays.parquet, pairs.parquet, ehr.npz, normalisation.json and cohort.json under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("stays.parquet", "pairs.parquet", "ehr.npz", "normalisation.json",
                                           "cohort.json")}
    cohort.stays.to_parquet(paths["stays.parquet"], index=False)
    cohort.pairs.to_parquet(paths["pairs.parquet"], index=False)
    np.savez_compressed(paths["ehr.npz"], stay_keys=cohort.ehr_keys.astype(str), values=cohort.values,
                        static=cohort.static, observed=cohort.observed, columns=np.array(COLUMNS, dtype=str))
    paths["normalisation.json"].write_text(json.dumps(cohort.normalisation, indent=1))
    paths["cohort.json"].write_text(json.dumps(cohort.report, indent=1, default=str))
    return paths


def build_icu_cohort(mimic_iv_root: Path | str, mimic_cxr_root: Path | str, store_index: Path | str,
                     out_dir: Path | str, cfg: dict, *, salt_env: str, demo_only: bool) -> dict:
    """Build and write the cohort of ``cfg`` (config section ``icu``: key ``cohort``); returns cohort.json's dict.
    The salt is the ingestion's (:func:`cxrgen.privacy.resolve_salt`), so patient and image ids join the store."""
    salt = resolve_salt(salt_env, demo_only=demo_only)
    index = pd.read_parquet(store_index, columns=STORE_COLUMNS)
    cohort = build_cohort(mimic_iv_root, mimic_cxr_root, index, cfg["cohort"], salt)
    write_cohort(cohort, out_dir)
    log.info("prediction stays %s, pairs %s (published: %s, %s)", cohort.report["prediction_stays"],
             cohort.report["pairs"], cohort.report["published"]["prediction_stays"],
             cohort.report["published"]["pairs"])
    return cohort.report
