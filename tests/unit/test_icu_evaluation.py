"""evaluate_icu: the vectorised AUROC/AUPRC agree with sklearn; a clearly better arm wins overall and in the bins
with a paired interval above zero; seeds are pooled; the tables are written."""

import json

import numpy as np
import pandas as pd
import pytest
from ddl_helpers import icu_cfg
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrgen.evaluate.metrics import auroc_columns, average_precision_columns
from cxrgen.icu.evaluation import align_predictions, evaluate_arms
from cxrgen.icu.inputs import LAST_IMAGE_BINS
from cxrgen.stages.evaluate_icu import evaluate_icu


def test_vectorised_metrics_equal_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 5)) < 0.3).astype(float)
    s = np.round(rng.random((60, 5)) + 0.3 * y, 1)  # rounded: many ties
    y[:, 4] = 0  # one class only
    auc, ap = auroc_columns(y, s), average_precision_columns(y, s)
    for k in range(4):
        assert auc[k] == pytest.approx(roc_auc_score(y[:, k], s[:, k]), abs=1e-12)
        assert ap[k] == pytest.approx(average_precision_score(y[:, k], s[:, k]), abs=1e-12)
    assert np.isnan(auc[4]) and np.isnan(ap[4])


def _predictions(n=240, seeds=(0, 1)):
    """ddl_cxr sees the outcome clearly in every bin, ehr_last_cxr is weak, ehr is noise."""
    rng = np.random.default_rng(1)
    truth = (rng.random((n, 26)) < 0.3).astype(int)
    truth[:4, 0], truth[4:8, 0] = 1, 0  # both classes in every bin
    bins = np.asarray(LAST_IMAGE_BINS)[np.arange(n) % 4]
    rows = []
    for arm, signal in (("ddl_cxr", 2.5), ("ehr_last_cxr", 0.4), ("ehr", 0.0)):
        for seed in seeds:
            logits = signal * (2 * truth - 1) + rng.normal(size=truth.shape)
            frame = pd.DataFrame({"stay_key": [f"s{i:04d}" for i in range(n)], "split": "test", "arm": arm,
                                  "seed": seed, "last_image_bin": bins})
            for k in range(26):
                task = "mortality" if k == 0 else f"pheno_p{k - 1:02d}"
                frame[f"p_{task}"] = 1 / (1 + np.exp(-logits[:, k]))
                frame[f"y_{task}"] = truth[:, k]
            rows.append(frame)
    val = rows[0].assign(split="val")
    return pd.concat([*rows, val], ignore_index=True)


def test_the_clearly_better_arm_wins_with_paired_intervals(tmp_path):
    frame = _predictions()
    results = evaluate_arms(frame, icu_cfg("evaluation"))
    overall = results["groups"]["overall"]
    assert overall["n"] == 240 and results["seeds"] == {a: [0, 1] for a in ("ddl_cxr", "ehr", "ehr_last_cxr")}
    for metric in ("mortality_auroc", "phenotype_macro_auroc", "phenotype_macro_auprc"):
        best, weak = overall["arms"]["ddl_cxr"][metric], overall["arms"]["ehr_last_cxr"][metric]
        assert best["value"] > weak["value"] and best["ci_low"] <= best["value"] <= best["ci_high"]
    assert abs(overall["arms"]["ehr"]["mortality_auroc"]["value"] - 0.5) < 0.15
    for group in ("overall", *LAST_IMAGE_BINS):
        entry = results["groups"][group]
        assert entry["n"] == (240 if group == "overall" else 60)
        diff = entry["comparisons"]["ddl_cxr vs ehr_last_cxr"]["phenotype_macro_auroc"]
        assert diff["ci_low"] > 0, group  # paired interval above zero in every bin
        point = (entry["arms"]["ddl_cxr"]["phenotype_macro_auroc"]["value"]
                 - entry["arms"]["ehr_last_cxr"]["phenotype_macro_auroc"]["value"])
        assert diff["value"] == pytest.approx(point)
    # seeds pooled: the point estimate is the mean of the seeds' metrics
    quick = icu_cfg("evaluation", bootstrap={"resamples": 2})
    single = [evaluate_arms(frame[(frame["seed"] == s) | (frame["split"] != "test")], quick) for s in (0, 1)]
    per_seed = [r["groups"]["overall"]["arms"]["ddl_cxr"]["mortality_auroc"]["value"] for r in single]
    assert overall["arms"]["ddl_cxr"]["mortality_auroc"]["value"] == pytest.approx(np.mean(per_seed))

    out = evaluate_icu(prediction_files=[_write(frame, tmp_path)], cfg=quick, out_dir=tmp_path / "e")
    saved = json.loads((tmp_path / "e" / "icu_results.json").read_text())
    assert saved["groups"]["overall"]["arms"]["ddl_cxr"] == out["groups"]["overall"]["arms"]["ddl_cxr"]
    assert out["groups"]["overall"]["arms"]["ddl_cxr"]["mortality_auroc"]["value"] == pytest.approx(
        overall["arms"]["ddl_cxr"]["mortality_auroc"]["value"])
    table = (tmp_path / "e" / "icu_results.md").read_text()
    assert "| >=36 | 60 | ddl_cxr vs ehr_last_cxr |" in table and "| overall | 240 | ehr |" in table


def _write(frame, tmp_path):
    path = tmp_path / "predictions.parquet"
    frame.to_parquet(path, index=False)
    return path


def test_arms_must_cover_the_same_stays():
    frame = _predictions(n=40, seeds=(0,))
    broken = frame.drop(index=frame.index[(frame["arm"] == "ehr") & (frame["stay_key"] == "s0003")])
    with pytest.raises(ValueError, match="exactly once"):
        align_predictions(broken)
    relabelled = frame.copy()
    relabelled.loc[(relabelled["arm"] == "ehr") & (relabelled["stay_key"] == "s0010"), "y_mortality"] ^= 1
    with pytest.raises(ValueError, match="other labels"):
        align_predictions(relabelled)
