"""The DDL-CXR ICU cohort from MIMIC-IV + MIMIC-CXR (arXiv 2410.17918; its ``pre_processing.py`` on top of the
mimic3-benchmarks / MedFuse extraction; public code github.com/Chenliu-svg/DDL-CXR).

Stays (in this order, each drop counted by reason): ICU stays with admission and times -> no transfer between care
units (``first_careunit == last_careunit``) -> admissions with exactly one remaining ICU stay (the benchmark drops
transfers first, then counts stays per admission) -> adults (age at ICU admission = ``anchor_age`` + years since
``anchor_year`` >= ``min_age``) -> ICU length of stay > ``min_los_hours`` -> some EHR value charted in the first
``prediction_hours`` -> a usable frontal image at most ``prediction_hours`` after admission (the *prediction stays*).

Images: one per study (the latest-listed frontal image of the view ``views``, by StudyDate/StudyTime then dicom id),
present in the unified store (its image id is the store's), taken at ``image_window_hours`` around the admission of
a cohort stay of the same subject. The *last image* of a prediction stay is its latest such image at or before the
prediction time. *Pairs* (the LDM's training data) are ordered image pairs within a stay that passed the EHR step,
``min_pair_gap_hours`` apart, with at least ``min_pair_ehr_bins`` hourly bins between them: bins
``[max(0, floor(prior)), min(series_hours, floor(later)))``, i.e. whole hours after ICU admission that end before the
later image was taken.

Labels of the later image: MIMIC-CXR CheXpert labels with the explicit binary policy (1 -> 1.0, 0 -> 0.0, -1
uncertain and blank -> NaN, masked in losses); DDL-CXR's public code instead recodes them 0..3 and feeds them to a
binary loss. Outcomes: in-hospital mortality (``hospital_expire_flag``, or a ``deathtime`` recorded for the
admission) and the 25 benchmark phenotypes of the admission's diagnoses (:mod:`cxrgen.icu.phenotypes`, code table
``phenotype_table``). Splits: the unified store's patient split, so no test patient of the ICU task is ever seen by the
autoencoder or the LDM.

Outputs carry pseudonymised keys and hours relative to ICU admission only (no raw ids, no dates).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.icu import mimic_iv, timeseries
from cxrgen.icu.phenotypes import PHENOTYPE_COLUMNS, load_phenotype_table, phenotype_matrix
from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS, apply_label_policy
from cxrgen.privacy import pseudonym
from cxrgen.sources.files import find_table

log = logging.getLogger(__name__)

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
SPLITS = ("train", "val", "test")
PAIR_LABEL_COLUMNS: tuple[str, ...] = tuple(f"label_{c}" for c in LABEL_COLUMNS)
LAST_IMAGE_BINS = ((12.0, "<12"), (24.0, "12-24"), (36.0, "24-36"), (np.inf, ">=36"))
STAY_COLUMNS = ("stay_key", "patient_pid", "split", "age", "sex", "los_hours", "mortality", *PHENOTYPE_COLUMNS,
                "last_image_id", "last_image_hours", "hours_since_last_image", "last_image_bin")
PAIR_COLUMNS = ("pair_key", "stay_key", "patient_pid", "split", "prior_image_id", "later_image_id", "prior_hours",
                "later_hours", "ehr_start_bin", "ehr_end_bin", *PAIR_LABEL_COLUMNS)

# DDL-CXR's committed split CSVs (data_pre/ in github.com/Chenliu-svg/DDL-CXR, MIMIC-IV v2.0).
PUBLISHED = {
    "mimic_iv_version": "v2.0",
    "prediction_stays": {"train": 5142, "val": 861, "test": 1483},
    "prediction_subjects": {"train": 4538, "val": 757, "test": 1324},
    "mortality_rate": {"train": 0.145, "val": 0.144, "test": 0.148},
    "pairs": {"train": 8545, "val": 1392, "test": 2353},
    "pair_ehr_hours_median": 24,
}


@dataclass
class Cohort:
    stays: pd.DataFrame  # STAY_COLUMNS
    pairs: pd.DataFrame  # PAIR_COLUMNS
    ehr_keys: np.ndarray  # stay keys of the series rows
    values: np.ndarray  # [N, T, 76] float32
    static: np.ndarray  # [N, 2] float32: age / 100, sex (M = 1)
    observed: np.ndarray  # [N, T, 17] bool
    normalisation: dict
    report: dict = field(default_factory=dict)


# ---- stays ---------------------------------------------------------------------------------------------------------
def select_stays(patients: pd.DataFrame, admissions: pd.DataFrame, icustays: pd.DataFrame, cfg: dict
                 ) -> tuple[pd.DataFrame, list[dict]]:
    """The stays passing the demographic and length-of-stay filters, with age, sex, LOS, mortality; and the
    per-step counts ``[{step, stays, dropped, reason}]``."""
    steps: list[dict] = []
    stays = icustays.merge(admissions, on=["subject_id", "hadm_id"], how="left").merge(
        patients, on="subject_id", how="left")
    steps.append({"step": "icu_stays", "stays": len(stays)})

    def keep(mask: pd.Series, step: str, reason: str) -> None:
        nonlocal stays
        steps.append({"step": step, "stays": int(mask.sum()), "dropped": int((~mask).sum()), "reason": reason})
        stays = stays[mask.to_numpy()].copy()

    keep(stays["intime"].notna() & stays["outtime"].notna() & stays["admittime"].notna()
         & stays["anchor_age"].notna() & stays["gender"].notna(), "with_admission_and_times", "missing_record")
    keep(stays["first_careunit"] == stays["last_careunit"], "no_transfer", "transfer")
    stays_per_admission = stays.groupby("hadm_id")["stay_id"].transform("size")
    keep(stays_per_admission == 1, "one_stay_per_admission", "multiple_stays_in_admission")
    stays["age"] = (stays["anchor_age"] + stays["intime"].dt.year - stays["anchor_year"]).astype("float64")
    keep(stays["age"] >= cfg["min_age"], "adult", "under_age")
    stays["los_hours"] = (stays["outtime"] - stays["intime"]).dt.total_seconds() / 3600.0
    keep(stays["los_hours"] > cfg["min_los_hours"], "los_over_min", "los_too_short")
    died = (stays["hospital_expire_flag"].fillna(0).astype(int) == 1) | stays["deathtime"].notna()
    stays["mortality"] = died.astype(np.int64)
    stays["sex"] = stays["gender"].astype(str).str.upper().str[0]
    return stays.reset_index(drop=True), steps


# ---- images --------------------------------------------------------------------------------------------------------
def study_datetime(date: pd.Series, time: pd.Series) -> pd.Series:
    """MIMIC-CXR ``StudyDate`` (YYYYMMDD) + ``StudyTime`` (HHMMSS.fff, leading zeros dropped) as timestamps."""
    day = pd.to_datetime(pd.to_numeric(date, errors="coerce").astype("Int64").astype("string"), format="%Y%m%d",
                         errors="coerce")
    t = pd.to_numeric(time, errors="coerce")
    seconds = (t // 10000) * 3600 + (t // 100 % 100) * 60 + t % 100
    return day + pd.to_timedelta(seconds, unit="s")


def read_image_metadata(mimic_cxr_root: Path | str) -> pd.DataFrame:
    path = find_table(Path(mimic_cxr_root), METADATA_CSV)
    if path is None:
        raise FileNotFoundError(f"{METADATA_CSV}[.gz] not found under {mimic_cxr_root} (the MIMIC-CXR root, config "
                                f"key sources.mimic.root); it gives each image's ViewPosition, StudyDate and StudyTime")
    meta = pd.read_csv(path, usecols=["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"],
                       dtype={"dicom_id": str, "subject_id": "int64", "study_id": "int64", "ViewPosition": str})
    meta["time"] = study_datetime(meta["StudyDate"], meta["StudyTime"])
    return meta.drop(columns=["StudyDate", "StudyTime"])


def candidate_images(stays: pd.DataFrame, meta: pd.DataFrame, store_image_ids: set[str], salt: bytes, cfg: dict
                     ) -> tuple[pd.DataFrame, dict[str, int]]:
    """(stay_id, image_id, study_id, hours) of every usable image inside a stay's window, and the outcome of every
    metadata image (``used`` or the first reason it was not)."""
    meta = meta.copy()
    meta["image_id"] = ["mimic-" + pseudonym(salt, "mimic/image", d) for d in meta["dicom_id"]]
    outcome = pd.Series("used", index=meta.index, dtype=object)

    def reject(mask: pd.Series, reason: str) -> None:
        outcome[(outcome == "used") & mask] = reason

    views = {v.upper() for v in cfg["views"]}
    reject(~meta["ViewPosition"].fillna("").str.strip().str.upper().isin(views), "not_" + "_".join(sorted(views)).lower())
    reject(meta["time"].isna(), "no_study_time")
    eligible = meta[outcome == "used"].sort_values(["study_id", "time", "dicom_id"])
    duplicate = eligible.index.difference(eligible.drop_duplicates("study_id", keep="last").index)
    reject(meta.index.isin(duplicate), "duplicate_in_study")
    reject(~meta["image_id"].isin(store_image_ids), "not_in_store")
    reject(~meta["subject_id"].isin(stays["subject_id"]), "no_cohort_stay")
    usable = meta[outcome == "used"]
    pairs = usable.merge(stays[["subject_id", "stay_id", "intime"]], on="subject_id")
    pairs["hours"] = (pairs["time"] - pairs["intime"]).dt.total_seconds() / 3600.0
    low, high = cfg["image_window_hours"]
    pairs = pairs[(pairs["hours"] >= low) & (pairs["hours"] <= high)]
    reject(~meta.index.isin(usable.index[usable["image_id"].isin(pairs["image_id"])]), "outside_window")
    candidates = pairs[["stay_id", "subject_id", "study_id", "image_id", "hours"]].sort_values(
        ["stay_id", "hours", "image_id"]).reset_index(drop=True)
    return candidates, {k: int(v) for k, v in outcome.value_counts().sort_index().items()}


def last_image_bin(hours_since: pd.Series) -> pd.Series:
    edges = [-np.inf] + [edge for edge, _ in LAST_IMAGE_BINS]
    return pd.cut(hours_since, edges, right=False, labels=[name for _, name in LAST_IMAGE_BINS]).astype(str)


def latest_images(candidates: pd.DataFrame, prediction_hours: float) -> pd.DataFrame:
    """Per stay, the latest candidate image at or before the prediction time."""
    before = candidates[candidates["hours"] <= prediction_hours]
    return before.sort_values(["stay_id", "hours", "image_id"]).groupby("stay_id").tail(1).set_index("stay_id")


def build_pairs(candidates: pd.DataFrame, cfg: dict) -> tuple[pd.DataFrame, dict[str, int]]:
    """Ordered image pairs (prior strictly earlier) within each stay, with their EHR bins; rejected pairs counted."""
    both = candidates.merge(candidates, on="stay_id", suffixes=("_prior", "_later"))
    both = both[both["hours_later"] > both["hours_prior"]].copy()
    gap_ok = both["hours_later"] - both["hours_prior"] >= cfg["min_pair_gap_hours"]
    both["ehr_start_bin"] = np.maximum(0, np.floor(both["hours_prior"])).astype(np.int64)
    both["ehr_end_bin"] = np.minimum(cfg["series_hours"], np.floor(both["hours_later"])).astype(np.int64)
    bins_ok = both["ehr_end_bin"] - both["ehr_start_bin"] >= cfg["min_pair_ehr_bins"]
    counts = {"candidate_pairs": len(both), "gap_too_short": int((~gap_ok).sum()),
              "too_few_ehr_bins": int((gap_ok & ~bins_ok).sum()), "kept": int((gap_ok & bins_ok).sum())}
    return both[gap_ok & bins_ok].reset_index(drop=True), counts


def read_later_labels(mimic_cxr_root: Path | str) -> pd.DataFrame:
    """(subject_id, study_id) -> the 14 labels with the binary policy (uncertain and blank -> NaN)."""
    path = find_table(Path(mimic_cxr_root), CHEXPERT_CSV)
    columns = ["subject_id", "study_id", *CHEXPERT_LABELS]
    if path is None:
        log.warning("%s[.gz] not found under %s: every pair label is NaN (masked)", CHEXPERT_CSV, mimic_cxr_root)
        return pd.DataFrame(columns=["subject_id", "study_id", *PAIR_LABEL_COLUMNS])
    raw = pd.read_csv(path, usecols=columns).drop_duplicates(["subject_id", "study_id"])
    labels = pd.DataFrame(apply_label_policy(raw[list(CHEXPERT_LABELS)], uncertain="ignore", blank="ignore"),
                          columns=list(PAIR_LABEL_COLUMNS), index=raw.index)
    return pd.concat([raw[["subject_id", "study_id"]], labels], axis=1)


# ---- the time series -----------------------------------------------------------------------------------------------
def stay_events(root: Path | str, version: str, stays: pd.DataFrame, n_hours: int, derive_gcs_total: bool,
                chunk_rows: int = mimic_iv.CHUNK_ROWS) -> tuple[pd.DataFrame, dict[str, int]]:
    """Clean channel events (row = position in ``stays``, hours since admission, channel, x) of the stays' first
    ``n_hours``, from chartevents (by stay) and labevents (by subject and time), sorted by time; drops counted."""
    row_of = pd.Series(np.arange(len(stays)), index=stays["stay_id"].to_numpy())
    chart = mimic_iv.read_events(root, "chartevents", timeseries.itemids("chartevents"), stays["stay_id"],
                                 version=version, chunk_rows=chunk_rows)
    chart, drops = timeseries.clean_events(chart, "chartevents")
    chart["row"] = row_of.reindex(chart["stay_id"].to_numpy()).to_numpy()
    labs = mimic_iv.read_events(root, "labevents", timeseries.itemids("labevents"), stays["subject_id"],
                                version=version, chunk_rows=chunk_rows)
    labs, lab_drops = timeseries.clean_events(labs, "labevents")
    drops.update(lab_drops)
    labs = labs.merge(stays[["subject_id"]].assign(row=np.arange(len(stays))), on="subject_id")
    events = pd.concat([chart[["row", "charttime", "channel", "x"]], labs[["row", "charttime", "channel", "x"]]],
                       ignore_index=True)
    if derive_gcs_total:
        events = timeseries.add_gcs_total(events, ["row"])
    intime = stays["intime"].to_numpy()[events["row"].to_numpy()]
    events["hours"] = (events["charttime"].to_numpy() - intime) / np.timedelta64(1, "h")
    inside = (events["hours"] >= 0) & (events["hours"] < n_hours)
    drops["outside_series_window"] = int((~inside & events["charttime"].notna()).sum())
    drops["no_charttime"] = int(events["charttime"].isna().sum())
    events = events[inside].sort_values(["row", "hours"], kind="stable").reset_index(drop=True)
    return events, {k: int(v) for k, v in sorted(drops.items())}


# ---- the whole cohort ----------------------------------------------------------------------------------------------
def _stay_key(salt: bytes, stay_id: int) -> str:
    return "icu-" + pseudonym(salt, "mimic-iv/stay", str(stay_id))


def check_config(cfg: dict) -> None:
    low, high = cfg["image_window_hours"]
    if not low < high:
        raise ValueError(f"icu.cohort.image_window_hours = {[low, high]}: the start must be before the end")
    if cfg["series_hours"] < max(cfg["prediction_hours"], high):
        raise ValueError(f"icu.cohort.series_hours = {cfg['series_hours']} must cover the prediction time "
                         f"(icu.cohort.prediction_hours = {cfg['prediction_hours']}) and the image window's end "
                         f"(icu.cohort.image_window_hours[1] = {high})")


def build_cohort(mimic_iv_root: Path | str, mimic_cxr_root: Path | str, store_index: pd.DataFrame, cfg: dict,
                 salt: bytes, chunk_rows: int = mimic_iv.CHUNK_ROWS) -> Cohort:
    """The cohort of ``cfg`` (config section ``icu.cohort``) from the MIMIC-IV tables under ``mimic_iv_root``, the
    MIMIC-CXR metadata under ``mimic_cxr_root`` and the unified store's index (image_id, patient_pid, split)."""
    check_config(cfg)
    phenotype_table = load_phenotype_table(cfg.get("phenotype_table"))  # a malformed user table fails before the reads
    version = mimic_iv.detect_version(mimic_iv_root)
    log.info("MIMIC-IV %s layout at %s", version, mimic_iv_root)
    stays, steps = select_stays(*(mimic_iv.read_table(mimic_iv_root, t, version)
                                  for t in ("patients", "admissions", "icustays")), cfg)

    n_hours = int(cfg["series_hours"])
    events, event_drops = stay_events(mimic_iv_root, version, stays, n_hours, cfg["derive_gcs_total"], chunk_rows)
    early = events[events["hours"] < cfg["prediction_hours"]]
    has_ehr = np.isin(np.arange(len(stays)), early["row"].unique())
    steps.append({"step": "ehr_before_prediction", "stays": int(has_ehr.sum()), "dropped": int((~has_ehr).sum()),
                  "reason": "no_ehr_before_prediction"})
    keep_rows = np.flatnonzero(has_ehr)
    stays = stays.iloc[keep_rows].reset_index(drop=True)
    events = events[events["row"].isin(keep_rows)].copy()
    events["row"] = pd.Series(np.arange(len(keep_rows)), index=keep_rows).reindex(events["row"]).to_numpy()

    mimic_store = store_index[store_index["image_id"].str.startswith("mimic-")]
    split_of = mimic_store.groupby("patient_pid")["split"].agg(lambda s: sorted(set(s)))
    if (split_of.map(len) > 1).any():
        raise ValueError("the store index puts a MIMIC patient in several splits; rebuild it (rule unify_store)")
    split_of = split_of.map(lambda s: s[0])
    stays["patient_pid"] = ["mimic-" + pseudonym(salt, "mimic/patient", str(s)) for s in stays["subject_id"]]
    stays["split"] = stays["patient_pid"].map(split_of)
    stays["stay_key"] = [_stay_key(salt, s) for s in stays["stay_id"]]

    meta = read_image_metadata(mimic_cxr_root)
    candidates, image_outcomes = candidate_images(stays, meta, set(mimic_store["image_id"]), salt, cfg)
    last = latest_images(candidates, cfg["prediction_hours"])
    with_image = stays["stay_id"].isin(last.index)
    steps.append({"step": "prediction_stays", "stays": int(with_image.sum()), "dropped": int((~with_image).sum()),
                  "reason": "no_image_before_prediction"})

    prediction = stays[with_image].copy()
    prediction[list(PHENOTYPE_COLUMNS)] = phenotype_matrix(
        mimic_iv.read_table(mimic_iv_root, "diagnoses_icd", version), prediction["hadm_id"].astype("int64"),
        phenotype_table).to_numpy()
    prediction["last_image_id"] = prediction["stay_id"].map(last["image_id"])
    prediction["last_image_hours"] = prediction["stay_id"].map(last["hours"]).astype("float64")
    prediction["hours_since_last_image"] = cfg["prediction_hours"] - prediction["last_image_hours"]
    prediction["last_image_bin"] = last_image_bin(prediction["hours_since_last_image"])

    pair_rows, pair_counts = build_pairs(candidates, cfg)
    pair_rows = pair_rows.merge(stays[["stay_id", "stay_key", "patient_pid", "split"]], on="stay_id")
    pair_rows = pair_rows.merge(read_later_labels(mimic_cxr_root).rename(
        columns={"subject_id": "subject_id_later", "study_id": "study_id_later"}),
        on=["subject_id_later", "study_id_later"], how="left")
    pair_rows["pair_key"] = ["pair-" + pseudonym(salt, "mimic-iv/pair", f"{s}/{a}/{b}") for s, a, b in
                             zip(pair_rows["stay_id"], pair_rows["image_id_prior"], pair_rows["image_id_later"],
                                 strict=True)]
    pairs = pair_rows.rename(columns={"image_id_prior": "prior_image_id", "image_id_later": "later_image_id",
                                      "hours_prior": "prior_hours", "hours_later": "later_hours"})
    pairs = pairs[list(PAIR_COLUMNS)].sort_values(["split", "stay_key", "prior_hours", "later_hours"])

    series_rows = np.flatnonzero(with_image.to_numpy() | stays["stay_key"].isin(pairs["stay_key"]).to_numpy())
    raw = timeseries.discretise(events["row"].to_numpy(), events["hours"].to_numpy(), events["channel"].to_numpy(),
                                events["x"].to_numpy(), len(stays), n_hours)[series_rows]
    series_stays = stays.iloc[series_rows]
    normalisation = timeseries.fit_normalisation(raw, (series_stays["split"] == "train").to_numpy())
    values, observed = timeseries.encode(raw, normalisation)
    static = np.stack([series_stays["age"].to_numpy() / 100.0, (series_stays["sex"] == "M").to_numpy()], axis=1)

    stays_out = prediction[list(STAY_COLUMNS)].sort_values(["split", "stay_key"]).reset_index(drop=True)
    report = cohort_report(version, steps, image_outcomes, event_drops, pair_counts, stays_out, pairs, cfg,
                           n_unsplit=int(prediction["split"].isna().sum()))
    return Cohort(stays=stays_out, pairs=pairs.reset_index(drop=True),
                  ehr_keys=series_stays["stay_key"].to_numpy().astype(str), values=values,
                  static=static.astype(np.float32), observed=observed, normalisation=normalisation, report=report)


def cohort_report(version: str, steps: list[dict], image_outcomes: dict, event_drops: dict, pair_counts: dict,
                  stays: pd.DataFrame, pairs: pd.DataFrame, cfg: dict, n_unsplit: int) -> dict:
    """cohort.json: version, counts per filter step, per-split counts and rates, the published counts alongside."""
    def per_split(frame: pd.DataFrame, fn) -> dict:
        return {s: fn(frame[frame["split"] == s]) for s in SPLITS}

    return {
        "mimic_iv_version": version,
        "settings": dict(cfg),
        "stay_steps": steps,
        "image_outcomes": image_outcomes,
        "event_drops": event_drops,
        "pair_steps": pair_counts,
        "stays_without_store_split": n_unsplit,
        "prediction_stays": per_split(stays, len),
        "prediction_subjects": per_split(stays, lambda f: int(f["patient_pid"].nunique())),
        "mortality_rate": per_split(stays, lambda f: round(float(f["mortality"].mean()), 4) if len(f) else None),
        "pairs": per_split(pairs, len),
        "pair_ehr_hours_median": (float((pairs["ehr_end_bin"] - pairs["ehr_start_bin"]).median())
                                  if len(pairs) else None),
        "last_image_bins": {k: int(v) for k, v in stays["last_image_bin"].value_counts().sort_index().items()},
        "phenotype_prevalence": {c.removeprefix("pheno_"): round(float(stays[c].mean()), 4) if len(stays) else None
                                 for c in PHENOTYPE_COLUMNS},
        "published": PUBLISHED,
    }
