"""The DDL-CXR ICU cohort on hand-made MIMIC-IV tables (tests/unit/icu_helpers.py): layouts, stay filters, image
windows, the last image, pairs, splits, label policy, outcomes and the absence of raw ids and dates in the outputs."""

from __future__ import annotations

import json

import icu_helpers as h
import numpy as np
import pandas as pd
import pytest

from cxrgen.icu import mimic_iv
from cxrgen.icu.cohort import PAIR_COLUMNS, PAIR_LABEL_COLUMNS, STAY_COLUMNS, build_cohort, build_pairs, select_stays
from cxrgen.icu.timeseries import N_COLUMNS
from cxrgen.privacy import pseudonym
from cxrgen.stages.build_icu_cohort import build_icu_cohort

CFG = h.COHORT_CFG


def stay_key(stay_id: int) -> str:
    return "icu-" + pseudonym(h.SALT, "mimic-iv/stay", str(stay_id))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("icu")
    return {"v2.0": h.write_mimic_iv(base / "v20", "v2.0", gz=False),
            "v2.2": h.write_mimic_iv(base / "v22", "v2.2", gz=True), "cxr": h.write_mimic_cxr(base / "cxr")}


@pytest.fixture(scope="module")
def cohort(roots):
    return build_cohort(roots["v2.2"], roots["cxr"], h.store_index(), CFG, h.SALT, chunk_rows=7)


def test_both_layouts_are_detected_and_give_the_same_cohort(roots, cohort):
    assert mimic_iv.detect_version(roots["v2.0"]) == "v2.0"
    assert mimic_iv.detect_version(roots["v2.2"]) == "v2.2"
    other = build_cohort(roots["v2.0"], roots["cxr"], h.store_index(), CFG, h.SALT)  # csv, one chunk
    assert other.report["mimic_iv_version"] == "v2.0" and cohort.report["mimic_iv_version"] == "v2.2"
    pd.testing.assert_frame_equal(other.stays, cohort.stays)
    pd.testing.assert_frame_equal(other.pairs, cohort.pairs)
    np.testing.assert_array_equal(other.values, cohort.values)


def test_v1_layout_is_recognised_and_a_wrong_root_is_named(tmp_path):
    (tmp_path / "core").mkdir()
    pd.DataFrame({"subject_id": [1]}).to_csv(tmp_path / "core" / "patients.csv.gz", index=False)
    assert mimic_iv.detect_version(tmp_path) == "v1.0"
    with pytest.raises(mimic_iv.MimicIvError, match="icu.mimic_iv_root"):
        mimic_iv.detect_version(tmp_path / "nothing")


def test_every_stay_is_kept_or_dropped_for_one_counted_reason(cohort):
    steps = cohort.report["stay_steps"]
    assert steps[0] == {"step": "icu_stays", "stays": 10}
    dropped = {s["reason"]: s["dropped"] for s in steps[1:]}
    assert dropped == {"missing_record": 0, "transfer": 1, "multiple_stays_in_admission": 2, "under_age": 1,
                       "los_too_short": 1, "no_ehr_before_prediction": 1, "no_image_before_prediction": 2}
    assert steps[0]["stays"] - sum(dropped.values()) == steps[-1]["stays"] == len(cohort.stays)
    assert set(cohort.stays["stay_key"]) == {stay_key(30000001), stay_key(30000007)}
    assert list(cohort.stays.columns) == list(STAY_COLUMNS)


def _tables(**overrides):
    patients = pd.DataFrame({"subject_id": [1], "gender": ["F"], "anchor_age": [17], "anchor_year": [2149]})
    admissions = pd.DataFrame({"subject_id": [1], "hadm_id": [11], "admittime": [h.at(-5)], "dischtime": [h.at(200)],
                               "deathtime": [pd.NaT], "hospital_expire_flag": [0]})
    icustays = pd.DataFrame({"subject_id": [1], "hadm_id": [11], "stay_id": [111], "first_careunit": ["MICU"],
                             "last_careunit": ["MICU"], "intime": [h.at(0)], "outtime": [h.at(48.5)]})
    tables = {"patients": patients, "admissions": admissions, "icustays": icustays}
    for name, change in overrides.items():
        tables[name] = tables[name].assign(**change)
    return tables["patients"], tables["admissions"], tables["icustays"]


def test_los_filter_is_strictly_longer_than_48_hours():
    kept, _ = select_stays(*_tables(), CFG)
    assert kept["los_hours"].tolist() == [48.5]
    dropped, steps = select_stays(*_tables(icustays={"outtime": [h.at(48)]}), CFG)
    assert dropped.empty and steps[-1]["reason"] == "los_too_short" and steps[-1]["dropped"] == 1


def test_age_is_anchor_age_shifted_to_the_icu_year():
    kept, _ = select_stays(*_tables(), CFG)  # anchor_age 17 in 2149, ICU admission in 2150 -> 18
    assert kept["age"].tolist() == [18.0]
    dropped, steps = select_stays(*_tables(patients={"anchor_year": [2150]}), CFG)
    assert dropped.empty and steps[-2]["reason"] == "under_age"


def test_mortality_from_the_flag_or_a_recorded_death_time():
    assert select_stays(*_tables(), CFG)[0]["mortality"].tolist() == [0]
    assert select_stays(*_tables(admissions={"hospital_expire_flag": [1]}), CFG)[0]["mortality"].tolist() == [1]
    assert select_stays(*_tables(admissions={"deathtime": [h.at(100)]}), CFG)[0]["mortality"].tolist() == [1]


def test_image_outcomes_account_for_every_metadata_image(cohort):
    outcomes = cohort.report["image_outcomes"]
    assert sum(outcomes.values()) == len(h.IMAGES)
    assert outcomes == {"used": 6, "outside_window": 3, "not_ap": 1, "duplicate_in_study": 1, "not_in_store": 1,
                        "no_cohort_stay": 2}


def test_the_last_image_is_the_latest_one_at_or_before_the_prediction_time(cohort):
    stays = cohort.stays.set_index("stay_key")
    s1, s6 = stays.loc[stay_key(30000001)], stays.loc[stay_key(30000007)]
    assert s1["last_image_id"] == h.image_id("dcm-s1-f")  # study at +40 h (its last-listed AP), not the one at +60 h
    assert (s1["last_image_hours"], s1["hours_since_last_image"], s1["last_image_bin"]) == (40.0, 8.0, "<12")
    assert (s6["last_image_hours"], s6["hours_since_last_image"], s6["last_image_bin"]) == (3.0, 45.0, ">=36")


def test_image_window_edges_are_inclusive(roots):
    shifted = dict(CFG, image_window_hours=[-10, 40])  # the -10 h and +40 h films sit on the edges
    edge = build_cohort(roots["v2.2"], roots["cxr"], h.store_index(), shifted, h.SALT)
    s1 = edge.pairs[edge.pairs["stay_key"] == stay_key(30000001)]
    assert sorted(zip(s1["prior_hours"], s1["later_hours"], strict=True)) == [(-10.0, 20.0), (-10.0, 40.0),
                                                                              (20.0, 40.0)]
    narrower = build_cohort(roots["v2.2"], roots["cxr"], h.store_index(), dict(CFG, image_window_hours=[-9, 39]),
                            h.SALT)
    assert narrower.pairs.empty


def test_pairs_need_the_gap_and_the_ehr_bins(cohort):
    pairs = cohort.pairs
    assert list(pairs.columns) == list(PAIR_COLUMNS)
    got = sorted(zip(pairs["prior_hours"], pairs["later_hours"], pairs["ehr_start_bin"], pairs["ehr_end_bin"],
                     strict=True))
    assert got == [(-10.0, 20.0, 0, 20), (-10.0, 40.0, 0, 40), (20.0, 40.0, 20, 40)]
    assert cohort.report["pair_steps"] == {"candidate_pairs": 6, "gap_too_short": 1, "too_few_ehr_bins": 2, "kept": 3}


def test_pair_rules_on_their_boundaries():
    candidates = pd.DataFrame({"stay_id": 1, "image_id": list("abcde"), "hours": [-3.5, 2.0, 8.5, 14.0, 30.0]})
    pairs, counts = build_pairs(candidates, CFG)
    got = {(p, q): (s, e) for p, q, s, e in zip(pairs["image_id_prior"], pairs["image_id_later"],
                                                pairs["ehr_start_bin"], pairs["ehr_end_bin"], strict=True)}
    # a -> c: 12 h apart but bins [0, 8) = 8 -> kept; a -> b: 5.5 h; b -> d: 12 h and bins [2, 14) -> kept;
    # c -> e: 21.5 h, bins [8, 30); a -> d: bins [0, 14)
    assert got == {("a", "c"): (0, 8), ("a", "d"): (0, 14), ("a", "e"): (0, 30), ("b", "d"): (2, 14),
                   ("b", "e"): (2, 30), ("c", "e"): (8, 30), ("d", "e"): (14, 30)}
    assert counts == {"candidate_pairs": 10, "gap_too_short": 3, "too_few_ehr_bins": 0, "kept": 7}
    few = pd.DataFrame({"stay_id": 1, "image_id": ["p", "q"], "hours": [-20.0, 5.9]})  # 25.9 h apart, bins [0, 5)
    assert build_pairs(few, CFG)[1]["too_few_ehr_bins"] == 1
    assert build_pairs(few, dict(CFG, min_pair_ehr_bins=5))[1]["kept"] == 1


def test_later_image_labels_follow_the_binary_policy(cohort):
    pairs = cohort.pairs.set_index(["prior_hours", "later_hours"])
    assert set(PAIR_LABEL_COLUMNS) <= set(cohort.pairs.columns)
    to_20, to_40 = pairs.loc[(-10.0, 20.0)], pairs.loc[(20.0, 40.0)]
    assert to_20["label_lbl_edema"] == 1.0  # 1 -> 1.0
    assert np.isnan(to_20["label_lbl_pleural_effusion"])  # -1 (uncertain) -> NaN
    assert np.isnan(to_20["label_lbl_pneumonia"])  # blank -> NaN
    assert to_40["label_lbl_cardiomegaly"] == 0.0  # 0 -> 0.0
    values = cohort.pairs[list(PAIR_LABEL_COLUMNS)].to_numpy()
    assert np.isin(values[~np.isnan(values)], (0.0, 1.0)).all()


def test_splits_are_the_store_patient_splits_and_never_mix(cohort):
    for frame in (cohort.stays, cohort.pairs):
        assert (frame.groupby("patient_pid")["split"].nunique() == 1).all()
        expected = {h.patient_pid(s): split for s, (*_, split) in h.SUBJECTS.items()}
        assert (frame["split"] == frame["patient_pid"].map(expected)).all()
    assert cohort.report["prediction_stays"] == {"train": 1, "val": 0, "test": 1}


def test_a_store_with_a_patient_in_two_splits_is_refused(roots):
    index = h.store_index()
    index.loc[index["image_id"] == h.image_id("dcm-s1-b"), "split"] = "test"
    with pytest.raises(ValueError, match="several splits"):
        build_cohort(roots["v2.2"], roots["cxr"], index, CFG, h.SALT)


def test_outcomes_and_phenotypes(cohort):
    stays = cohort.stays.set_index("stay_key")
    s1, s6 = stays.loc[stay_key(30000001)], stays.loc[stay_key(30000007)]
    assert (s1["mortality"], s6["mortality"]) == (1, 0)
    on = {c for c in stays.columns if c.startswith("pheno_") and s1[c] == 1}
    assert on == {"pheno_chf_nonhypertensive", "pheno_pneumonia", "pheno_septicemia"}  # ICD-9 4280, 486, 99592
    on = {c for c in stays.columns if c.startswith("pheno_") and s6[c] == 1}
    assert on == {"pheno_chf_nonhypertensive", "pheno_pneumonia", "pheno_acute_renal_failure"}  # ICD-10


def test_series_rows_cover_the_stays_and_pairs(cohort):
    assert set(cohort.ehr_keys) == set(cohort.stays["stay_key"]) | set(cohort.pairs["stay_key"])
    assert cohort.values.shape == (len(cohort.ehr_keys), CFG["series_hours"], N_COLUMNS) == (2, 48, 76)
    assert cohort.observed.shape == (2, 48, 17) and cohort.static.dtype == np.float32
    row = list(cohort.ehr_keys).index(stay_key(30000001))
    np.testing.assert_allclose(cohort.static[row], [0.60, 1.0])


def test_stage_writes_outputs_without_raw_ids_or_dates(roots, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_ICU_SALT", h.SALT.decode())
    index = tmp_path / "index.parquet"
    h.store_index().to_parquet(index)
    out = tmp_path / "cohort"
    report = build_icu_cohort(roots["v2.0"], roots["cxr"], index, out, {"cohort": CFG}, salt_env="TEST_ICU_SALT",
                              demo_only=True)
    assert report["prediction_stays"] == {"train": 1, "val": 0, "test": 1}
    texts = [(out / name).read_text() for name in ("cohort.json", "normalisation.json")]
    for name in ("stays.parquet", "pairs.parquet"):
        frame = pd.read_parquet(out / name)
        texts.append(frame.to_csv(index=False))
        assert not any(pd.api.types.is_datetime64_any_dtype(t) for t in frame.dtypes)
    with np.load(out / "ehr.npz") as ehr:
        assert ehr["values"].shape == (2, 48, 76) and len(ehr["columns"]) == 76
        assert set(ehr["stay_keys"]) == set(pd.read_parquet(out / "stays.parquet")["stay_key"])
        texts.extend(str(ehr[k].tolist()) for k in ehr.files if ehr[k].dtype.kind in "US")
    raw = [str(s) for s in h.SUBJECTS] + [str(a[0]) for v in h.SUBJECTS.values() for a in v[2]] + [
        str(s[0]) for v in h.SUBJECTS.values() for a in v[2] for s in a[1]] + [i[0] for i in h.IMAGES] + [
        str(i[2]) for i in h.IMAGES] + ["2150", "21500"]
    for text in texts:
        assert not [r for r in raw if r in text]
    assert json.loads(texts[0])["mimic_iv_version"] == "v2.0"


def test_malformed_phenotype_table_fails_before_reading_mimic(tmp_path):
    bad = tmp_path / "table.csv"
    bad.write_text("icd_version,code\n9,486\n")
    with pytest.raises(ValueError, match="icu.cohort.phenotype_table .*missing \\['phenotype'\\]"):
        build_cohort(tmp_path / "no-mimic-iv", tmp_path / "no-cxr", h.store_index(), dict(CFG, phenotype_table=str(bad)),
                     h.SALT)
