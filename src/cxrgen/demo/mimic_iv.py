"""MIMIC-IV v2.2 demo tables (``hosp/`` and ``icu/`` modules, gzipped CSVs with the release's column names) for the ICU
patients of :func:`cxrgen.demo.icu.plan_icu_stays`: the observation model that turns the plan's latent hourly state
into charted vitals and labs.

The 17 DDL-CXR / mimic3-benchmarks channels are charted under the MetaVision itemids the benchmark's
``itemid_to_variable_map`` uses for MIMIC-IV (heart rate 220045, SpO2 220277, respiratory rate 220210, FiO2 223835,
arterial 220050-220052 or non-invasive 220179-220181 blood pressure, temperature 223761 °F or 223762 °C, GCS
220739 / 223900 / 223901 as text with valuenum, glucose 225664 / 220621, arterial pH 223830, weight 226512 / 224639,
height 226730) plus capillary refill 223951 / 224308 (text); labs (glucose 50931, pH 50820, creatinine 50912, lactate
50813, white cells 51301) go to ``labevents`` over the whole admission. Charting frequencies and missingness are
plausible choices (vitals about hourly, temperature and GCS about 4-hourly, FiO2 mostly while ventilated, daily
weight, height once and sometimes never), not MIMIC statistics.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.demo.common import DemoContext
from cxrgen.demo.icu import ICD_CODES, IcuAdmission, IcuPlan

VERSION = "2.2"
COLUMNS = {
    "hosp/patients": ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"],
    "hosp/admissions": ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type",
                        "admit_provider_id", "admission_location", "discharge_location", "insurance", "language",
                        "marital_status", "race", "edregtime", "edouttime", "hospital_expire_flag"],
    "hosp/diagnoses_icd": ["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"],
    "hosp/d_icd_diagnoses": ["icd_code", "icd_version", "long_title"],
    "hosp/labevents": ["labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id",
                       "charttime", "storetime", "value", "valuenum", "valueuom", "ref_range_lower",
                       "ref_range_upper", "flag", "priority", "comments"],
    "hosp/d_labitems": ["itemid", "label", "fluid", "category"],
    "icu/icustays": ["subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime", "outtime",
                     "los"],
    "icu/chartevents": ["subject_id", "hadm_id", "stay_id", "caregiver_id", "charttime", "storetime", "itemid",
                        "value", "valuenum", "valueuom", "warning"],
    "icu/d_items": ["itemid", "label", "abbreviation", "linksto", "category", "unitname", "param_type",
                    "lownormalvalue", "highnormalvalue"],
}
# itemid -> (label, abbreviation, category, unitname, param_type)
D_ITEMS = {
    220045: ("Heart Rate", "HR", "Routine Vital Signs", "bpm", "Numeric"),
    220277: ("O2 saturation pulseoxymetry", "SpO2", "Respiratory", "%", "Numeric"),
    220210: ("Respiratory Rate", "RR", "Respiratory", "insp/min", "Numeric"),
    223835: ("Inspired O2 Fraction", "FiO2", "Respiratory", None, "Numeric"),
    220050: ("Arterial Blood Pressure systolic", "ABPs", "Routine Vital Signs", "mmHg", "Numeric"),
    220051: ("Arterial Blood Pressure diastolic", "ABPd", "Routine Vital Signs", "mmHg", "Numeric"),
    220052: ("Arterial Blood Pressure mean", "ABPm", "Routine Vital Signs", "mmHg", "Numeric"),
    220179: ("Non Invasive Blood Pressure systolic", "NBPs", "Routine Vital Signs", "mmHg", "Numeric"),
    220180: ("Non Invasive Blood Pressure diastolic", "NBPd", "Routine Vital Signs", "mmHg", "Numeric"),
    220181: ("Non Invasive Blood Pressure mean", "NBPm", "Routine Vital Signs", "mmHg", "Numeric"),
    223761: ("Temperature Fahrenheit", "Temperature F", "Routine Vital Signs", "°F", "Numeric"),
    223762: ("Temperature Celsius", "Temperature C", "Routine Vital Signs", "°C", "Numeric"),
    220739: ("GCS - Eye Opening", "GCS - Eye Opening", "Neurological", None, "Text"),
    223900: ("GCS - Verbal Response", "GCS - Verbal Response", "Neurological", None, "Text"),
    223901: ("GCS - Motor Response", "GCS - Motor Response", "Neurological", None, "Text"),
    223951: ("Capillary Refill R", "Capillary Refill R", "Skin - Assessment", None, "Text"),
    224308: ("Capillary Refill L", "Capillary Refill L", "Skin - Assessment", None, "Text"),
    225664: ("Glucose finger stick (range 70-100)", "Glucose FS (range 70 -100)", "Routine Vital Signs", None,
             "Numeric"),
    220621: ("Glucose (serum)", "Glucose (serum)", "Labs", "mg/dL", "Numeric with tag"),
    223830: ("PH (Arterial)", "PH (Arterial)", "Labs", "units", "Numeric with tag"),
    226512: ("Admission Weight (Kg)", "Admission Weight (Kg)", "General", "kg", "Numeric"),
    224639: ("Daily Weight", "Daily Weight", "General", "kg", "Numeric"),
    226730: ("Height (cm)", "Height (cm)", "General", "cm", "Numeric"),
}
# itemid -> (label, fluid, category, unit, reference range)
D_LABITEMS = {
    50931: ("Glucose", "Blood", "Chemistry", "mg/dL", (70.0, 100.0)),
    50912: ("Creatinine", "Blood", "Chemistry", "mg/dL", (0.5, 1.2)),
    50813: ("Lactate", "Blood", "Blood Gas", "mmol/L", (0.5, 2.0)),
    50820: ("pH", "Blood", "Blood Gas", "units", (7.35, 7.45)),
    51301: ("White Blood Cells", "Blood", "Hematology", "K/uL", (4.0, 11.0)),
}
GCS_EYE = {4: "Spontaneously", 3: "To Speech", 2: "To Pain", 1: "None"}
GCS_VERBAL = {5: "Oriented", 4: "Confused", 3: "Inappropriate Words", 2: "Incomprehensible sounds", 1: "No Response"}
GCS_MOTOR = {6: "Obeys Commands", 5: "Localizes Pain", 4: "Flex-withdraws", 3: "Abnormal Flexion",
             2: "Abnormal extension", 1: "No response"}
CAP_REFILL = ("Normal <3 Seconds", "Abnormal >3 Seconds")


def _stamp(times: pd.Series | pd.DatetimeIndex) -> pd.Series:
    return pd.Series(pd.DatetimeIndex(times).strftime("%Y-%m-%d %H:%M:%S"))


def _hour_state(adm: IcuAdmission, hours: np.ndarray) -> dict[str, np.ndarray]:
    idx = np.clip(np.searchsorted(adm.hours, hours, side="right") - 1, 0, len(adm.hours) - 1)
    return {"fluid": adm.fluid[idx], "resp": adm.resp[idx], "infection": adm.infection[idx],
            "vent": adm.ventilated[idx].astype(float)}


class _Events:
    """Accumulates chartevents rows of one stay."""

    def __init__(self, adm: IcuAdmission, stay_id: int, rng: np.random.Generator):
        self.adm, self.stay_id, self.rng = adm, stay_id, rng
        self.parts: list[pd.DataFrame] = []

    def add(self, itemid: int, hours: np.ndarray, values: np.ndarray, text: list[str] | None = None,
            decimals: int = 0) -> None:
        if len(hours) == 0:
            return
        numbers = np.round(np.asarray(values, float), decimals)
        shown = text if text is not None else [f"{v:.{decimals}f}" if decimals else str(int(v)) for v in numbers]
        charttime = self.adm.intime + pd.to_timedelta(np.round(hours * 60.0), unit="min")
        storetime = charttime + pd.to_timedelta(self.rng.integers(1, 40, len(hours)), unit="min")
        unit = D_ITEMS[itemid][3]
        self.parts.append(pd.DataFrame({
            "subject_id": self.adm.subject_id, "hadm_id": self.adm.hadm_id, "stay_id": self.stay_id,
            "caregiver_id": self.rng.integers(10_000, 99_999, len(hours)), "charttime": _stamp(charttime),
            "storetime": _stamp(storetime), "itemid": itemid, "value": shown, "valuenum": numbers,
            "valueuom": unit, "warning": 0}))


def _times(rng: np.random.Generator, start: float, end: float, per_hour: float) -> np.ndarray:
    """Charting times: each hour of [start, end) charts with probability ``per_hour`` at a random minute."""
    hours = np.arange(np.ceil(start), np.floor(end))
    keep = rng.random(len(hours)) < per_hour
    return hours[keep] + np.floor(rng.uniform(0, 60, int(keep.sum()))) / 60.0


def _chart_stay(ctx: DemoContext, adm: IcuAdmission, stay_index: int) -> pd.DataFrame:
    stay = adm.stays[stay_index]
    rng = ctx.rng("mimic-iv", "chart", stay.stay_id)
    patient = ctx.rng("mimic-iv", "patient", adm.subject_id)
    arterial_line = patient.random() < 0.45
    fahrenheit = patient.random() < 0.85
    base_weight = float(patient.normal(84.0 if adm.sex == "M" else 71.0, 15.0))
    height = float(patient.normal(176.0 if adm.sex == "M" else 163.0, 7.0))
    diabetic = "diabetes" in adm.diagnoses
    af = "dysrhythmia" in adm.diagnoses
    ev = _Events(adm, stay.stay_id, rng)
    start, end = stay.in_hours, stay.out_hours

    def state(hours):
        return _hour_state(adm, hours)

    def pos(x):
        return np.maximum(x, 0.0)

    t = _times(rng, start, end, 0.97)
    s = state(t)
    ev.add(220045, t, np.clip(82 + 10 * pos(s["infection"]) + 6 * pos(s["resp"]) + 4 * pos(s["fluid"])
                              + rng.normal(0, 12 if af else 6, len(t)), 35, 190))
    t = _times(rng, start, end, 0.93)
    s = state(t)
    ev.add(220277, t, np.clip(97.5 - 3.5 * pos(s["resp"]) - 1.2 * pos(s["fluid"]) + 2.5 * s["vent"]
                              + rng.normal(0, 1.2, len(t)), 70, 100))
    t = _times(rng, start, end, 0.92)
    s = state(t)
    rr = np.where(s["vent"] > 0, 14 + 4 * pos(s["resp"]), 17 + 5 * s["resp"] + 2 * pos(s["infection"]))
    ev.add(220210, t, np.clip(rr + rng.normal(0, 2.5, len(t)), 6, 45))
    t = _times(rng, start, end, 1.0)
    s = state(t)
    keep = rng.random(len(t)) < np.where(s["vent"] > 0, 0.5, 0.04)  # FiO2 mostly charted while ventilated
    t, s = t[keep], {k: v[keep] for k, v in s.items()}
    fio2 = np.where(s["vent"] > 0, 35 + 22 * pos(s["resp"]) + 8 * pos(s["fluid"]), 24 + 6 * pos(s["resp"]))
    ev.add(223835, t, np.clip(5 * np.round((fio2 + rng.normal(0, 4, len(t))) / 5), 21, 100))
    items = (220050, 220051, 220052) if arterial_line else (220179, 220180, 220181)
    t = _times(rng, start, end, 0.95 if arterial_line else 0.85)
    s = state(t)
    mean = 80 - 7 * pos(s["infection"]) - 2.5 * pos(s["resp"]) + 2 * s["fluid"] + rng.normal(0, 6, len(t))
    systolic = mean + 33 + rng.normal(0, 6, len(t))
    diastolic = mean - 16 + rng.normal(0, 4, len(t))
    for itemid, values in zip(items, (systolic, diastolic, mean), strict=True):
        ev.add(itemid, t, np.clip(values, 20, 250))
    t = _times(rng, start, end, 0.25)
    s = state(t)
    celsius = 37.0 + 0.9 * pos(s["infection"]) + rng.normal(0, 0.3, len(t))
    if fahrenheit:
        ev.add(223761, t, celsius * 9 / 5 + 32, decimals=1)
    else:
        ev.add(223762, t, celsius, decimals=1)
    t = _times(rng, start, end, 0.25)
    s = state(t)
    sedation = 1.3 * pos(s["resp"] + 0.6 * s["infection"] - 0.8) + rng.normal(0, 0.4, len(t))
    eye = np.clip(np.round(4 - sedation - 1.5 * s["vent"]), 1, 4).astype(int)
    motor = np.clip(np.round(6 - 1.2 * sedation - 1.5 * s["vent"]), 1, 6).astype(int)
    verbal = np.clip(np.round(5 - 1.5 * sedation), 1, 5).astype(int)
    ev.add(220739, t, eye, [GCS_EYE[v] for v in eye])
    ev.add(223900, t, np.where(s["vent"] > 0, 1, verbal),
           ["No Response-ETT" if v > 0 else GCS_VERBAL[g] for v, g in zip(s["vent"], verbal, strict=True)])
    ev.add(223901, t, motor, [GCS_MOTOR[v] for v in motor])
    t = _times(rng, start, end, 0.15)
    s = state(t)
    abnormal = rng.random(len(t)) < 1.0 / (1.0 + np.exp(-2.0 * (s["infection"] + 0.5 * s["resp"] - 1.5)))
    ev.add(223951 if rng.random() < 0.5 else 224308, t, np.full(len(t), np.nan),
           [CAP_REFILL[int(a)] for a in abnormal])
    t = _times(rng, start, end, 0.3 if diabetic else 0.15)
    s = state(t)
    ev.add(225664 if rng.random() < 0.7 else 220621, t,
           np.clip(130 + 20 * pos(s["infection"]) + 45 * diabetic + rng.normal(0, 25, len(t)), 40, 600))
    t = _times(rng, start, end, 0.15)
    s = state(t)
    keep = s["vent"] > 0
    ev.add(223830, t[keep], np.clip(7.40 - 0.06 * pos(s["resp"][keep]) - 0.04 * pos(s["infection"][keep] - 1)
                                    + rng.normal(0, 0.025, int(keep.sum())), 6.9, 7.7), decimals=2)
    ev.add(226512, np.array([start + 0.3]), np.array([base_weight]), decimals=1)
    days = np.arange(np.ceil((start - 4) / 24) * 24 + 4, end, 24.0)  # daily weight at 04:00 ICU time
    days = days[(days > start) & (rng.random(len(days)) < 0.8)]
    fluid0 = state(np.array([start]))["fluid"][0]
    ev.add(224639, days, base_weight + 2.0 * (state(days)["fluid"] - fluid0) + rng.normal(0, 0.6, len(days)),
           decimals=1)
    if rng.random() < 0.65:
        ev.add(226730, np.array([start + 0.5]), np.array([height]))
    return pd.concat(ev.parts, ignore_index=True)


def _labs(ctx: DemoContext, adm: IcuAdmission) -> pd.DataFrame:
    rng = ctx.rng("mimic-iv", "labs", adm.hadm_id)
    aki = "aki" in adm.diagnoses
    diabetic = "diabetes" in adm.diagnoses
    rows = []
    draws = np.arange(np.ceil(adm.admit_hours), adm.disch_hours, 1.0)
    in_icu = np.zeros(len(draws), bool)
    for stay in adm.stays:
        in_icu |= (draws >= stay.in_hours) & (draws < stay.out_hours)
    draws = draws[rng.random(len(draws)) < np.where(in_icu, 1 / 8, 1 / 24)]
    for hours in draws:
        s = _hour_state(adm, np.array([hours]))
        f, r, i, vent = (float(s[k][0]) for k in ("fluid", "resp", "infection", "vent"))
        values = {50931: 125 + 20 * max(i, 0) + 45 * diabetic + rng.normal(0, 25),
                  50912: 0.9 + 0.5 * max(f + r + i - 1.5, 0) + 1.0 * aki * (hours > 0) + rng.normal(0, 0.15),
                  51301: 8.0 + 5.0 * max(i, 0) + rng.normal(0, 1.5)}
        if vent or rng.random() < 0.3:
            values[50813] = 1.1 + 1.3 * max(i - 0.5, 0) + 0.5 * max(r - 1, 0) + abs(rng.normal(0, 0.3))
            values[50820] = 7.40 - 0.06 * max(r, 0) - 0.04 * max(i - 1, 0) + rng.normal(0, 0.025)
        specimen = int(rng.integers(10_000_000, 100_000_000))
        when = adm.time(hours) + pd.Timedelta(minutes=int(rng.integers(0, 60)))
        for itemid, value in values.items():
            label, _, _, unit, (low, high) = D_LABITEMS[itemid]
            value = float(np.round(max(value, 0.1), 2 if itemid == 50820 else 1))
            rows.append({"subject_id": adm.subject_id, "hadm_id": adm.hadm_id, "specimen_id": specimen,
                         "itemid": itemid, "order_provider_id": None, "charttime": when,
                         "storetime": when + pd.Timedelta(minutes=int(rng.integers(20, 120))), "value": str(value),
                         "valuenum": value, "valueuom": unit, "ref_range_lower": low, "ref_range_upper": high,
                         "flag": "abnormal" if not low <= value <= high else None,
                         "priority": "STAT" if vent else "ROUTINE", "comments": None})
    return pd.DataFrame(rows)


def _admission_rows(ctx: DemoContext, adm: IcuAdmission) -> tuple[dict, dict]:
    rng = ctx.rng("mimic-iv", "admission", adm.hadm_id)
    admittime, dischtime = adm.time(adm.admit_hours), adm.time(adm.disch_hours)
    emergency = rng.random() < 0.75
    patient = {"subject_id": adm.subject_id, "gender": adm.sex,
               "anchor_age": adm.age - (adm.intime.year - adm.anchor_year), "anchor_year": adm.anchor_year,
               "anchor_year_group": adm.anchor_year_group, "dod": dischtime.strftime("%Y-%m-%d") if adm.died else None}
    admission = {
        "subject_id": adm.subject_id, "hadm_id": adm.hadm_id, "admittime": admittime, "dischtime": dischtime,
        "deathtime": dischtime if adm.died else None,
        "admission_type": "EW EMER." if emergency else str(rng.choice(["URGENT", "OBSERVATION ADMIT",
                                                                        "SURGICAL SAME DAY ADMISSION"])),
        "admit_provider_id": None,
        "admission_location": "EMERGENCY ROOM" if emergency else str(rng.choice(["TRANSFER FROM HOSPITAL",
                                                                                  "PHYSICIAN REFERRAL"])),
        "discharge_location": "DIED" if adm.died else str(rng.choice(["HOME", "HOME HEALTH CARE",
                                                                      "SKILLED NURSING FACILITY", "REHAB"])),
        "insurance": str(rng.choice(["Medicare", "Medicaid", "Other"])), "language": "ENGLISH",
        "marital_status": str(rng.choice(["MARRIED", "SINGLE", "WIDOWED", "DIVORCED"])),
        "race": str(rng.choice(["WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO - PUERTO RICAN", "ASIAN",
                                "OTHER", "UNKNOWN"], p=[0.6, 0.15, 0.06, 0.05, 0.07, 0.07])),
        "edregtime": admittime - pd.Timedelta(hours=float(rng.uniform(2, 8))) if emergency else None,
        "edouttime": admittime + pd.Timedelta(minutes=30) if emergency else None,
        "hospital_expire_flag": int(adm.died)}
    return patient, admission


def mimic_iv_tables(plan: IcuPlan, ctx: DemoContext) -> dict[str, pd.DataFrame]:
    """The nine MIMIC-IV tables of the plan, keyed ``hosp/patients`` … ``icu/d_items``, with the v2.2 columns."""
    patients, admissions, diagnoses, stays, charts, labs = [], [], [], [], [], []
    for adm in plan.admissions:
        patient, admission = _admission_rows(ctx, adm)
        patients.append(patient)
        admissions.append(admission)
        diagnoses += [{"subject_id": adm.subject_id, "hadm_id": adm.hadm_id, "seq_num": k + 1, "icd_code": code,
                       "icd_version": version} for k, (code, version) in enumerate(adm.icd_codes())]
        for k, stay in enumerate(adm.stays):
            stays.append({"subject_id": adm.subject_id, "hadm_id": adm.hadm_id, "stay_id": stay.stay_id,
                          "first_careunit": stay.first_careunit, "last_careunit": stay.last_careunit,
                          "intime": adm.time(stay.in_hours), "outtime": adm.time(stay.out_hours),
                          "los": round((stay.out_hours - stay.in_hours) / 24.0, 6)})
            charts.append(_chart_stay(ctx, adm, k))
        labs.append(_labs(ctx, adm))
    lab_frame = pd.concat(labs, ignore_index=True) if labs else pd.DataFrame(columns=COLUMNS["hosp/labevents"])
    lab_frame.insert(0, "labevent_id", np.arange(1, len(lab_frame) + 1))
    tables = {
        "hosp/patients": pd.DataFrame(patients, columns=COLUMNS["hosp/patients"]),
        "hosp/admissions": pd.DataFrame(admissions, columns=COLUMNS["hosp/admissions"]),
        "hosp/diagnoses_icd": pd.DataFrame(diagnoses, columns=COLUMNS["hosp/diagnoses_icd"]),
        "hosp/d_icd_diagnoses": pd.DataFrame(
            [{"icd_code": codes[slot][0], "icd_version": version, "long_title": codes[slot][1]}
             for codes in ICD_CODES.values() for slot, version in ((0, 10), (1, 9))],
            columns=COLUMNS["hosp/d_icd_diagnoses"]).sort_values(["icd_version", "icd_code"]),
        "hosp/labevents": lab_frame.reindex(columns=COLUMNS["hosp/labevents"]),
        "hosp/d_labitems": pd.DataFrame([{"itemid": k, "label": v[0], "fluid": v[1], "category": v[2]}
                                         for k, v in D_LABITEMS.items()], columns=COLUMNS["hosp/d_labitems"]),
        "icu/icustays": pd.DataFrame(stays, columns=COLUMNS["icu/icustays"]),
        "icu/chartevents": (pd.concat(charts, ignore_index=True) if charts
                            else pd.DataFrame()).reindex(columns=COLUMNS["icu/chartevents"]),
        "icu/d_items": pd.DataFrame([{"itemid": k, "label": v[0], "abbreviation": v[1], "linksto": "chartevents",
                                      "category": v[2], "unitname": v[3], "param_type": v[4],
                                      "lownormalvalue": None, "highnormalvalue": None} for k, v in D_ITEMS.items()],
                                    columns=COLUMNS["icu/d_items"]),
    }
    return tables


def write_mimic_iv(root: Path, plan: IcuPlan, ctx: DemoContext) -> dict[str, int]:
    """Write the tables as ``root/hosp/<table>.csv.gz`` / ``root/icu/<table>.csv.gz`` (gzip mtime 0: byte-identical
    reruns); returns the row count of each table."""
    root = Path(root)
    counts = {}
    for name, frame in mimic_iv_tables(plan, ctx).items():
        path = root / f"{name}.csv.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
            gz.write(frame.to_csv(index=False, date_format="%Y-%m-%d %H:%M:%S").encode())
        path.write_bytes(buf.getvalue())
        counts[name] = len(frame)
    return counts
