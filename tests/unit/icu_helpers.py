"""Hand-made MIMIC-IV (v2.0 / v2.2 layouts) + MIMIC-CXR metadata + store index for the ICU cohort tests.

Every stay exercises one rule; the expected outcome is next to it. Times are hours from T0; raw ids are distinctive so
the no-PHI test can look for them in the outputs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrgen.labels import CHEXPERT_LABELS
from cxrgen.privacy import pseudonym

T0 = pd.Timestamp("2150-03-01 08:00:00")
SALT = b"test-salt"
COHORT_CFG = {"min_age": 18, "min_los_hours": 48, "prediction_hours": 48, "image_window_hours": [-24, 48],
              "views": ["AP"], "min_pair_gap_hours": 12, "min_pair_ehr_bins": 6, "series_hours": 48,
              "derive_gcs_total": True, "phenotype_table": None}


def at(hours: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(hours=hours)


# subject -> (anchor_age, gender, [(hadm, [(stay, first_unit, last_unit, in_h, out_h)], died)], split or None)
SUBJECTS = {
    10000001: (60, "M", [(20000001, [(30000001, "MICU", "MICU", 0, 72)], 1)], "train"),  # kept, 3 pairs
    10000002: (40, "F", [(20000002, [(30000002, "MICU", "MICU", 0, 30)], 0)], "train"),  # LOS 30 h
    10000003: (16, "F", [(20000003, [(30000003, "MICU", "MICU", 0, 80)], 0)], "train"),  # age 16
    10000004: (50, "M", [(20000004, [(30000004, "MICU", "MICU", 0, 60), (30000005, "CCU", "CCU", 70, 140)], 0)],
               "train"),  # two stays in one admission
    10000005: (70, "F", [(20000005, [(30000006, "MICU", "SICU", 0, 90)], 0)], "train"),  # transfer
    10000006: (55, "F", [(20000006, [(30000007, "SICU", "SICU", 0, 100)], 0)], "test"),  # kept, no pair
    10000007: (45, "M", [(20000007, [(30000008, "MICU", "MICU", 0, 60)], 0)], "val"),  # no EHR
    10000008: (65, "M", [(20000008, [(30000009, "CCU", "CCU", 0, 60)], 0)], "val"),  # image only after 48 h
    10000009: (75, "F", [(20000009, [(30000010, "MICU", "MICU", 0, 60)], 0)], "val"),  # image not in the store
}

# (dicom_id, subject, study, view, hours, in_store, chexpert {label: value} of the study)
IMAGES = [
    ("dcm-s1-a", 10000001, 50000001, "AP", -30, True, {}),  # outside the window
    ("dcm-s1-b", 10000001, 50000002, "AP", -10, True, {"Edema": 0}),
    ("dcm-s1-c", 10000001, 50000003, "AP", 20, True, {"Edema": 1, "Pleural Effusion": -1}),
    ("dcm-s1-d", 10000001, 50000004, "PA", 30, True, {}),  # not AP
    ("dcm-s1-e", 10000001, 50000005, "AP", 40, True, {"Edema": 1, "Cardiomegaly": 0}),
    ("dcm-s1-f", 10000001, 50000005, "AP", 40, True, {}),  # second AP image of the same study
    ("dcm-s1-g", 10000001, 50000006, "AP", 60, True, {}),  # outside the window
    ("dcm-s6-a", 10000006, 50000011, "AP", -20, True, {}),
    ("dcm-s6-b", 10000006, 50000012, "AP", -5, True, {}),  # (-20, -5): no EHR bin in between
    ("dcm-s6-c", 10000006, 50000013, "AP", 3, True, {}),  # (-20, 3): 3 bins; (-5, 3): 8 h apart
    ("dcm-s7-a", 10000007, 50000021, "AP", 10, True, {}),
    ("dcm-s8-a", 10000008, 50000031, "AP", 50, True, {}),
    ("dcm-s9-a", 10000009, 50000041, "AP", 10, False, {}),
    ("dcm-s3-a", 10000003, 50000051, "AP", 10, True, {}),  # subject without a cohort stay
]


def chart_rows() -> list[dict]:
    rows = []

    def add(stay, hours, itemid, value, valuenum=None, uom=None):
        rows.append({"subject_id": 0, "hadm_id": 0, "stay_id": stay, "charttime": at(hours), "itemid": itemid,
                     "value": value, "valuenum": valuenum, "valueuom": uom})

    for stay in (30000001, 30000007, 30000009, 30000010, 30000002, 30000003, 30000004, 30000005, 30000006):
        for h in range(0, 50, 2):
            add(stay, h + 0.5, 220045, str(80 + h), 80 + h, "bpm")
    add(30000001, 1.2, 223951, "Normal <3 Seconds")
    add(30000001, 2.0, 220739, "Spontaneously", 4)
    add(30000001, 2.0, 223901, "Obeys Commands", 6)
    add(30000001, 2.0, 223900, "Confused", 4)
    add(30000001, 3.0, 223835, "40", 40, "%")  # FiO2 in percent -> 0.40
    add(30000001, 5.0, 223761, "98.6", 98.6, "°F")  # -> 37.0 °C
    add(30000001, 6.0, 220045, "9999", 9999, "bpm")  # implausible: dropped
    add(30000001, -3.0, 220045, "100", 100, "bpm")  # before ICU admission: outside the series
    add(30000001, 7.0, 220277, "bad", None, "%")  # not a number
    add(30000001, 8.0, 999999, "1", 1, "")  # itemid not read
    return rows


def lab_rows() -> list[dict]:
    return [{"labevent_id": 1, "subject_id": 10000001, "hadm_id": 20000001, "charttime": at(4.0), "itemid": 50931,
             "value": "140", "valuenum": 140.0, "valueuom": "mg/dL"},
            {"labevent_id": 2, "subject_id": 10000001, "hadm_id": None, "charttime": at(6.5), "itemid": 50820,
             "value": "7.31", "valuenum": 7.31, "valueuom": "units"}]


def diagnoses_rows() -> list[dict]:
    codes = {20000001: [("4280", 9), ("486", 9), ("99592", 9)], 20000006: [("I509", 10), ("J189", 10), ("N179", 10)]}
    return [{"subject_id": 0, "hadm_id": h, "seq_num": i + 1, "icd_code": c, "icd_version": v}
            for h, items in codes.items() for i, (c, v) in enumerate(items)]


def write_mimic_iv(root: Path, version: str, gz: bool) -> Path:
    """The tables in the v2.0 or v2.2 layout (v2.2: provider/caregiver tables and id columns)."""
    ext = ".csv.gz" if gz else ".csv"
    (root / "hosp").mkdir(parents=True)
    (root / "icu").mkdir()
    patients, admissions, icustays = [], [], []
    for subject, (age, sex, adms, _) in SUBJECTS.items():
        patients.append({"subject_id": subject, "gender": sex, "anchor_age": age, "anchor_year": 2150,
                         "anchor_year_group": "2011 - 2013", "dod": None})
        for hadm, stays, died in adms:
            start = min(s[3] for s in stays) - 5
            end = max(s[4] for s in stays) + 24
            admissions.append({"subject_id": subject, "hadm_id": hadm, "admittime": at(start), "dischtime": at(end),
                               "deathtime": at(end) if died else None, "admission_type": "EW EMER.",
                               "hospital_expire_flag": died})
            for stay, first, last, t_in, t_out in stays:
                icustays.append({"subject_id": subject, "hadm_id": hadm, "stay_id": stay, "first_careunit": first,
                                 "last_careunit": last, "intime": at(t_in), "outtime": at(t_out),
                                 "los": (t_out - t_in) / 24})
    tables = {"hosp/patients": pd.DataFrame(patients), "hosp/admissions": pd.DataFrame(admissions),
              "icu/icustays": pd.DataFrame(icustays), "icu/chartevents": pd.DataFrame(chart_rows()),
              "hosp/labevents": pd.DataFrame(lab_rows()), "hosp/diagnoses_icd": pd.DataFrame(diagnoses_rows())}
    if version == "v2.2":
        tables["hosp/admissions"]["admit_provider_id"] = "P00001"
        tables["icu/chartevents"]["caregiver_id"] = 1
        tables["hosp/labevents"]["order_provider_id"] = "P00002"
        tables["hosp/provider"] = pd.DataFrame({"provider_id": ["P00001", "P00002"]})
        tables["icu/caregiver"] = pd.DataFrame({"caregiver_id": [1]})
    for name, frame in tables.items():
        frame.to_csv(root / f"{name}{ext}", index=False)
    return root


def write_mimic_cxr(root: Path) -> Path:
    root.mkdir(parents=True)
    meta = [{"dicom_id": d, "subject_id": s, "study_id": st, "ViewPosition": v,
             "StudyDate": int(at(h).strftime("%Y%m%d")), "StudyTime": float(at(h).strftime("%H%M%S"))}
            for d, s, st, v, h, _, _ in IMAGES]
    pd.DataFrame(meta).to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    studies = {}
    for _, s, st, _, _, _, labels in IMAGES:
        studies.setdefault((s, st), {}).update(labels)
    rows = [{"subject_id": s, "study_id": st, **{name: labels.get(name) for name in CHEXPERT_LABELS}}
            for (s, st), labels in studies.items()]
    pd.DataFrame(rows).to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    return root


def image_id(dicom_id: str) -> str:
    return "mimic-" + pseudonym(SALT, "mimic/image", dicom_id)


def patient_pid(subject: int) -> str:
    return "mimic-" + pseudonym(SALT, "mimic/patient", str(subject))


def store_index() -> pd.DataFrame:
    rows = [{"image_id": image_id(d), "patient_pid": patient_pid(s), "split": SUBJECTS[s][3], "source": "mimic"}
            for d, s, _, _, _, in_store, _ in IMAGES if in_store]
    rows.append({"image_id": "chexpert-0001", "patient_pid": "chexpert-p1", "split": "test", "source": "chexpert"})
    return pd.DataFrame(rows)
