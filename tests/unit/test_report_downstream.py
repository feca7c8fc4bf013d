"""Rule report_downstream on hand-written run_downstream results: one table per experiment, mean ± t-CI over seeds
(no CI from a single seed), the imbalance experiment's per-finding tables, the figure and the JSON table."""

import json

import numpy as np
import pytest

from cxrgen.report.downstream import mean_ci
from cxrgen.stages.report_downstream import report_downstream

CLASSIFIER = {"model": {"growth_rate": 8, "block_config": [2, 2], "num_init_features": 16}, "max_steps": 2,
              "batch_size": 4, "lr": 1e-3, "selection": "val macro AUROC"}


def arm(n_real: int, n_synthetic: int, auroc: float, findings: list[str]) -> dict:
    return {"n_real": n_real, "n_synthetic": n_synthetic, "task_findings": findings,
            "positives": dict.fromkeys(findings, 5),
            "test": {"auroc": {"macro": auroc, "micro": auroc + 0.01}, "f1": {"macro": 0.4, "micro": 0.5},
                     "per_finding": {f: {"f1": 0.3 if k else None} for k, f in enumerate(findings)}}}


def result(experiment: str, seed: int, arms: dict) -> dict:
    return {"experiment": experiment, "seed": seed, "classifier": CLASSIFIER, "n_val": 8, "n_test": 12,
            "views": ["PA"], "resolution": 32, "variant": "cheff", "n_real_train": 40, "arms": arms,
            "pool": {"n": 30, "sets": ["train_twins"], "excluded": {"prompt_from_held_out": 0}}}


def test_report_over_experiments_and_seeds(tmp_path):
    findings = ["Cardiomegaly", "Edema"]
    results = [result("imbalance", 0, {"real": arm(40, 0, 0.6, findings),
                                       "real+synthetic": arm(40, 10, 0.65, findings)}),
               result("low_data", 0, {"real_100pct": arm(40, 0, 0.70, []), "real_25pct": arm(10, 0, 0.55, [])}),
               result("low_data", 1, {"real_100pct": arm(40, 0, 0.74, []), "real_25pct": arm(10, 0, 0.57, [])})]
    paths = []
    for k, payload in enumerate(results):
        paths.append(tmp_path / f"{k}.json")
        paths[-1].write_text(json.dumps(payload))
    table = report_downstream(metrics_paths=paths, out_md=tmp_path / "r/downstream.md",
                              out_png=tmp_path / "r/downstream.png", out_json=tmp_path / "r/downstream.json")
    md = (tmp_path / "r/downstream.md").read_text()
    assert "### Imbalance" in md and "### Low data" in md and "n=1, no CI" in md  # imbalance: one seed
    assert "| real+synthetic | 40 | 10 | 0.650 (n=1, no CI) |" in md
    assert "| real | – | 0.300 |" in md  # per-finding F1: no test positive → –
    assert "Demo-scale numbers" in md
    low = table[(table["experiment"] == "low_data") & (table["arm"] == "real_100pct")].iloc[0]
    assert low["seeds"] == [0, 1] and low["auroc_macro"] == pytest.approx(0.72)
    assert low["auroc_macro_ci"] == pytest.approx(12.706205 * 0.02, rel=1e-5)  # t(0.975, 1 dof) × sem
    assert f"| real_100pct | 40 | 0 | 0.720 ± {low['auroc_macro_ci']:.3f} |" in md
    assert (tmp_path / "r/downstream.png").stat().st_size > 1000
    assert len(json.loads((tmp_path / "r/downstream.json").read_text())) == 4
    with pytest.raises(ValueError, match="no downstream results"):
        report_downstream(metrics_paths=[], out_md=tmp_path / "x.md", out_png=tmp_path / "x.png",
                          out_json=tmp_path / "x.json")


def test_mean_ci_matches_a_t_interval():
    mean, half = mean_ci([0.6, 0.7, 0.8])
    assert mean == pytest.approx(0.7) and half == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-5)
    assert mean_ci([0.7]) == (0.7, None)


def test_interval_overlap_is_stated_against_the_reference_arm(tmp_path):
    runs = [result("low_data", s, {"real_100pct": arm(40, 0, 0.80 + 0.01 * s, []),
                                   "real_25pct": arm(10, 0, 0.55 + 0.01 * s, []),
                                   "real_25pct+synthetic": arm(10, 30, 0.79 + 0.01 * s, [])}) for s in range(3)]
    paths = []
    for k, payload in enumerate(runs):
        paths.append(tmp_path / f"{k}.json")
        paths[-1].write_text(json.dumps(payload))
    report_downstream(metrics_paths=paths, out_md=tmp_path / "r.md", out_png=tmp_path / "r.png",
                      out_json=tmp_path / "r.json")
    md = (tmp_path / "r.md").read_text()
    assert ("Macro AUROC against `real_100pct`: the 95 % intervals of `real_25pct+synthetic` overlap it (no "
            "difference shown); those of `real_25pct` do not.") in md
    report_downstream(metrics_paths=paths[:1], out_md=tmp_path / "one.md", out_png=tmp_path / "one.png",
                      out_json=tmp_path / "one.json")
    assert "fewer than 2 seeds" in (tmp_path / "one.md").read_text()
