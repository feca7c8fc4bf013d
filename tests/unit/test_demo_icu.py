"""The demo ICU patients (DDL-CXR): a deterministic plan whose latent state drives findings, death and diagnoses; the
MIMIC-IV v2.2 tables written from it; its films in the MIMIC-CXR demo corpus (same anatomy per patient, times that
match the tables)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrgen.demo.common import DemoContext
from cxrgen.demo.icu import OUTCOME_NOISE, TARGET_MORTALITY, plan_icu_stays, radiographic_burden
from cxrgen.demo.layouts import mimic
from cxrgen.demo.mimic_iv import COLUMNS, D_ITEMS, write_mimic_iv
from cxrgen.demo.phantom import PhantomSpec, render_phantom_with_masks
from cxrgen.sources.mimic import CHEXPERT_CSV, METADATA_CSV, SPLIT_CSV

# MetaVision itemids of the 17 benchmark channels (mimic3-benchmarks / MedFuse itemid_to_variable_map for MIMIC-IV)
CHANNEL_ITEMIDS = {"heart rate": {220045}, "SpO2": {220277}, "respiratory rate": {220210}, "FiO2": {223835},
                   "systolic BP": {220050, 220179}, "diastolic BP": {220051, 220180}, "mean BP": {220052, 220181},
                   "temperature": {223761, 223762}, "GCS eye": {220739}, "GCS verbal": {223900},
                   "GCS motor": {223901}, "glucose": {225664, 220621}, "pH": {223830}, "weight": {226512, 224639},
                   "height": {226730}, "capillary refill": {223951, 224308}}


@pytest.fixture(scope="module")
def big_plan():
    return plan_icu_stays(DemoContext(seed=7, downscale=6), 400)


def _summary(plan) -> pd.DataFrame:
    return pd.DataFrame([{"subject": a.subject_id, "hadm": a.hadm_id, "stays": [s.stay_id for s in a.stays],
                          "intime": a.intime, "died": a.died, "dx": a.diagnoses, "seed": a.phantom_seed,
                          "films": [(f.hours, sorted(f.findings.items()), f.study_id, f.dicom_id) for f in a.films]}
                         for a in plan.admissions])


def test_plan_is_a_function_of_the_seed_only():
    a = plan_icu_stays(DemoContext(seed=3, downscale=6), 30)
    b = plan_icu_stays(DemoContext(seed=3, downscale=16, bad_fraction=0.2), 30)
    c = plan_icu_stays(DemoContext(seed=4, downscale=6), 30)
    pd.testing.assert_frame_equal(_summary(a), _summary(b))
    assert not _summary(a)["subject"].equals(_summary(c)["subject"])
    assert a.films().equals(b.films())


def test_plan_has_what_the_cohort_filters_must_drop(big_plan):
    kinds = pd.Series([a.kind for a in big_plan.admissions]).value_counts()
    assert {"standard", "short", "minor", "second_stay", "transfer"} <= set(kinds.index)
    assert all(len(a.stays) == 2 for a in big_plan.admissions if a.kind == "second_stay")
    assert all(a.stays[0].first_careunit != a.stays[0].last_careunit for a in big_plan.admissions
               if a.kind == "transfer")
    assert all(a.age < 18 for a in big_plan.admissions if a.kind == "minor")
    assert all(a.stays[0].out_hours < 48 for a in big_plan.admissions if a.kind == "short")
    hours = big_plan.films()["hours"]
    inside = hours.between(-24, 48)
    assert 0.6 < inside.mean() < 0.97  # most films in the DDL-CXR window, some outside it
    counts = big_plan.films().groupby("hadm_id").size()
    assert counts.max() <= 4
    subjects = [a.subject_id for a in big_plan.admissions]
    assert len(set(subjects)) == len(subjects) and all(10_000_000 <= s < 20_000_000 for s in subjects)
    assert all(2110 <= a.intime.year < 2200 for a in big_plan.admissions)


def test_findings_follow_the_latent_state(big_plan):
    films = big_plan.films().fillna({"finding_Pleural Effusion": 0, "finding_Edema": 0, "finding_Consolidation": 0})
    high, low = films[films["fluid"] > 1.0], films[films["fluid"] < 0.0]
    assert len(high) > 20 and len(low) > 20
    assert films.loc[high.index, "finding_Pleural Effusion"].mean() > 3 * films.loc[low.index,
                                                                                     "finding_Pleural Effusion"].mean()
    assert films.loc[high.index, "finding_Edema"].mean() > films.loc[low.index, "finding_Edema"].mean() + 0.1
    infected = films["infection"] > 1.2
    assert films.loc[infected, "finding_Consolidation"].mean() > films.loc[~infected, "finding_Consolidation"].mean()
    ventilated = films[films["ventilated"]]
    assert (ventilated["finding_Support Devices"] == 1).all()
    # laterality is fixed per patient: one side per finding across a patient's films
    for adm in big_plan.admissions:
        sides = {}
        for film in adm.films:
            for name, side in film.findings.items():
                assert sides.setdefault(name, side) == side


def _outcomes(plan) -> pd.DataFrame:
    return pd.DataFrame([{"died": a.died, "p": a.death_probability, "late": a.late_severity, "age": a.age,
                          "burden": radiographic_burden(a), "ventilated": bool(a.ventilated.any()),
                          "dx": set(a.diagnoses)} for a in plan.admissions])


@pytest.mark.parametrize("seed", [7, 11])
def test_mortality_rate_near_the_cohort_base_rate(seed, big_plan):
    plan = big_plan if seed == 7 else plan_icu_stays(DemoContext(seed=seed, downscale=6), 400)
    rate = _outcomes(plan)["died"].mean()
    assert abs(rate - TARGET_MORTALITY) < 0.05  # 400 stays: binomial sd 0.018


def test_death_rises_with_severity_but_is_not_determined_by_it(big_plan):
    out = _outcomes(big_plan)
    tertile = pd.qcut(out["late"], 3, labels=False)
    low, high = out.loc[tertile == 0, "died"].mean(), out.loc[tertile == 2, "died"].mean()
    assert high > 3 * low and high > low + 0.15
    # label noise: nobody is certain to die or to survive, so even the true risk cannot rank perfectly
    assert out["p"].min() >= OUTCOME_NOISE * TARGET_MORTALITY - 1e-12
    assert out["p"].max() <= 1 - OUTCOME_NOISE * (1 - TARGET_MORTALITY) + 1e-12
    assert 0.7 < roc_auc_score(out["died"], out["p"]) < 0.95
    assert out["died"][tertile == 0].any() and not out["died"][tertile == 2].all()


def test_films_carry_outcome_signal_beyond_the_severity(big_plan):
    """The death logit, minus what late severity and age explain, still rises with the radiographic burden the films
    show: the later image is worth predicting."""
    out = _outcomes(big_plan)
    logit = np.log((out["p"] - OUTCOME_NOISE * TARGET_MORTALITY) / (1 - OUTCOME_NOISE - out["p"]
                                                                   + OUTCOME_NOISE * TARGET_MORTALITY))
    design = np.column_stack([np.ones(len(out)), out["late"], out["age"]])
    residual = logit - design @ np.linalg.lstsq(design, logit, rcond=None)[0]
    assert np.corrcoef(residual, out["burden"])[0, 1] > 0.3


def test_phenotype_codes_are_noisy_functions_of_the_state(big_plan):
    out = _outcomes(big_plan)
    failing = out["dx"].map(lambda d: "respiratory_failure" in d)
    assert 0.7 < failing[out["ventilated"]].mean() < 1.0  # mostly coded when ventilated, sometimes missed
    assert failing[out["ventilated"]].mean() > failing[~out["ventilated"]].mean() + 0.3
    infected = np.array([a.traits["infected"] for a in big_plan.admissions])
    septic = out["dx"].map(lambda d: "septicemia" in d).to_numpy()
    assert septic[infected].mean() > 0.5 and 0 < septic[~infected].mean() < 0.15


def test_outcomes_are_a_function_of_the_seed():
    a, b = (_outcomes(plan_icu_stays(DemoContext(seed=3, downscale=6), 60)) for _ in range(2))
    c = _outcomes(plan_icu_stays(DemoContext(seed=4, downscale=6), 60))
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["p"], c["p"])


def test_patient_films_share_anatomy():
    spec = dict(view="AP", height_px=96, width_px=112, spacing_mm=3.0, sex="F", age=70.0, seed=123456)
    _, clear = render_phantom_with_masks(PhantomSpec(**spec))
    _, ill = render_phantom_with_masks(PhantomSpec(**spec, findings={"Pleural Effusion": "right", "Edema": "bilateral",
                                                                    "Support Devices": ""}))
    for name in ("body", "lungs", "lung_right", "lung_left", "heart", "spine"):
        assert np.array_equal(clear[name], ill[name]), name
    assert ill["effusion"].any() and "effusion" not in clear


def test_tables_have_mimic_iv_columns_and_itemids(tmp_path):
    ctx = DemoContext(seed=5, downscale=6)
    plan = plan_icu_stays(ctx, 25)
    counts = write_mimic_iv(tmp_path, plan, ctx)
    tables = {name: pd.read_csv(tmp_path / f"{name}.csv.gz") for name in COLUMNS}
    for name, frame in tables.items():
        assert list(frame.columns) == COLUMNS[name] and len(frame) == counts[name]
    charts = tables["icu/chartevents"]
    assert set(charts["itemid"]) <= set(D_ITEMS) == set(tables["icu/d_items"]["itemid"])
    for channel, itemids in CHANNEL_ITEMIDS.items():
        assert itemids & set(charts["itemid"]), channel
    stays = tables["icu/icustays"]
    merged = charts.merge(stays, on=["subject_id", "hadm_id", "stay_id"])
    assert len(merged) == len(charts)
    assert (pd.to_datetime(merged["charttime"]) >= pd.to_datetime(merged["intime"])).all()
    assert (pd.to_datetime(merged["charttime"]) <= pd.to_datetime(merged["outtime"])).all()
    admissions = tables["hosp/admissions"]
    assert admissions["hospital_expire_flag"].tolist() == [int(a.died) for a in plan.admissions]
    assert set(tables["hosp/diagnoses_icd"]["icd_code"]) <= set(tables["hosp/d_icd_diagnoses"]["icd_code"])
    assert set(tables["hosp/labevents"]["itemid"]) == set(tables["hosp/d_labitems"]["itemid"])
    # the eye-opening text "None" (score 1) is a value, not a missing one: read it as a string, as a reader must
    raw = pd.read_csv(tmp_path / "icu/chartevents.csv.gz", dtype={"value": str}, keep_default_na=False)
    assert set(raw.loc[raw["itemid"] == 220739, "value"]) == {"Spontaneously", "To Speech", "To Pain", "None"}


def test_icu_films_in_mimic_cxr_csvs_match_the_plan(tmp_path):
    ctx = DemoContext(seed=9, downscale=16, bad_fraction=0.0)
    info = mimic.write(tmp_path / "cxr", 3, ctx, icu_stays=5)
    plan = plan_icu_stays(DemoContext(seed=9, downscale=1), 5)
    write_mimic_iv(tmp_path / "iv", plan, ctx)
    meta = pd.read_csv(tmp_path / "cxr" / (METADATA_CSV + ".gz"), dtype={"StudyDate": str, "StudyTime": str})
    split = pd.read_csv(tmp_path / "cxr" / (SPLIT_CSV + ".gz"))
    labels = pd.read_csv(tmp_path / "cxr" / (CHEXPERT_CSV + ".gz")).set_index("study_id")
    stays = pd.read_csv(tmp_path / "iv" / "icu" / "icustays.csv.gz", parse_dates=["intime"])
    first_in = stays.sort_values("intime").groupby("hadm_id")["intime"].first()
    films = plan.films()
    assert info["icu_films"] == len(films) > 0
    rows = meta.set_index("dicom_id").loc[films["dicom_id"]]
    assert (rows["ViewPosition"] == "AP").all()
    taken = pd.to_datetime(rows["StudyDate"] + rows["StudyTime"], format="%Y%m%d%H%M%S.%f")
    hours = (taken.to_numpy() - first_in.loc[films["hadm_id"]].to_numpy()) / pd.Timedelta(hours=1)
    assert np.allclose(hours, films["hours"], atol=1e-3)
    assert split[split["subject_id"].isin(plan.subject_ids)].groupby("subject_id")["split"].nunique().max() == 1
    for adm in plan.admissions:
        for film in adm.films:
            row = labels.loc[film.study_id]
            for name, value in film.labels.items():
                assert (np.isnan(value) and np.isnan(row[name])) or row[name] == value
            assert (tmp_path / "cxr" / "files" / f"p{str(adm.subject_id)[:2]}" / f"p{adm.subject_id}" /
                    f"s{film.study_id}" / f"{film.dicom_id}.dcm").exists()
    assert len(set(meta["subject_id"]) - plan.subject_ids) > 0  # the general subjects are still there


def test_icu_subjects_hold_out_a_larger_test_share():
    ctx = DemoContext(seed=1, downscale=6)
    splits = pd.Series([mimic.icu_split(ctx, s) for s in range(10_000_000, 10_000_600)]).value_counts(normalize=True)
    for name, share in {"train": 0.55, "validate": 0.15, "test": 0.3}.items():
        assert abs(splits[name] - share) < 0.05


def test_repeated_films_of_one_patient_are_distinct_acquisitions():
    """Unchanged findings on two films must not give byte-identical films: the store drops exact duplicates, and 51
    of the demo's ICU films were lost that way before each film got its own acquisition."""
    from cxrgen.demo.films import vary_acquisition
    from cxrgen.demo.phantom import render_phantom

    def film(seed, acquisition):
        base = render_phantom(PhantomSpec(view="AP", height_px=96, width_px=112, spacing_mm=3.0, seed=seed))
        return vary_acquisition(base, np.random.default_rng(acquisition))

    first, second, other_patient = film(5, 1), film(5, 2), film(6, 3)
    assert not np.array_equal(first, second)
    same = np.corrcoef(first.ravel(), second.ravel())[0, 1]
    assert same > 0.8 and same > np.corrcoef(first.ravel(), other_patient.ravel())[0, 1]  # still the same patient
    assert first.dtype == np.float32 and first.min() >= 0.0 and first.max() <= 1.0
