"""Subgroup scores (sex, age band) and the fairness gap on hand-made predictions with known AUROCs."""

import numpy as np
import pandas as pd
import pytest

from cxrgen.evaluate.subgroups import subgroup_scores


def _case():
    # 12 images per sex; F: scores rank every positive first (AUROC 1), M: reversed (AUROC 0), U: not recorded
    truth = np.tile([1.0, 0.0], 18)[:, None]
    perfect = np.where(truth == 1, 0.9, 0.1)
    probs = np.concatenate([perfect[:12], 1 - perfect[12:24], perfect[24:]])
    rows = pd.DataFrame({"sex": ["F"] * 12 + ["M"] * 12 + ["U"] * 12,
                         "age_bucket": (["40-59"] * 6 + ["60-79"] * 6) * 2 + ["unknown"] * 12})
    return rows, truth, probs


def test_gap_is_best_minus_worst_known_group():
    rows, truth, probs = _case()
    scores = subgroup_scores(rows, truth, probs, ["Edema"], min_images=10)
    sex = scores["sex"]
    assert sex["groups"]["F"]["auroc_macro"] == pytest.approx(1.0)
    assert sex["groups"]["M"]["auroc_macro"] == pytest.approx(0.0)
    assert sex["groups"]["U"]["n"] == 12 and sex["groups"]["U"]["auroc_macro"] == pytest.approx(1.0)
    assert sex["auroc_macro_gap"] == pytest.approx(1.0) and (sex["best"], sex["worst"]) == ("F", "M")
    assert sex["groups"]["F"]["f1_macro"] == pytest.approx(1.0) and sex["groups"]["M"]["f1_macro"] == 0.0
    # each age band mixes 6 F (perfect) and 6 M (reversed) images: AUROC 0.5 in both, no gap
    age = scores["age_bucket"]
    assert age["groups"]["40-59"]["n"] == 12 and age["auroc_macro_gap"] == pytest.approx(0.0)


def test_small_and_unknown_groups_never_make_a_gap():
    rows, truth, probs = _case()
    scores = subgroup_scores(rows, truth, probs, ["Edema"], min_images=13)  # every group has 12 images
    assert scores["sex"]["auroc_macro_gap"] is None and scores["sex"]["best"] is None
    rows["sex"] = ["U"] * 24 + ["F"] * 12
    assert subgroup_scores(rows, truth, probs, ["Edema"])["sex"]["auroc_macro_gap"] is None  # one known group
    with pytest.raises(ValueError, match="rows"):
        subgroup_scores(rows.head(5), truth, probs, ["Edema"])
    assert "sex" not in subgroup_scores(rows.drop(columns="sex"), truth, probs, ["Edema"])
