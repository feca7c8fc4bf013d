"""The DDL-CXR report (rule report_icu) from hand-made json: values appear where they belong, notes are computed from
the numbers, and missing pieces are said to be missing instead of failing."""

import json
import subprocess
import sys

import pytest

from cxrgen.report.icu import claim_rows, icu_markdown, notes
from cxrgen.stages.report_icu import report_icu

METRICS = ["mortality_auroc", "mortality_auprc", "phenotype_macro_auroc", "phenotype_macro_auprc"]


def _ci(value, low, high):
    return {"value": value, "ci_low": low, "ci_high": high, "ci_method": "percentile bootstrap"}


def _results():
    groups = {}
    for k, (group, n) in enumerate((("overall", 40), ("<12", 12), ("12-24", 10), ("24-36", 9), (">=36", 9))):
        arms = {arm: {m: _ci(0.6 + 0.01 * j + 0.05 * a + 0.001 * k, 0.5, 0.9) for j, m in enumerate(METRICS)}
                for a, arm in enumerate(("ehr", "ehr_last_cxr", "ddl_cxr"))}
        # overall mortality AUROC: DDL-CXR better with an interval above 0; everything else includes 0
        diff = {m: _ci(0.05, -0.02, 0.12) for m in METRICS}
        if group == "overall":
            diff["mortality_auroc"] = _ci(0.0777, 0.011, 0.15)
        groups[group] = {"n": n, "arms": arms, "comparisons": {"ddl_cxr vs ehr_last_cxr": diff}}
    return {"split": "test", "metrics": METRICS, "seeds": {"ehr": [0, 1], "ehr_last_cxr": [0, 1], "ddl_cxr": [0, 1]},
            "bootstrap": "percentile bootstrap, 200 resamples, 95%", "pooling": "mean over seeds", "groups": groups}


def _cohort():
    return {"mimic_iv_version": "v2.2", "stay_steps": [{"step": "icu_stays", "stays": 123},
                                                       {"step": "prediction_stays", "stays": 96}],
            "prediction_stays": {"train": 67, "val": 15, "test": 14},
            "prediction_subjects": {"train": 66, "val": 15, "test": 14},
            "pairs": {"train": 57, "val": 11, "test": 13}, "mortality_rate": {"train": 0.1194, "val": 0.2,
                                                                                "test": 0.1429},
            "phenotype_prevalence": {"septicemia": 0.49, "shock": 0.0, "pneumonia": 0.38, "conduction_disorders": 0.0},
            "published": {"mimic_iv_version": "v2.0", "prediction_stays": {"train": 5142, "val": 861, "test": 1483},
                          "prediction_subjects": {"train": 4538, "val": 757, "test": 1324},
                          "pairs": {"train": 8545, "val": 1392, "test": 2353},
                          "mortality_rate": {"train": 0.145, "val": 0.144, "test": 0.148}}}


def _quality():
    interval = _ci(0.0123, 0.01, 0.015)
    arms3 = {"generated": interval, "prior": _ci(0.0201, 0.018, 0.022), "ae_reconstruction": _ci(0.004, 0.003, 0.005)}
    errors = {m: {"n_pairs": 13, "arms": arms3, "vs_prior": {"generated": _ci(-0.0078, -0.0101, -0.0052),
                                                             "ae_reconstruction": _ci(-0.016, -0.02, -0.01)}}
              for m in ("pixel_mse", "ssim", "latent_mse", "probability_distance")}
    macro = {"generated": _ci(0.7312, 0.6, 0.85), "prior": _ci(0.65, 0.5, 0.8), "real_later": _ci(0.9, 0.8, 1.0),
             "ae_reconstruction": _ci(0.88, 0.75, 0.98)}
    return {"split": "test", "n_pairs": 13, "samples_per_pair": 4, "n_stays": 12, "n_patients": 12,
            "resolution": 64, "evaluator_resolution": 64, "sampling": {"steps": 25, "eta": 1.0},
            "ci": "percentile bootstrap, 200 resamples, 95% over pairs", "errors": errors,
            "classifier": {"evaluable_findings": ["Edema", "Pleural Effusion"],
                           "skipped_findings": [{"finding": "Fracture", "n_pos": 0, "n_neg": 5}],
                           "macro_auroc": macro, "vs_prior": {"generated": _ci(0.0845, -0.05, 0.2)}},
            "distribution": {"evaluator": {"description": "in-domain DenseNet", "vs_real_later": {
                "generated": {"n_a": 52, "n_b": 13, "fid": _ci(12.34, 10.0, 15.0), "kid": _ci(0.002, 0.001, 0.003)},
                "prior": {"n_a": 13, "n_b": 13, "fid": _ci(20.5, 15.0, 25.0), "kid": _ci(0.004, 0.002, 0.006)}}}},
            "skipped_backbones": ["xrv: skipped — weights file absent"], "pairs_with_finding_changes": 7,
            "seconds": 12.0, "seconds_generation": 8.0}


def test_report_holds_every_table_and_computed_notes():
    text = icu_markdown(_cohort(), _results(), _quality(), figure="icu.png", grid="image_pairs.png")
    assert text.startswith("# DDL-CXR")
    # cohort side by side with the published counts and the version
    assert "| prediction stays | test | 14 | 1483 |" in text and "| image pairs | train | 57 | 8545 |" in text
    assert "| in-hospital mortality | test | 14.3 % | 14.8 % |" in text and "MIMIC-IV v2.2" in text
    assert "MIMIC-IV v2.0" in text
    # the claim table: by group, both arms and the paired difference
    assert "| all | 40 | mortality AUROC |" in text and "0.078 [0.011, 0.150] | yes |" in text
    assert "| ≥ 36 h | 9 | phenotypes macro AUPRC |" in text
    # image quality and FID tables
    assert "| generated − prior (paired) | -0.0078 [-0.0101, -0.0052]" in text
    assert "| generated | 0.731 [0.600, 0.850] | 0.085 [-0.050, 0.200] |" in text and "12.34 [10.00, 15.00]" in text and "Fracture (0+/5−)" in text
    assert "![AUROC/AUPRC per arm by hours since the last CXR](icu.png)" in text
    # notes from the numbers, not written in advance
    assert "2 of 4 phenotypes have no positive stay in the cohort (conduction_disorders, shock)" in text
    assert ("19 of 20 paired differences (groups × metrics) have an interval that includes 0; above 0 (DDL-CXR "
            "better): 1, below 0 (last CXR better): 0.") in text
    assert "Test stays: 14 here vs 1483 published (0.9 %)" in text and "deaths among the test stays: 2 of 14" in text
    assert "pixel MSE to the real later image is lower than the prior image's" in text


def test_claim_rows_and_notes_follow_the_numbers():
    results = _results()
    rows = claim_rows(results)
    assert len(rows) == 5 * 4 and sum(r["excludes_zero"] for r in rows) == 1
    results["groups"]["<12"]["comparisons"]["ddl_cxr vs ehr_last_cxr"]["mortality_auprc"] = _ci(-0.2, -0.3, -0.1)
    lines = "\n".join(notes(None, results, None))
    assert "18 of 20" in lines and "better): 1, below 0 (last CXR better): 1." in lines
    quality = _quality()
    quality["errors"]["pixel_mse"]["vs_prior"]["generated"] = _ci(0.001, -0.002, 0.004)
    assert "not distinguishable from the prior" in "\n".join(notes(None, None, quality))
    del results["groups"]["overall"]["comparisons"]["ddl_cxr vs ehr_last_cxr"]
    assert len(claim_rows(results)) == 4 * 4


@pytest.mark.parametrize("missing", ["cohort", "results", "quality", "all"])
def test_missing_pieces_are_named_not_fatal(missing):
    pieces = {"cohort": _cohort(), "results": _results(), "quality": _quality()}
    for key in pieces if missing == "all" else [missing]:
        pieces[key] = None
    text = icu_markdown(pieces["cohort"], pieces["results"], pieces["quality"], figure="icu.png")
    # the outcome results feed two sections (tables and the claim)
    assert text.count("not available in this run") == {"cohort": 1, "results": 2, "quality": 1, "all": 4}[missing]
    assert ("| all | 40 | EHR + last CXR carried forward |" in text) == (pieces["results"] is not None)
    assert ("| prediction stays | test | 14 | 1483 |" in text) == (pieces["cohort"] is not None)
    broken = _quality()
    del broken["classifier"]
    assert "evaluation_images.json is incomplete" in icu_markdown(None, None, broken)


def test_stage_writes_markdown_and_figures_from_files(tmp_path):
    (tmp_path / "cohort.json").write_text(json.dumps(_cohort()))
    (tmp_path / "icu_results.json").write_text(json.dumps(_results()))
    (tmp_path / "evaluation_images.json").write_text(json.dumps(_quality()))
    out = tmp_path / "reports" / "icu"
    text = report_icu(cohort_json=tmp_path / "cohort.json", results_json=tmp_path / "icu_results.json",
                      quality_json=tmp_path / "evaluation_images.json", quality_grid=tmp_path / "absent.png",
                      out_md=out / "icu.md", out_png=out / "icu.png", out_grid=out / "image_pairs.png")
    assert (out / "icu.md").read_text() == text and "](icu.png)" in text and "](image_pairs.png)" in text
    for name in ("icu.png", "image_pairs.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # no torch behind the report library
    code = "import sys, cxrgen.report.icu, cxrgen.icu.image_quality; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
