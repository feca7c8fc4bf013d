"""ICU patients of the demo MIMIC corpus (DDL-CXR, arXiv 2410.17918): one deterministic plan shared by the MIMIC-CXR
demo writer (the portable AP films, :mod:`cxrgen.demo.layouts.mimic`) and the MIMIC-IV demo tables
(:mod:`cxrgen.demo.mimic_iv`, rule ``build_demo_mimic_iv``).

Each admission has a latent hourly state of three components on a z-like scale (0 = a typical ICU patient, above 1
clearly abnormal): fluid overload, respiratory failure and infection. Each follows a patient-specific saturating
trend plus an Ornstein-Uhlenbeck wobble, so a later film sees a different state than an earlier one. The same state
drives the vitals and labs (the observation model of :mod:`cxrgen.demo.mimic_iv`), the findings of every film (a
finding is present while its driver is above the patient's own threshold, so effusion appears as fluid accumulates and
resolves as it falls), in-hospital death and the ICD diagnoses of the 25 benchmark phenotypes it explains. Death is
a Bernoulli draw at the MIMIC cohort's base rate from a logistic model of the severity and of the radiographic burden
(the lung findings a film would show, which depend on the patient's own thresholds, not only on the charted state)
36-60 h after ICU admission, partly after the last film a 48 h predictor may use, plus an unobserved frailty and a
share of outcomes the state does not explain; diagnoses are coded with misses and spurious codes. So the task is
learnable but not saturated, and the later image carries outcome signal the EHR does not. Laterality is fixed per patient and finding; a patient's films share one phantom seed, so
anatomy is identical and only the findings change.

Some admissions exist for the cohort filters to drop (DDL-CXR / mimic3-benchmarks rules): ICU stays under 48 h, minors,
a second ICU stay in the same admission, and transfers (first_careunit != last_careunit); some films fall outside the
[-24 h, +48 h] window. Dates are shifted to 2110-2200 like MIMIC; ids are in MIMIC's ranges (subject 1xxxxxxx, hadm
2xxxxxxx, stay 3xxxxxxx, study 5xxxxxxx). The numbers are plausible choices for a learnable demo, not MIMIC statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxrgen.demo.common import DemoContext

TARGET_MORTALITY = 0.145  # DDL-CXR cohort: in-hospital mortality 14.5 % (train split; 14.4 / 14.8 % val / test)
PREDICTION_HOURS = 48.0
FILM_WINDOW = (-24.0, 48.0)  # DDL-CXR candidate images around ICU admission
_CAREUNITS = ("Medical Intensive Care Unit (MICU)", "Medical/Surgical Intensive Care Unit (MICU/SICU)",
              "Cardiac Vascular Intensive Care Unit (CVICU)", "Surgical Intensive Care Unit (SICU)",
              "Coronary Care Unit (CCU)", "Trauma SICU (TSICU)")
_YEAR_GROUPS = ("2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019")
# admission kinds: most are cohort stays; the others exist for the cohort filters to drop (a few per hundred is
# enough to exercise each filter; every dropped admission still adds its films to the image stages)
_KINDS = {"standard": 0.86, "short": 0.06, "minor": 0.02, "second_stay": 0.03, "transfer": 0.03}
_OU_TAU_HOURS, _OU_SD = 10.0, 0.25
_TREND_CAP = 2.5  # the trend saturates at +-2.5 (a state cannot drift without bound over a long stay)
# death logit weights on plan-standardised late severity and radiographic burden; chosen so that even the true risk
# ranks deaths at an AUROC near 0.85 (DDL-CXR's best mortality AUROC is 0.822, Uni-EHR 0.815), not near 1
OUTCOME_WEIGHTS = {"severity": 1.2, "radiographic": 0.7, "age_per_decade": 0.2, "frailty": 0.4}
OUTCOME_NOISE = 0.05  # share of outcomes drawn at the base rate whatever the state (label noise)
# ICD coding noise of the state-driven phenotypes: a code its driver calls for is missed, one without it is added
CODING_MISS, CODING_SPURIOUS = 0.1, 0.03

# (ICD-10, ICD-9) codes with their titles, each listed under its HCUP CCS benchmark phenotype
ICD_CODES: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "septicemia": (("A419", "Sepsis, unspecified organism"), ("0389", "Unspecified septicemia")),
    "pneumonia": (("J189", "Pneumonia, unspecified organism"), ("486", "Pneumonia, organism unspecified")),
    "respiratory_failure": (("J9600", "Acute respiratory failure, unspecified whether with hypoxia or hypercapnia"),
                            ("51881", "Acute respiratory failure")),
    "chf": (("I509", "Heart failure, unspecified"), ("4280", "Congestive heart failure, unspecified")),
    "shock": (("R579", "Shock, unspecified"), ("78550", "Shock, unspecified")),
    "septic_shock": (("R6521", "Severe sepsis with septic shock"), ("78552", "Septic shock")),
    "aki": (("N179", "Acute kidney failure, unspecified"), ("5849", "Acute kidney failure, unspecified")),
    "fluid_electrolyte": (("E871", "Hypo-osmolality and hyponatremia"), ("2761", "Hyposmolality and/or hyponatremia")),
    "pleural": (("J918", "Pleural effusion in other conditions classified elsewhere"),
                ("5119", "Unspecified pleural effusion")),
    "hypertension": (("I10", "Essential (primary) hypertension"), ("4019", "Unspecified essential hypertension")),
    "lipid": (("E785", "Hyperlipidemia, unspecified"), ("2724", "Other and unspecified hyperlipidemia")),
    "coronary": (("I2510", "Atherosclerotic heart disease of native coronary artery without angina pectoris"),
                 ("41401", "Coronary atherosclerosis of native coronary artery")),
    "diabetes": (("E119", "Type 2 diabetes mellitus without complications"),
                 ("25000", "Diabetes mellitus without mention of complication, type II or unspecified type, not "
                           "stated as uncontrolled")),
    "dysrhythmia": (("I4891", "Unspecified atrial fibrillation"), ("42731", "Atrial fibrillation")),
    "copd": (("J449", "Chronic obstructive pulmonary disease, unspecified"),
             ("496", "Chronic airway obstruction, not elsewhere classified")),
    "ckd": (("N189", "Chronic kidney disease, unspecified"), ("5859", "Chronic kidney disease, unspecified")),
    "gi_bleed": (("K922", "Gastrointestinal hemorrhage, unspecified"),
                 ("5789", "Hemorrhage of gastrointestinal tract, unspecified")),
}
# background comorbidities: (key, base probability, extra per decade over 60)
_COMORBIDITIES = (("hypertension", 0.40, 0.05), ("lipid", 0.30, 0.04), ("coronary", 0.18, 0.06),
                  ("diabetes", 0.22, 0.0), ("copd", 0.12, 0.02), ("ckd", 0.10, 0.03), ("gi_bleed", 0.05, 0.0))


@dataclass(frozen=True)
class IcuFilm:
    hours: float  # since the ICU intime of the admission's first stay
    findings: dict[str, str]  # rendered findings: CheXpert name -> laterality
    labels: dict[str, float]  # the study's CheXpert CSV row (1 / 0 / -1 / NaN), what the report text says
    findings_text: str
    impression_text: str
    study_id: int
    dicom_id: str


@dataclass(frozen=True)
class IcuStay:
    stay_id: int
    in_hours: float  # relative to the admission's first ICU intime
    out_hours: float
    first_careunit: str
    last_careunit: str


@dataclass
class IcuAdmission:
    subject_id: int
    hadm_id: int
    kind: str  # one of _KINDS
    sex: str  # "M" / "F"
    age: int  # years at admission
    anchor_year: int
    anchor_year_group: str
    icd_version: int
    intime: pd.Timestamp  # first ICU intime; every *_hours is relative to it
    admit_hours: float
    disch_hours: float
    stays: list[IcuStay]
    hours: np.ndarray  # hourly grid of the latent state, admission to discharge
    fluid: np.ndarray
    resp: np.ndarray
    infection: np.ndarray
    ventilated: np.ndarray  # bool, on the grid
    traits: dict
    phantom_seed: int
    films: list[IcuFilm] = field(default_factory=list)
    late_severity: float = 0.0  # mean severity 36-60 h after ICU admission, what the death risk depends on
    died: bool = False
    death_probability: float = 0.0
    diagnoses: list[str] = field(default_factory=list)  # phenotype keys of ICD_CODES, in sequence order

    def time(self, hours: float) -> pd.Timestamp:
        return self.intime + pd.Timedelta(hours=float(hours))

    def state(self, hours: float) -> dict[str, float]:
        """Latent state at ``hours`` (nearest grid hour at or before it)."""
        i = int(np.clip(np.searchsorted(self.hours, hours, side="right") - 1, 0, len(self.hours) - 1))
        return {"fluid": float(self.fluid[i]), "resp": float(self.resp[i]), "infection": float(self.infection[i]),
                "ventilated": bool(self.ventilated[i])}

    def severity(self) -> np.ndarray:
        return severity(self.fluid, self.resp, self.infection)

    def icd_codes(self) -> list[tuple[str, int]]:
        """(icd_code, icd_version) in sequence order."""
        slot = 0 if self.icd_version == 10 else 1
        return [(ICD_CODES[key][slot][0], self.icd_version) for key in self.diagnoses]


@dataclass
class IcuPlan:
    admissions: list[IcuAdmission]

    @property
    def subject_ids(self) -> set[int]:
        return {a.subject_id for a in self.admissions}

    @property
    def study_ids(self) -> set[int]:
        return {f.study_id for a in self.admissions for f in a.films}

    def films(self) -> pd.DataFrame:
        """One row per film: subject/hadm ids, hours since ICU intime, the film's time and latent state."""
        rows = []
        for a in self.admissions:
            for f in a.films:
                rows.append({"subject_id": a.subject_id, "hadm_id": a.hadm_id, "study_id": f.study_id,
                             "dicom_id": f.dicom_id, "hours": f.hours, "time": a.time(f.hours),
                             **a.state(f.hours), **{f"finding_{k}": 1 for k in f.findings}})
        return pd.DataFrame(rows)


def severity(fluid, resp, infection):
    return 0.6 * np.asarray(fluid) + 1.0 * np.asarray(resp) + 0.8 * np.asarray(infection)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def _latent(rng: np.random.Generator, hours: np.ndarray, level: float, slope_per_day: float) -> np.ndarray:
    """level + saturating trend + OU noise on an hourly grid."""
    trend = _TREND_CAP * np.tanh(slope_per_day * hours / 24.0 / _TREND_CAP)
    decay = np.exp(-1.0 / _OU_TAU_HOURS)
    steps = rng.standard_normal(len(hours)) * _OU_SD * np.sqrt(1.0 - decay**2)
    ou = np.empty(len(hours))
    ou[0] = rng.standard_normal() * _OU_SD
    for t in range(1, len(hours)):
        ou[t] = decay * ou[t - 1] + steps[t]
    return level + trend + ou


def _ventilation(resp: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """Intubated when respiratory failure passes 1.1, extubated when it falls below 0.6 (never before -6 h)."""
    on = np.zeros(len(resp), bool)
    state = False
    for t, (r, h) in enumerate(zip(resp, hours, strict=True)):
        state = (r > 1.1 and h >= -6) if not state else r >= 0.6
        on[t] = state
    return on


def _pick(rng: np.random.Generator, options: dict[str, float]) -> str:
    return str(rng.choice(list(options), p=list(options.values())))


def _film_hours(rng: np.random.Generator, admit: float, end: float, n: int) -> list[float]:
    """``n`` film times at least 3 h apart: mostly inside [-24, 48] h, about one in seven outside it."""
    lo, hi = max(admit + 0.5, -72.0), min(end - 0.5, 120.0)
    times: list[float] = []
    for _ in range(200):
        if len(times) == n:
            break
        if rng.random() < 0.15:
            early = rng.random() < 0.4 and lo < FILM_WINDOW[0]
            h = rng.uniform(lo, FILM_WINDOW[0]) if early else rng.uniform(FILM_WINDOW[1], max(hi, FILM_WINDOW[1]))
        else:
            h = rng.uniform(FILM_WINDOW[0], FILM_WINDOW[1])
        h = float(round(h, 3))
        if lo <= h <= hi and all(abs(h - t) >= 3.0 for t in times):
            times.append(h)
    return sorted(times)


_SIDES = {"Pleural Effusion": {"bilateral": 0.5, "right": 0.3, "left": 0.2},
          "Consolidation": {"right": 0.45, "left": 0.35, "bilateral": 0.2},
          "Atelectasis": {"bilateral": 0.5, "right": 0.25, "left": 0.25}}


def _traits(rng: np.random.Generator, age: int) -> dict:
    chf = bool(rng.random() < 0.25 + 0.15 * (age > 70))
    infected = bool(rng.random() < 0.45)
    traits = {
        "chf": chf, "infected": infected, "lung_focus": bool(infected and rng.random() < 0.65),
        "cardiomegaly": bool(chf and rng.random() < 0.7), "central_line_hour": (
            float(rng.uniform(0, 12)) if rng.random() < 0.55 else None),
        "sides": {name: _pick(rng, p) for name, p in _SIDES.items()},
        # the patient's own thresholds: a finding is present while its driver's probability exceeds them
        "thresholds": {name: float(rng.uniform(0.15, 0.85)) for name in
                       ("Pleural Effusion", "Edema", "Consolidation", "Atelectasis", "Pneumonia")},
    }
    return traits


def film_findings(state: dict[str, float], hours: float, traits: dict) -> dict[str, str]:
    """The rendered findings at a latent state: name -> laterality."""
    f, r, i = state["fluid"], state["resp"], state["infection"]
    prob = {"Pleural Effusion": _sigmoid(3.0 * (f - 0.9)), "Edema": _sigmoid(3.0 * (f - 1.4)),
            "Consolidation": _sigmoid(3.0 * (i - 0.9)) if traits["lung_focus"] else _sigmoid(3.0 * (i + r - 3.2)),
            "Atelectasis": _sigmoid(2.5 * (r - 0.9) + 0.8 * state["ventilated"])}
    th = traits["thresholds"]
    out: dict[str, str] = {}
    if traits["cardiomegaly"]:
        out["Cardiomegaly"] = ""
    for name in ("Edema", "Consolidation", "Atelectasis", "Pleural Effusion"):
        if prob[name] > th[name]:
            out[name] = "bilateral" if name == "Edema" else traits["sides"][name]
    if "Consolidation" in out and _sigmoid(3.0 * (i - 1.3)) > th["Pneumonia"]:
        out["Pneumonia"] = out["Consolidation"]
    line = traits["central_line_hour"]
    if state["ventilated"] or (line is not None and hours >= line):
        out["Support Devices"] = ""
    return out


def _side_words(side: str) -> tuple[str, str]:
    """(adjective, plural suffix) for a laterality: 'right', 'bilateral' -> 's'."""
    return (side or "right"), ("s" if side == "bilateral" else "")


def film_report(findings: dict[str, str], prior: dict[str, str] | None, state: dict[str, float],
                traits: dict) -> tuple[str, str, dict[str, float]]:
    """(FINDINGS text, IMPRESSION text, CheXpert labels) of a film, written from its findings and the prior film's.

    Mentioned negatives are 0, a consolidation without a pneumonia call is "cannot be excluded" (-1 for Pneumonia),
    everything not mentioned is blank, and No Finding is 1 only when nothing but support devices is seen."""
    labels = {name: np.nan for name in ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
                                        "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
                                        "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
                                        "Support Devices")}
    prior = prior or {}
    sentences, impression = [], []

    def change(name: str) -> str:
        return "Persistent" if name in prior else ("New" if prior else "")

    if "Support Devices" in findings:
        sentences.append("Lines and tubes are in standard position." if state["ventilated"]
                         else "A central venous catheter is in place.")
        labels["Support Devices"] = 1.0
    if "Cardiomegaly" in findings:
        sentences.append("The heart is enlarged.")
        impression.append("Cardiomegaly.")
        labels["Cardiomegaly"] = 1.0
    else:
        sentences.append("Heart size is normal.")
        labels["Cardiomegaly"] = 0.0
    if "Edema" in findings:
        sentences.append(f"{change('Edema')} interstitial pulmonary edema with vascular congestion.".strip().capitalize())
        impression.append("Pulmonary edema.")
        labels["Edema"] = 1.0
    else:
        sentences.append("Interval resolution of pulmonary edema." if "Edema" in prior else "No pulmonary edema.")
        labels["Edema"] = 0.0
    if "Consolidation" in findings:
        side, s = _side_words(findings["Consolidation"])
        sentences.append(f"{change('Consolidation')} {side} lower lobe consolidation{'s' if s else ''}.")
        labels["Consolidation"] = 1.0
        if "Pneumonia" in findings:
            impression.append(f"{side.capitalize()} lower lobe pneumonia.")
            labels["Pneumonia"] = 1.0
        else:
            impression.append(f"{side.capitalize()} basilar consolidation; pneumonia cannot be excluded.")
            labels["Pneumonia"] = -1.0
    else:
        sentences.append("No focal consolidation.")
        labels["Consolidation"] = 0.0
    if "Atelectasis" in findings:
        side, _ = _side_words(findings["Atelectasis"])
        sentences.append("Bibasilar atelectasis." if side == "bilateral" else f"{side.capitalize()} basilar "
                                                                            "atelectasis.")
        labels["Atelectasis"] = 1.0
    if "Pleural Effusion" in findings:
        side, s = _side_words(findings["Pleural Effusion"])
        sentences.append(f"{change('Pleural Effusion')} {side} pleural effusion{s}.")
        impression.append(f"{side.capitalize()} pleural effusion{s}.")
        labels["Pleural Effusion"] = 1.0
    else:
        sentences.append("Interval resolution of the pleural effusion." if "Pleural Effusion" in prior
                         else "No pleural effusion.")
        labels["Pleural Effusion"] = 0.0
    sentences.append("No pneumothorax.")
    labels["Pneumothorax"] = 0.0
    pathology = [k for k, v in labels.items() if k not in ("No Finding", "Support Devices") and v in (1.0, -1.0)]
    if not pathology:
        labels["No Finding"] = 1.0
        impression.append("No acute cardiopulmonary process.")
    text = " ".join(s[0].upper() + s[1:] for s in (t.strip() for t in sentences))
    return text, " ".join(impression), labels


def _diagnoses(rng: np.random.Generator, adm: IcuAdmission) -> list[str]:
    """Phenotype keys coded for the admission: each state-driven code with a probability rising with its driver (not
    a threshold), missed with probability CODING_MISS, and coded without its driver with probability CODING_SPURIOUS,
    so no phenotype is a deterministic function of the charted state."""
    sev = adm.severity()
    traits = adm.traits

    def coded(probability: float) -> bool:
        p = CODING_SPURIOUS + (1.0 - CODING_MISS - CODING_SPURIOUS) * float(probability)
        return bool(rng.random() < p)

    keys = []
    if coded(traits["infected"] * _sigmoid(3.0 * (adm.infection.max() - 0.8))):
        keys.append("septicemia")
    if coded(max(0.9 * adm.ventilated.any(), _sigmoid(3.0 * (adm.resp.max() - 1.3)))):
        keys.append("respiratory_failure")
    if coded(traits["lung_focus"] * _sigmoid(3.0 * (adm.infection.max() - 0.6))):
        keys.append("pneumonia")
    if coded(_sigmoid(2.5 * (sev.max() - 2.6))):
        keys.append("septic_shock" if "septicemia" in keys else "shock")
    if coded(_sigmoid(1.5 * (sev.max() - 2.2))):
        keys.append("aki")
    if coded(traits["chf"]):
        keys.append("chf")
    if coded(0.7 * _sigmoid(3.0 * (adm.fluid.max() - 1.2))):
        keys.append("fluid_electrolyte")
    if coded(0.85 * any("Pleural Effusion" in f.findings for f in adm.films)):
        keys.append("pleural")
    if rng.random() < 0.15 + 0.25 * traits["chf"] + 0.04 * max(0, adm.age - 60) / 10:
        keys.append("dysrhythmia")
    for key, base, per_decade in _COMORBIDITIES:
        if rng.random() < base + per_decade * max(0, adm.age - 60) / 10:
            keys.append(key)
    return keys


def _plan_admission(ctx: DemoContext, index: int, subject_id: int, hadm_id: int, stay_ids: list[int]) -> IcuAdmission:
    rng = ctx.rng("mimic", "icu", "admission", index)
    kind = _pick(rng, _KINDS)
    sex = "M" if rng.random() < 0.56 else "F"
    age = int(rng.integers(15, 18)) if kind == "minor" else int(np.clip(rng.normal(65, 15), 18, 91))
    year = int(rng.integers(2110, 2200))
    intime = pd.Timestamp(year, int(rng.integers(1, 13)), int(rng.integers(1, 29)), int(rng.integers(0, 24)),
                          int(rng.integers(0, 60)), int(rng.integers(0, 60)))
    group = int(rng.integers(len(_YEAR_GROUPS)))
    icd_version = 9 if group < 2 or (group == 2 and rng.random() < 0.5) else 10
    admit = -float(rng.uniform(2.0, 30.0) if rng.random() < 0.7 else rng.uniform(30.0, 96.0))
    # ICU length of stay in hours: under 48 h for "short" admissions, else 49 h plus a gamma tail (capped at 14 days)
    los = float(rng.uniform(14.0, 46.0)) if kind == "short" else float(min(49.0 + rng.gamma(2.0, 30.0), 336.0))
    units = list(_CAREUNITS)
    first_unit = units[int(rng.integers(len(units)))]
    last_unit = units[(units.index(first_unit) + 1 + int(rng.integers(len(units) - 1))) % len(units)] \
        if kind == "transfer" else first_unit
    stays = [IcuStay(stay_ids[0], 0.0, los, first_unit, last_unit)]
    if kind == "second_stay":
        start = los + float(rng.uniform(12.0, 72.0))
        stays.append(IcuStay(stay_ids[1], start, start + float(rng.uniform(18.0, 96.0)), first_unit, first_unit))
    disch = stays[-1].out_hours + float(rng.uniform(24.0, 240.0))

    traits = _traits(rng, age)
    hours = np.arange(np.floor(admit), np.ceil(disch) + 1.0)
    chf, infected = traits["chf"], traits["infected"]
    fluid = _latent(rng, hours, -0.6 + 1.1 * chf + 0.3 * infected + rng.normal(0, 0.5),
                    rng.normal(0.15 + 0.3 * infected - 0.15 * chf, 0.45))
    infection = _latent(rng, hours, -1.0 + 1.9 * infected + rng.normal(0, 0.4),
                        rng.normal(-0.1, 0.4) if infected else rng.normal(0.0, 0.1))
    resp = _latent(rng, hours, -0.6 + 0.5 * traits["lung_focus"] + 0.3 * chf + rng.normal(0, 0.6),
                   rng.normal(0.0, 0.4))
    resp = resp + 0.35 * fluid + 0.25 * infection * traits["lung_focus"]
    adm = IcuAdmission(subject_id=subject_id, hadm_id=hadm_id, kind=kind, sex=sex, age=age,
                       anchor_year=year - int(rng.integers(0, 3)), anchor_year_group=_YEAR_GROUPS[group],
                       icd_version=icd_version, intime=intime, admit_hours=round(admit, 3),
                       disch_hours=round(disch, 3), stays=stays, hours=hours, fluid=fluid, resp=resp,
                       infection=infection, ventilated=_ventilation(resp, hours), traits=traits,
                       phantom_seed=int(ctx.rng("mimic", "icu", "phantom", subject_id).integers(2**31)))
    adm.late_severity = float(np.mean(severity(*(_late(adm, x) for x in (fluid, resp, infection)))))
    return adm


def _late(adm: IcuAdmission, values: np.ndarray) -> np.ndarray:
    """Values 36-60 h after ICU admission (up to the end of the first stay when it ends earlier)."""
    end = min(60.0, adm.stays[0].out_hours)
    mask = (adm.hours >= min(36.0, end - 1.0)) & (adm.hours <= end)
    return values[mask] if mask.any() else values[-1:]


def _add_films(ctx: DemoContext, adm: IcuAdmission, used_studies: set[int]) -> None:
    rng = ctx.rng("mimic", "icu", "films", adm.hadm_id)
    n = int(rng.choice([2, 3, 4], p=[0.35, 0.4, 0.25]))
    prior = None
    for hours in _film_hours(rng, adm.admit_hours, adm.disch_hours, n):
        study = int(rng.integers(50_000_000, 60_000_000))
        while study in used_studies:
            study = int(rng.integers(50_000_000, 60_000_000))
        used_studies.add(study)
        state = adm.state(hours)
        findings = film_findings(state, hours, adm.traits)
        text, impression, labels = film_report(findings, prior, state, adm.traits)
        adm.films.append(IcuFilm(hours=hours, findings=findings, labels=labels, findings_text=text,
                                 impression_text=impression, study_id=study,
                                 dicom_id="-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, size=5))))
        prior = findings


def _ids(rng: np.random.Generator, n: int, low: int, high: int, taken: set[int]) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        value = int(rng.integers(low, high))
        if value not in taken:
            taken.add(value)
            out.append(value)
    return out


def plan_icu_stays(ctx: DemoContext, n_stays: int) -> IcuPlan:
    """``n_stays`` ICU admissions (one patient each; a few have a second ICU stay) with their latent state, films,
    outcome and diagnoses; a function of ``ctx.seed`` and ``n_stays`` only (not of the film size or bad files)."""
    rng = ctx.rng("mimic", "icu", "ids")
    subjects = _ids(rng, n_stays, 10_000_000, 20_000_000, set())
    hadms = _ids(rng, n_stays, 20_000_000, 30_000_000, set())
    stay_ids = _ids(rng, 2 * n_stays, 30_000_000, 40_000_000, set())
    admissions = [_plan_admission(ctx, k, subjects[k], hadms[k], stay_ids[2 * k: 2 * k + 2]) for k in range(n_stays)]
    used_studies: set[int] = set()
    for adm in admissions:
        _add_films(ctx, adm, used_studies)
    if admissions:
        _assign_outcomes(ctx, admissions)
    return IcuPlan(admissions)


def radiographic_burden(adm: IcuAdmission) -> float:
    """Mean number of lung findings (edema, consolidation, atelectasis, effusion) a film would show, hourly over the
    late window: what the films add to the outcome beyond the charted state, through the patient's own thresholds."""
    lung = ("Edema", "Consolidation", "Atelectasis", "Pleural Effusion")
    window = _late(adm, adm.hours)
    counts = [len(set(lung) & set(film_findings(adm.state(h), h, adm.traits))) for h in window]
    return float(np.mean(counts))


def _standardise(values: np.ndarray) -> np.ndarray:
    spread = values.std()
    return (values - values.mean()) / (spread if spread > 0 else 1.0)


def _assign_outcomes(ctx: DemoContext, admissions: list[IcuAdmission]) -> None:
    """Death ~ Bernoulli(p): with probability OUTCOME_NOISE the outcome ignores the state (p = TARGET_MORTALITY: deaths
    and survivals the trajectory does not explain), else p = sigmoid(b + logit), where the logit weighs the late
    severity, the late radiographic burden (plan-standardised), age and an unobserved per-patient frailty; the
    intercept b makes the mean probability over the plan equal TARGET_MORTALITY. A death ends the last ICU stay and
    the admission."""
    late = _standardise(np.array([a.late_severity for a in admissions]))
    burden = _standardise(np.array([radiographic_burden(a) for a in admissions]))
    ages = np.array([a.age for a in admissions], float)
    frailty = np.array([ctx.rng("mimic", "icu", "frailty", a.hadm_id).standard_normal() for a in admissions])
    score = (OUTCOME_WEIGHTS["severity"] * late + OUTCOME_WEIGHTS["radiographic"] * burden
             + OUTCOME_WEIGHTS["age_per_decade"] * (ages - 65.0) / 10.0 + OUTCOME_WEIGHTS["frailty"] * frailty)
    lo, hi = -12.0, 12.0
    for _ in range(60):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if _sigmoid(mid + score).mean() < TARGET_MORTALITY else (lo, mid)
    probability = (1.0 - OUTCOME_NOISE) * _sigmoid((lo + hi) / 2.0 + score) + OUTCOME_NOISE * TARGET_MORTALITY
    for adm, p in zip(admissions, probability, strict=True):
        rng = ctx.rng("mimic", "icu", "outcome", adm.hadm_id)
        adm.death_probability = float(p)
        adm.died = bool(rng.random() < p)
        if adm.died:
            last = adm.stays[-1]
            adm.disch_hours = last.out_hours
            adm.films = [f for f in adm.films if f.hours <= last.out_hours - 0.25]
        adm.diagnoses = _diagnoses(rng, adm)
