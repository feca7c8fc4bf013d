"""The 25 benchmark phenotypes as HCUP CCS code prefixes, ICD-9 and ICD-10, versions kept apart."""

from __future__ import annotations

import pandas as pd
import pytest

from cxrgen.icu.phenotypes import PHENOTYPE_COLUMNS, PHENOTYPES, phenotype_matrix, phenotypes_of_code


def test_twenty_five_benchmark_phenotypes_in_the_benchmark_order():
    assert len(PHENOTYPES) == 25 and len({p.slug for p in PHENOTYPES}) == 25
    assert [p.name for p in PHENOTYPES] == sorted(p.name for p in PHENOTYPES)  # the benchmark's column order
    assert (PHENOTYPES[0].slug, PHENOTYPES[-2].slug, PHENOTYPES[-1].slug) == (
        "acute_renal_failure", "septicemia", "shock")
    assert all(p.icd9 and p.icd10 for p in PHENOTYPES)


@pytest.mark.parametrize(("code", "version", "expected"), [
    ("4280", 9, ["chf_nonhypertensive"]), ("42833", 9, ["chf_nonhypertensive"]), ("I5023", 10, ["chf_nonhypertensive"]),
    ("486", 9, ["pneumonia"]), ("J189", 10, ["pneumonia"]),
    ("0389", 9, ["septicemia"]), ("A419", 10, ["septicemia"]), ("78552", 9, ["shock"]), ("R578", 10, ["shock"]),
    ("5849", 9, ["acute_renal_failure"]), ("N179", 10, ["acute_renal_failure"]), ("5856", 9, ["chronic_kidney_disease"]),
    ("25000", 9, ["diabetes_without_complication"]), ("25013", 9, ["diabetes_with_complications"]),
    ("E119", 10, ["diabetes_without_complication"]), ("E1165", 10, ["diabetes_with_complications"]),
    ("43491", 9, ["acute_cerebrovascular_disease"]), ("43311", 9, ["acute_cerebrovascular_disease"]),
    ("43310", 9, []),  # precerebral occlusion without infarction: CCS 110
    ("42731", 9, ["cardiac_dysrhythmias"]), ("42741", 9, []),  # ventricular fibrillation: CCS 107
    ("I4891", 10, ["cardiac_dysrhythmias"]), ("I4901", 10, []),
    ("4019", 9, ["essential_hypertension"]), ("I10", 10, ["essential_hypertension"]),
    ("40391", 9, ["hypertension_with_complications"]), ("I130", 10, ["hypertension_with_complications"]),
    ("2724", 9, ["lipid_disorders"]), ("E785", 10, ["lipid_disorders"]),
    ("51881", 9, ["respiratory_failure"]), ("J9601", 10, ["respiratory_failure"]),
    ("5119", 9, ["pleurisy_pneumothorax_collapse"]), ("J9811", 10, ["pleurisy_pneumothorax_collapse"]),
    ("E871", 10, ["fluid_electrolyte_disorders"]), ("E871", 9, []),  # ICD-9 E-code (external cause), not E87.1
    ("2765", 9, ["fluid_electrolyte_disorders"]), ("410.71", 9, ["acute_myocardial_infarction"]),
    (" 4280 ", 9, ["chf_nonhypertensive"]), ("V5861", 9, []), ("Z7901", 10, []),
])
def test_codes_map_to_their_ccs_category(code, version, expected):
    assert phenotypes_of_code(code, version) == expected


def test_admission_matrix_ors_the_diagnoses():
    dx = pd.DataFrame({"hadm_id": [1, 1, 2, 3], "icd_code": ["486", "99592", "I509", "E871"],
                       "icd_version": [9, 9, 10, 9]})
    matrix = phenotype_matrix(dx, pd.Series([3, 1, 2, 4]))
    assert list(matrix.columns) == list(PHENOTYPE_COLUMNS)
    on = [sorted(c.removeprefix("pheno_") for c in matrix.columns if row[c]) for _, row in matrix.iterrows()]
    assert on == [[], ["pneumonia", "septicemia"], ["chf_nonhypertensive"], []]
    assert matrix.dtypes.unique().tolist() == ["int64"]
