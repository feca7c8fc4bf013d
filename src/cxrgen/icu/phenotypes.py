"""The 25 acute-care phenotypes of the MIMIC benchmarks (Harutyunyan et al. 2019, ``use_in_benchmark: true`` in
mimic3-benchmarks ``hcup_ccs_2015_definitions.yaml``; carried over by MedFuse and DDL-CXR) as an exact code table,
``resources/icu/phenotype_codes.csv`` in this package (``icd_version,code,phenotype``; MIMIC-IV ``diagnoses_icd``
stores codes without the dot). A diagnosis has a phenotype only when its (version, code) is a row of the table, as in
the benchmark's own lookup; unlisted codes give none.

ICD-9-CM (767 codes): every code of the 25 categories of the HCUP CCS 2015 single-level definitions file
(github.com/YerevaNN/mimic3-benchmarks ``mimic3benchmark/resources/hcup_ccs_2015_definitions.yaml``; DDL-CXR ships a
byte-identical copy), so the mapping is exact on that file's universe (15,072 codes of 283 categories). The
hand-written prefix lists this replaced matched only 465 of the 767 and put 37 codes of other categories into a
phenotype (e.g. 4010 malignant hypertension -> essential instead of CCS 99; 25002 -> without instead of with
complications; 4730-4739 sinusitis -> other upper respiratory disease instead of CCS 126).

ICD-10-CM (570 codes): the ICD-10 codes of the same 25 categories in DDL-CXR's own definitions
(github.com/Chenliu-svg/DDL-CXR ``mimic4extract/mimic3benchmark/resources/icd_9_10_definitions_2.yaml``, the file its
phenotyping scripts read; its ICD-9 codes of these categories are exactly the HCUP 2015 ones), so labels follow the
paper's. The former ICD-10 prefixes matched 316 of these 570 and 2 of other categories. That list is not HCUP's
ICD-10-CM CCS release but a sparse one (it looks like one ICD-10 code per ICD-9 code: 6 codes for acute myocardial
infarction, 11 for respiratory failure): e.g. J9601 (acute respiratory failure with hypoxia) and I2101 are in no
category there, hence give no phenotype here either. DDL-CXR looks codes up without their version; here versions are
kept apart (no code of the table is both a 9 and a 10 code). No machine-readable HCUP CCS ICD-10-CM table was found
offline, so the ICD-10 side is not verified against HCUP; to use one, point ``icu.cohort.phenotype_table`` at a CSV
with the same three columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Phenotype:
    slug: str
    name: str  # the benchmark's label (HCUP CCS category name)
    ccs: int  # HCUP CCS single-level category number


# Alphabetical by name, the column order of the benchmark's phenotyping task.
PHENOTYPES: tuple[Phenotype, ...] = (
    Phenotype("acute_renal_failure", "Acute and unspecified renal failure", 157),
    Phenotype("acute_cerebrovascular_disease", "Acute cerebrovascular disease", 109),
    Phenotype("acute_myocardial_infarction", "Acute myocardial infarction", 100),
    Phenotype("cardiac_dysrhythmias", "Cardiac dysrhythmias", 106),
    Phenotype("chronic_kidney_disease", "Chronic kidney disease", 158),
    Phenotype("copd_bronchiectasis", "Chronic obstructive pulmonary disease and bronchiectasis", 127),
    Phenotype("complications_of_care", "Complications of surgical procedures or medical care", 238),
    Phenotype("conduction_disorders", "Conduction disorders", 105),
    Phenotype("chf_nonhypertensive", "Congestive heart failure; nonhypertensive", 108),
    Phenotype("coronary_atherosclerosis", "Coronary atherosclerosis and other heart disease", 101),
    Phenotype("diabetes_with_complications", "Diabetes mellitus with complications", 50),
    Phenotype("diabetes_without_complication", "Diabetes mellitus without complication", 49),
    Phenotype("lipid_disorders", "Disorders of lipid metabolism", 53),
    Phenotype("essential_hypertension", "Essential hypertension", 98),
    Phenotype("fluid_electrolyte_disorders", "Fluid and electrolyte disorders", 55),
    Phenotype("gastrointestinal_hemorrhage", "Gastrointestinal hemorrhage", 153),
    Phenotype("hypertension_with_complications", "Hypertension with complications and secondary hypertension", 99),
    Phenotype("other_liver_diseases", "Other liver diseases", 151),
    Phenotype("other_lower_respiratory", "Other lower respiratory disease", 133),
    Phenotype("other_upper_respiratory", "Other upper respiratory disease", 134),
    Phenotype("pleurisy_pneumothorax_collapse", "Pleurisy; pneumothorax; pulmonary collapse", 130),
    Phenotype("pneumonia", "Pneumonia (except that caused by tuberculosis or sexually transmitted disease)", 122),
    Phenotype("respiratory_failure", "Respiratory failure; insufficiency; arrest (adult)", 131),
    Phenotype("septicemia", "Septicemia (except in labor)", 2),
    Phenotype("shock", "Shock", 249),
)

PHENOTYPE_COLUMNS: tuple[str, ...] = tuple(f"pheno_{p.slug}" for p in PHENOTYPES)
TABLE_COLUMNS = ("icd_version", "code", "phenotype")


def normalise_code(code: object) -> str:
    """MIMIC-IV stores codes without the dot, sometimes with padding spaces; dots are dropped too."""
    return str(code).strip().upper().replace(".", "") if isinstance(code, str) else ""


def load_phenotype_table(path: Path | str | None = None) -> pd.DataFrame:
    """The code table (``icd_version`` int 9/10, ``code`` normalised, ``phenotype`` slug): the built-in one when
    ``path`` is None, else the CSV at ``path`` (config ``icu.cohort.phenotype_table``), checked."""
    if path is None:
        return _builtin_table().copy()
    where = f"icu.cohort.phenotype_table = {str(path)!r}"
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ValueError(f"{where}: cannot read it as a CSV ({error})") from error
    return _checked_table(table, where)


@cache
def _builtin_table() -> pd.DataFrame:
    with resources.files("cxrgen").joinpath("resources/icu/phenotype_codes.csv").open() as f:
        return _checked_table(pd.read_csv(f, dtype=str, keep_default_na=False), "built-in phenotype_codes.csv")


def _checked_table(table: pd.DataFrame, where: str) -> pd.DataFrame:
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{where}: needs the columns {list(TABLE_COLUMNS)}, missing {missing}")
    table = table[list(TABLE_COLUMNS)].copy()
    bad_version = ~table["icd_version"].str.strip().isin(["9", "10"])
    if bad_version.any():
        raise ValueError(f"{where}: icd_version must be 9 or 10; row {int(np.argmax(bad_version)) + 2} has "
                         f"{table['icd_version'][bad_version].iloc[0]!r}")
    table["icd_version"] = table["icd_version"].astype(int)
    table["code"] = table["code"].map(normalise_code)
    if (table["code"] == "").any():
        raise ValueError(f"{where}: empty code in row {int(np.argmax(table['code'] == '')) + 2}")
    slugs = {p.slug for p in PHENOTYPES}
    unknown = sorted(set(table["phenotype"]) - slugs)
    if unknown:
        raise ValueError(f"{where}: unknown phenotype {unknown[:5]}; allowed: {sorted(slugs)}")
    return table.drop_duplicates().reset_index(drop=True)


def phenotypes_of_code(code: str, version: int, table: pd.DataFrame | None = None) -> list[str]:
    """Slugs of the phenotypes an ICD code (version 9 or 10) belongs to, in benchmark order (zero or one with the
    built-in table)."""
    table = _builtin_table() if table is None else table
    hits = set(table.loc[(table["icd_version"] == version) & (table["code"] == normalise_code(code)), "phenotype"])
    return [p.slug for p in PHENOTYPES if p.slug in hits]


def phenotype_matrix(diagnoses: pd.DataFrame, hadm_ids: pd.Series, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per admission of ``hadm_ids`` (same order), one 0/1 int column per phenotype (``pheno_<slug>``):
    1 when any diagnosis of the admission (``hadm_id``, ``icd_code``, ``icd_version``) is in ``table`` (default: the
    built-in one) with that phenotype."""
    table = _builtin_table() if table is None else table
    flags = np.zeros((len(hadm_ids), len(PHENOTYPES)), dtype=np.int64)
    if not diagnoses.empty:
        row_of = pd.Series(np.arange(len(hadm_ids)), index=pd.Index(hadm_ids.to_numpy()))
        dx = diagnoses[diagnoses["hadm_id"].isin(row_of.index)]
        dx = pd.DataFrame({"row": row_of.reindex(dx["hadm_id"].to_numpy()).to_numpy(),
                           "icd_version": pd.to_numeric(dx["icd_version"], errors="coerce").fillna(0).astype(int),
                           "code": dx["icd_code"].map(normalise_code)})
        hits = dx.merge(table, on=["icd_version", "code"])[["row", "phenotype"]].drop_duplicates()
        flags[hits["row"].to_numpy(), pd.Index(PHENOTYPE_COLUMNS).get_indexer("pheno_" + hits["phenotype"])] = 1
    return pd.DataFrame(flags, columns=list(PHENOTYPE_COLUMNS))
