"""The 25 benchmark phenotypes as an exact (ICD version, code) table: built-in, or a user CSV checked on load."""

from __future__ import annotations

import pandas as pd
import pytest

from cxrgen.icu.phenotypes import (
    PHENOTYPE_COLUMNS,
    PHENOTYPES,
    load_phenotype_table,
    phenotype_matrix,
    phenotypes_of_code,
)


def test_twenty_five_benchmark_phenotypes_in_the_benchmark_order():
    assert len(PHENOTYPES) == 25 and len({p.slug for p in PHENOTYPES}) == 25
    assert [p.name for p in PHENOTYPES] == sorted(p.name for p in PHENOTYPES)  # the benchmark's column order
    assert (PHENOTYPES[0].slug, PHENOTYPES[-2].slug, PHENOTYPES[-1].slug) == (
        "acute_renal_failure", "septicemia", "shock")


def test_builtin_table_is_a_function_of_version_and_code_covering_every_phenotype():
    table = load_phenotype_table()
    assert not table.duplicated(["icd_version", "code"]).any()
    assert table.groupby("icd_version").size().to_dict() == {9: 767, 10: 570}  # HCUP CCS 2015; DDL-CXR's ICD-10
    for version in (9, 10):
        assert set(table.loc[table["icd_version"] == version, "phenotype"]) == {p.slug for p in PHENOTYPES}


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
    ("51881", 9, ["respiratory_failure"]), ("J9600", 10, ["respiratory_failure"]),
    ("5119", 9, ["pleurisy_pneumothorax_collapse"]), ("J9819", 10, ["pleurisy_pneumothorax_collapse"]),
    ("E871", 10, ["fluid_electrolyte_disorders"]), ("E871", 9, []),  # ICD-9 E-code (external cause), not E87.1
    ("2765", 9, ["fluid_electrolyte_disorders"]), ("410.71", 9, ["acute_myocardial_infarction"]),
    (" 4280 ", 9, ["chf_nonhypertensive"]), ("V5861", 9, []), ("Z7901", 10, []), ("4280", 10, []), ("", 9, []),
])
def test_codes_map_to_their_ccs_category(code, version, expected):
    assert phenotypes_of_code(code, version) == expected


@pytest.mark.parametrize(("code", "version", "expected"), [
    # ICD-9 codes the former hand-written prefixes put in the wrong phenotype (HCUP CCS 2015 definitions file)
    ("4010", 9, ["hypertension_with_complications"]),  # malignant essential hypertension is CCS 99, not 98
    ("25002", 9, ["diabetes_with_complications"]), ("25003", 9, ["diabetes_with_complications"]),
    ("4730", 9, []), ("47400", 9, []),  # sinusitis CCS 126, tonsillitis CCS 124
    ("41402", 9, []), ("99931", 9, []),  # graft atherosclerosis, line infection: CCS 237 (device complication)
    ("57140", 9, []),  # chronic hepatitis: CCS 6
    ("5121", 9, ["complications_of_care"]), ("27661", 9, ["complications_of_care"]),
    ("7861", 9, ["other_upper_respiratory"]),  # stridor
    # ICD-9 codes they missed (0221 pulmonary anthrax, V4611 respirator dependence: as HCUP files them)
    ("34660", 9, ["acute_cerebrovascular_disease"]), ("42781", 9, ["cardiac_dysrhythmias"]),
    ("V4581", 9, ["coronary_atherosclerosis"]), ("449", 9, ["septicemia"]), ("9951", 9, ["fluid_electrolyte_disorders"]),
    ("0221", 9, ["pneumonia"]), ("V4611", 9, ["respiratory_failure"]),
    ("53100", 9, ["gastrointestinal_hemorrhage"]), ("V451", 9, ["chronic_kidney_disease"]),
    # ICD-10 codes of DDL-CXR's definitions the prefixes got wrong or missed
    ("E8771", 10, ["complications_of_care"]), ("R0603", 10, ["respiratory_failure"]),
    ("I169", 10, ["essential_hypertension"]), ("R6521", 10, ["shock"]), ("K250", 10, ["gastrointestinal_hemorrhage"]),
    ("J9601", 10, []),  # not in DDL-CXR's sparse ICD-10 list, so no phenotype (the prefix J96 said respiratory failure)
])
def test_codes_the_prefix_mapping_got_wrong(code, version, expected):
    assert phenotypes_of_code(code, version) == expected


def test_admission_matrix_ors_the_diagnoses():
    dx = pd.DataFrame({"hadm_id": [1, 1, 2, 3, 3], "icd_code": ["486", "99592", "I509", "E871", None],
                       "icd_version": [9, 9, 10, 9, None]})
    matrix = phenotype_matrix(dx, pd.Series([3, 1, 2, 4]))
    assert list(matrix.columns) == list(PHENOTYPE_COLUMNS)
    on = [sorted(c.removeprefix("pheno_") for c in matrix.columns if row[c]) for _, row in matrix.iterrows()]
    assert on == [[], ["pneumonia", "septicemia"], ["chf_nonhypertensive"], []]
    assert matrix.dtypes.unique().tolist() == ["int64"]


def test_user_table_replaces_the_builtin_one(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("icd_version,code,phenotype,note\n10,J96.01,respiratory_failure,x\n9,486,shock,y\n")
    table = load_phenotype_table(path)
    assert phenotypes_of_code("J9601", 10, table) == ["respiratory_failure"]
    assert phenotypes_of_code("486", 9, table) == ["shock"] and phenotypes_of_code("4280", 9, table) == []
    dx = pd.DataFrame({"hadm_id": [7, 7], "icd_code": ["J9601", "486"], "icd_version": [10, 9]})
    matrix = phenotype_matrix(dx, pd.Series([7]), table)
    assert matrix.loc[0, "pheno_respiratory_failure"] == matrix.loc[0, "pheno_shock"] == 1
    assert matrix.to_numpy().sum() == 2


@pytest.mark.parametrize(("text", "message"), [
    ("version,code,phenotype\n9,486,pneumonia\n", "missing \\['icd_version'\\]"),
    ("icd_version,code,phenotype\n11,486,pneumonia\n", "icd_version must be 9 or 10; row 2 has '11'"),
    ("icd_version,code,phenotype\n9,486,pneumonia\n9,,pneumonia\n", "empty code in row 3"),
    ("icd_version,code,phenotype\n9,486,Pneumonia\n", "unknown phenotype \\['Pneumonia'\\]"),
    ("", "cannot read it as a CSV"),
])
def test_malformed_user_table_names_the_key(tmp_path, text, message):
    path = tmp_path / "table.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"icu.cohort.phenotype_table = .*{message}"):
        load_phenotype_table(path)
    with pytest.raises(ValueError, match="cannot read it as a CSV"):
        load_phenotype_table(tmp_path / "absent.csv")
