"""ICU predictors: one architecture whose arms differ only in inputs, class weights from the training split, and
a resumable stage that writes per-stay predictions."""

import numpy as np
import pandas as pd
import pytest
import torch
from ddl_helpers import icu_cfg, write_cohort

from cxrgen.icu.predictor import ARMS, build_predictor, positive_class_weights
from cxrgen.stages.train_icu_predictor import train_icu_predictor
from cxrgen.train.loop import Interrupted, latest_checkpoint

SIZES = {"n_features": 76, "n_static": 2, "max_hours": 24, "latent_channels": 2, "latent_size": 8, "n_outputs": 26}


def _inputs(seed=0, batch=3):
    g = torch.Generator().manual_seed(seed)
    return {"values": torch.randn(batch, 24, 76, generator=g), "static": torch.rand(batch, 2, generator=g),
            "start": torch.zeros(batch, dtype=torch.long), "end": torch.tensor([24, 10, 3])[:batch],
            "last_latent": torch.randn(batch, 2, 8, 8, generator=g),
            "generated_latent": torch.randn(batch, 2, 8, 8, generator=g)}


def _model(arm):
    torch.manual_seed(0)
    return build_predictor(icu_cfg("predictor"), arm, **SIZES).eval()


def test_arms_share_the_architecture_and_initial_weights():
    models = {arm: _model(arm) for arm in ARMS}
    reference = models["ehr"].state_dict()
    for arm, model in models.items():
        state = model.state_dict()
        assert list(state) == list(reference), arm
        assert all(torch.equal(state[k], reference[k]) for k in reference), arm


def test_arms_differ_only_in_inputs():
    x = _inputs()
    other_last = {**x, "last_latent": x["last_latent"] + 1.0}
    other_generated = {**x, "generated_latent": x["generated_latent"] + 1.0}
    with torch.no_grad():
        ehr, last, ddl = _model("ehr"), _model("ehr_last_cxr"), _model("ddl_cxr")
        assert torch.equal(ehr(**x), ehr(**other_last)) and torch.equal(ehr(**x), ehr(**other_generated))
        assert torch.equal(ehr(**x), ehr(**{**x, "last_latent": None, "generated_latent": None}))
        assert (last(**x) - last(**other_last)).abs().max() > 1e-4
        assert torch.equal(last(**x), last(**other_generated))
        assert (ddl(**x) - ddl(**other_last)).abs().max() > 1e-4
        assert (ddl(**x) - ddl(**other_generated)).abs().max() > 1e-4
        assert ehr(**x).shape == (3, 26)
    with pytest.raises(ValueError, match="generated_cxr latent"):
        ddl(**{**x, "generated_latent": None})
    with pytest.raises(ValueError, match="allowed"):
        build_predictor(icu_cfg("predictor"), "ehr_plus", **SIZES)


def test_pos_weight_comes_from_the_training_split_only():
    targets = np.array([[1, 0], [0, 0], [0, 1], [0, 1], [1, 1], [1, 1]], dtype=np.float32)
    splits = np.array(["train", "train", "train", "train", "val", "test"])
    weights = positive_class_weights(targets, splits)
    np.testing.assert_allclose(weights, [3 / 1, 2 / 2])
    changed = targets.copy()
    changed[4:] = 0  # val/test labels never move the weights
    np.testing.assert_array_equal(positive_class_weights(changed, splits), weights)
    no_positive = np.zeros((4, 1), np.float32)
    assert positive_class_weights(no_positive, splits[:4]).tolist() == [1.0]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("icu_pred")
    paths = write_cohort(root)
    stays = pd.read_parquet(paths["cohort"] / "stays.parquet")
    rng = np.random.default_rng(0)
    np.savez(root / "generated.npz", stay_keys=stays["stay_key"].to_numpy().astype(str),
             latents=rng.normal(size=(len(stays), 2, 8, 8)).astype(np.float32), scaling_factor=0.5)
    paths["generated"] = root / "generated.npz"
    return paths


def _train(cohort, root, arm, cfg, stop_after=None):
    return train_icu_predictor(cohort_dir=cohort["cohort"], arm=arm, cfg=cfg, seed=1, out_dir=root / "out",
                               state_dir=root / "state", latents_dir=cohort["latents"], ae_dir=cohort["ae"],
                               generated_path=cohort["generated"], stop_after_steps=stop_after)


def test_stage_trains_resumes_and_writes_predictions(cohort, tmp_path):
    cfg = icu_cfg("predictor", max_steps=4, checkpoint_every=2)
    straight = _train(cohort, tmp_path / "a", "ddl_cxr", cfg)
    with pytest.raises(Interrupted):
        _train(cohort, tmp_path / "b", "ddl_cxr", cfg, stop_after=2)
    assert latest_checkpoint(tmp_path / "b" / "state").name == "ckpt-00000002.pt"
    resumed = _train(cohort, tmp_path / "b", "ddl_cxr", cfg)
    assert resumed["resumed_from"] == 2 and straight["steps"] == resumed["steps"] == 4
    a = pd.read_parquet(tmp_path / "a" / "out" / "predictions.parquet")
    b = pd.read_parquet(tmp_path / "b" / "out" / "predictions.parquet")
    pd.testing.assert_frame_equal(a, b)  # interrupted + resumed == uninterrupted, bit for bit
    stays = pd.read_parquet(cohort["cohort"] / "stays.parquet")
    assert set(a["split"]) == {"val", "test"} and len(a) == int(stays["split"].isin(["val", "test"]).sum())
    assert {"p_mortality", "y_mortality", "p_pheno_p00", "last_image_bin", "arm", "seed"} <= set(a.columns)
    assert a[[c for c in a.columns if c.startswith("p_")]].stack().between(0, 1).all()
    train = stays[stays["split"] == "train"]
    expected = (train["mortality"] == 0).sum() / (train["mortality"] == 1).sum()
    assert straight["pos_weight"][0] == pytest.approx(expected)
    ehr_only = train_icu_predictor(cohort_dir=cohort["cohort"], arm="ehr", cfg=cfg, seed=1,
                                   out_dir=tmp_path / "ehr" / "out", state_dir=tmp_path / "ehr" / "state")
    assert ehr_only["steps"] == 4  # needs neither the latent cache nor generated latents
