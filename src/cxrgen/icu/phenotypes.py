"""The 25 acute-care phenotypes of the MIMIC benchmarks (Harutyunyan et al. 2019, mimic3-benchmarks
``hcup_ccs_2015_definitions.yaml``, ``use_in_benchmark: true``; carried over by MedFuse and DDL-CXR) as ICD code
prefixes, for ICD-9-CM and ICD-10-CM diagnoses (MIMIC-IV ``diagnoses_icd`` stores codes without the dot).

Sources: HCUP Clinical Classifications Software (CCS) single-level categories for ICD-9-CM (2015) and the HCUP CCS for
ICD-10-CM (beta, 2019) mapping. This is not the full CCS table: each category lists only code families whose every
member HCUP assigns to that category (e.g. ICD-9 433.x1 "with cerebral infarction" is acute cerebrovascular disease,
CCS 109, but 433.x0 is CCS 110 "occlusion of precerebral arteries", so ``433`` is not a prefix here; 427.4x/427.5
belong to CCS 107 "cardiac arrest and ventricular fibrillation", so ``427`` is split). A code matches a phenotype when
it starts with one of the listed prefixes of its ICD version; codes not covered by any prefix give no phenotype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Phenotype:
    slug: str
    name: str  # the benchmark's label (HCUP CCS category name)
    ccs: int  # HCUP CCS single-level category number
    icd9: tuple[str, ...]  # ICD-9-CM code prefixes (no dot)
    icd10: tuple[str, ...]  # ICD-10-CM code prefixes (no dot)


def _range(prefix: str, digits: str) -> tuple[str, ...]:
    return tuple(prefix + d for d in digits)


# Alphabetical by name, the column order of the benchmark's phenotyping task.
PHENOTYPES: tuple[Phenotype, ...] = (
    Phenotype("acute_renal_failure", "Acute and unspecified renal failure", 157, ("584", "586"), ("N17", "N19")),
    Phenotype("acute_cerebrovascular_disease", "Acute cerebrovascular disease", 109,
              ("430", "431", "432", "43301", "43311", "43321", "43331", "43381", "43391", "434", "436"),
              ("I60", "I61", "I62", "I63")),
    Phenotype("acute_myocardial_infarction", "Acute myocardial infarction", 100, ("410",), ("I21", "I22")),
    Phenotype("cardiac_dysrhythmias", "Cardiac dysrhythmias", 106,
              ("4270", "4271", "4272", "42731", "42732", "4276", "4279"),
              ("I47", "I48", *_range("I49", "1234589"))),
    Phenotype("chronic_kidney_disease", "Chronic kidney disease", 158, ("585",), ("N18",)),
    Phenotype("copd_bronchiectasis", "Chronic obstructive pulmonary disease and bronchiectasis", 127,
              ("490", "491", "492", "494", "496"), ("J40", "J41", "J42", "J43", "J44", "J47")),
    Phenotype("complications_of_care", "Complications of surgical procedures or medical care", 238,
              ("9971", "9972", "9973", "9974", "9975", "9981", "9983", "9985", "999"), ("T80", "T810", "T813", "T814")),
    Phenotype("conduction_disorders", "Conduction disorders", 105, ("426",), ("I44", "I45")),
    Phenotype("chf_nonhypertensive", "Congestive heart failure; nonhypertensive", 108, ("428", "39891"),
              ("I50", "I0981")),
    Phenotype("coronary_atherosclerosis", "Coronary atherosclerosis and other heart disease", 101,
              ("411", "413", "4140"), ("I20", "I24", "I251")),
    Phenotype("diabetes_with_complications", "Diabetes mellitus with complications", 50, _range("250", "123456789"),
              (*_range("E10", "012345678"), *_range("E11", "012345678"), *_range("E13", "012345678"))),
    Phenotype("diabetes_without_complication", "Diabetes mellitus without complication", 49, ("2500",),
              ("E109", "E119", "E139")),
    Phenotype("lipid_disorders", "Disorders of lipid metabolism", 53, _range("272", "01234"), _range("E78", "012345")),
    Phenotype("essential_hypertension", "Essential hypertension", 98, ("401",), ("I10",)),
    Phenotype("fluid_electrolyte_disorders", "Fluid and electrolyte disorders", 55, ("276",), ("E86", "E87")),
    Phenotype("gastrointestinal_hemorrhage", "Gastrointestinal hemorrhage", 153, ("578", "4560", "53082", "5693"),
              ("K920", "K921", "K922", "K625")),
    Phenotype("hypertension_with_complications", "Hypertension with complications and secondary hypertension", 99,
              ("402", "403", "404", "405"), ("I11", "I12", "I13", "I15")),
    Phenotype("other_liver_diseases", "Other liver diseases", 151,
              ("570", "5714", "5715", "5716", "5718", "5719", "572", "5730", "5738", "5739"), ("K72", "K74", "K76")),
    Phenotype("other_lower_respiratory", "Other lower respiratory disease", 133,
              ("514", "515", "51889", "7860", "7861", "7862", "7863"), ("R05", "R060", "R042", "J84")),
    Phenotype("other_upper_respiratory", "Other upper respiratory disease", 134,
              ("470", "471", "472", "473", "474", "475", "476", "477", "478", "7847"),
              ("J30", "J31", "J32", "J33", "J34", "J35", "J37", "J38", "J39", "R040")),
    Phenotype("pleurisy_pneumothorax_collapse", "Pleurisy; pneumothorax; pulmonary collapse", 130,
              ("5110", "5119", "512", "5180"), ("J90", "J93", "J9811", "J9819", "R091")),
    Phenotype("pneumonia", "Pneumonia (except that caused by tuberculosis or sexually transmitted disease)", 122,
              ("480", "481", "482", "483", "484", "485", "486", "5130"),
              ("J12", "J13", "J14", "J15", "J16", "J17", "J18")),
    Phenotype("respiratory_failure", "Respiratory failure; insufficiency; arrest (adult)", 131,
              ("51881", "51882", "51883", "51884", "7991"), ("J96", "J80", "R092")),
    Phenotype("septicemia", "Septicemia (except in labor)", 2, ("038", "0031", "0202", "0223", "0362", "0545",
                                                                 "77181", "99591", "99592"),
              ("A40", "A41", "A021", "A327", "A392", "A393", "A394", "B377", "R6520")),
    Phenotype("shock", "Shock", 249, ("7855",), ("R57",)),
)

PHENOTYPE_COLUMNS: tuple[str, ...] = tuple(f"pheno_{p.slug}" for p in PHENOTYPES)


def normalise_code(code: object) -> str:
    """MIMIC-IV stores codes without the dot, sometimes with padding spaces; dots are dropped too."""
    return str(code).strip().upper().replace(".", "") if isinstance(code, str) else ""


def phenotypes_of_code(code: str, version: int) -> list[str]:
    """Slugs of the phenotypes an ICD code (version 9 or 10) belongs to (usually zero or one)."""
    code = normalise_code(code)
    return [p.slug for p in PHENOTYPES
            if code and code.startswith(p.icd9 if version == 9 else p.icd10 if version == 10 else ())]


def phenotype_matrix(diagnoses: pd.DataFrame, hadm_ids: pd.Series) -> pd.DataFrame:
    """One row per admission of ``hadm_ids`` (same order), one 0/1 int column per phenotype (``pheno_<slug>``):
    1 when any diagnosis of the admission (``hadm_id``, ``icd_code``, ``icd_version``) maps to it."""
    out = pd.DataFrame(0, index=range(len(hadm_ids)), columns=list(PHENOTYPE_COLUMNS), dtype=np.int64)
    if diagnoses.empty:
        return out
    row_of = pd.Series(np.arange(len(hadm_ids)), index=pd.Index(hadm_ids.to_numpy()))
    dx = diagnoses[diagnoses["hadm_id"].isin(row_of.index)]
    codes = dx["icd_code"].map(normalise_code)
    versions = pd.to_numeric(dx["icd_version"], errors="coerce").to_numpy()
    rows = row_of.reindex(dx["hadm_id"].to_numpy()).to_numpy()
    for column, phenotype in zip(PHENOTYPE_COLUMNS, PHENOTYPES, strict=True):
        hit = ((versions == 9) & codes.str.startswith(phenotype.icd9).to_numpy()) | (
            (versions == 10) & codes.str.startswith(phenotype.icd10).to_numpy())
        out.loc[np.unique(rows[hit]), column] = 1
    return out
