"""Image quality of DDL-CXR's generated later images (rule evaluate_ddl_images): the prior-baseline comparison logic on
hand-made numbers, and the stage end to end on a tiny synthetic cohort (tiny LDM, AE, evaluator and store)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from ddl_helpers import icu_cfg, write_cohort
from evaluate_helpers import narrowed, random_labels, write_store

from cxrgen.config import validate_config
from cxrgen.evaluate import metrics as M
from cxrgen.evaluate.classifier import save_evaluator, tiny_evaluator
from cxrgen.hashing import dir_digest
from cxrgen.icu.image_quality import (
    classifier_agreement,
    finding_changes,
    masked_auroc,
    paired_means,
    probability_distance,
)
from cxrgen.models.autoencoder import build_autoencoder, save_autoencoder
from cxrgen.stages.evaluate_ddl_images import evaluate_ddl_images
from cxrgen.stages.train_ddl_ldm import train_ddl_ldm

# ------------------------------------------------------------------------------------ prior-baseline comparison


def test_paired_difference_uses_the_same_pairs_for_both_arms():
    rng = np.random.default_rng(0)
    prior = rng.uniform(0.0, 1.0, 40)  # wide spread between pairs
    generated = np.stack([prior - 0.1 + rng.normal(0, 0.001, 40), prior - 0.1 + rng.normal(0, 0.001, 40)], axis=1)
    out = paired_means({"generated": generated, "prior": prior}, "prior", resamples=300, confidence=0.95, seed=1)
    assert out["n_pairs"] == 40
    assert out["arms"]["prior"]["value"] == pytest.approx(prior.mean())
    assert out["arms"]["generated"]["value"] == pytest.approx(generated.mean())
    diff = out["vs_prior"]["generated"]
    assert diff["value"] == pytest.approx(-0.1, abs=1e-3)
    # paired: the between-pair spread cancels, so the difference is far tighter than either arm's own interval
    assert diff["ci_high"] < 0 and diff["ci_high"] - diff["ci_low"] < 0.01
    arm = out["arms"]["prior"]
    assert arm["ci_high"] - arm["ci_low"] > 0.1
    assert "prior" not in out["vs_prior"]


def test_paired_means_drop_undefined_pairs_and_refuse_ragged_arms():
    out = paired_means({"a": np.array([1.0, np.nan, 3.0]), "b": np.array([0.0, 1.0, 1.0])}, "b", resamples=20,
                       confidence=0.9, seed=0)
    assert out["arms"]["a"]["value"] == pytest.approx(2.0)
    assert out["vs_b"]["a"]["value"] == pytest.approx((1.0 + 2.0) / 2)
    with pytest.raises(ValueError, match="one value per pair"):
        paired_means({"a": np.ones(3), "b": np.ones(4)}, "b", resamples=5, confidence=0.9, seed=0)


def test_classifier_agreement_against_known_later_labels_only():
    labels = np.full((6, 14), np.nan)
    labels[:, 10] = [1, 1, 1, 0, 0, 0]  # pleural effusion: evaluable
    labels[:, 5] = [1, 1, np.nan, 0, 0, 0]  # edema, one unknown
    labels[:, 2] = [0, 0, 0, 0, 0, 0]  # cardiomegaly: negatives only -> skipped
    truth_like = np.nan_to_num(labels, nan=0.0)
    perfect = 0.2 + 0.6 * truth_like
    perfect[2, 5] = 0.0  # the unknown edema label gets the worst possible score: must not count
    inverted = 1.0 - perfect
    inverted[2, 5] = 1.0
    out = classifier_agreement(labels, {"generated": perfect, "prior": inverted}, "prior", resamples=100,
                               confidence=0.95, seed=0)
    assert out["evaluable_findings"] == ["Edema", "Pleural Effusion"]
    assert {s["finding"] for s in out["skipped_findings"]} >= {"Cardiomegaly", "No Finding"}
    assert out["macro_auroc"]["generated"]["value"] == pytest.approx(1.0)
    assert out["macro_auroc"]["prior"]["value"] == pytest.approx(0.0)
    assert out["vs_prior"]["generated"]["value"] == pytest.approx(1.0)
    assert out["per_finding_auroc"]["generated"] == {"Edema": 1.0, "Pleural Effusion": 1.0}
    # several samples per pair: mean over samples of each sample's macro AUROC
    two = classifier_agreement(labels, {"generated": np.stack([perfect, inverted]), "prior": inverted}, "prior",
                               resamples=20, confidence=0.95, seed=0)
    assert two["samples"] == {"generated": 2, "prior": 1}
    assert two["macro_auroc"]["generated"]["value"] == pytest.approx(0.5)
    np.testing.assert_allclose(masked_auroc(labels, perfect)[[5, 10]], [1.0, 1.0])
    assert np.isnan(masked_auroc(labels, perfect)[2])


def test_probability_distance_and_finding_changes():
    reference = np.zeros((2, 14))
    probs = np.stack([np.full((2, 14), 0.5), np.full((2, 14), 0.25)])  # [S=2, P=2, K]
    np.testing.assert_allclose(probability_distance(probs, reference), [[0.5, 0.25], [0.5, 0.25]])
    np.testing.assert_allclose(probability_distance(probs[0], reference), [0.5, 0.5])
    prior, later = np.full(14, np.nan), np.full(14, np.nan)
    prior[[5, 10, 2, 0]] = [0, 0, 1, 1]
    later[[5, 10, 2, 0]] = [1, 1, 0, 0]
    later[8] = 1  # atelectasis unknown before: not named
    assert finding_changes(prior, later) == "−Cardiomegaly, +Edema, +Pleural Effusion"  # No Finding not named
    assert finding_changes(prior, prior) == "no change"


# ------------------------------------------------------------------------------------------------ the stage

RES = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A synthetic cohort whose latents a real (untrained, tiny) autoencoder decodes, a store holding every image,
    a 2-step LDM and an untrained tiny evaluator."""
    root = tmp_path_factory.mktemp("ddl_images")
    paths = write_cohort(root, n_stays=16)
    torch.manual_seed(0)
    ae_cfg = validate_config({"sources": {"nih": {}}, "autoencoder": {
        "block_out_channels": [8, 16, 16], "layers_per_block": 1, "norm_num_groups": 8, "latent_channels": 2}})
    save_autoencoder(build_autoencoder(ae_cfg["autoencoder"], RES), paths["ae"])
    meta = json.loads((paths["latents"] / "meta.json").read_text())
    (paths["latents"] / "meta.json").write_text(json.dumps({**meta, "autoencoder_sha256": dir_digest(paths["ae"])}))
    cache_index = pd.read_parquet(paths["latents"] / "latents_index.parquet")
    ids = cache_index["image_id"].tolist()
    labels = random_labels(np.random.default_rng(1), len(ids))
    write_store(root / "store", ids, labels, source="mimic", resolutions=(RES,),
                extra={"split": cache_index["split"].tolist(), "view": ["AP"] * len(ids),
                       "patient_pid": [i.split("-")[1] for i in ids]})
    train_ddl_ldm(cohort_dir=paths["cohort"], latents_dir=paths["latents"], ae_dir=paths["ae"],
                  cfg=icu_cfg("ldm", max_steps=2), seed=0, out_dir=root / "ldm", state_dir=root / "state")
    save_evaluator(tiny_evaluator(RES), root / "evaluator")
    return {**paths, "ldm": root / "ldm", "evaluator": root / "evaluator", "index": root / "store" / "index.parquet",
            "root": root}


def _cfgs(**quality):
    config = validate_config({"sources": {"nih": {}}, "icu": {
        "generation": {"steps": 3, "batch_size": 4},
        "evaluation_images": {"samples_per_pair": 2, "figure_pairs": 3, "distribution_resamples": 5,
                              "kid": {"subset_size": 4, "subsets": 3, "bootstrap_subsets": 2},
                              "bootstrap": {"resamples": 30}, **quality}},
        "evaluation": {"backbones": {"use": ["evaluator"]}}})
    return (narrowed(config["icu"], "evaluate_ddl_images"),
            narrowed(config["evaluation"], "evaluate_ddl_images.backbones_cfg"))


def _run(setup, out_dir, **quality):
    cfg, backbones_cfg = _cfgs(**quality)
    return evaluate_ddl_images(cohort_dir=setup["cohort"], latents_dir=setup["latents"], ae_dir=setup["ae"],
                               model_dir=setup["ldm"], evaluator_dir=setup["evaluator"], index_path=setup["index"],
                               cfg=cfg, backbones_cfg=backbones_cfg, seed=5, out_dir=out_dir)


def test_stage_compares_generated_and_prior_with_the_real_later_image(setup, tmp_path):
    payload = _run(setup, tmp_path / "out")
    pairs = pd.read_parquet(setup["cohort"] / "pairs.parquet")
    test = pairs[pairs["split"] == "test"].sort_values("pair_key").reset_index(drop=True)
    assert payload["n_pairs"] == len(test) > 2 and payload["samples_per_pair"] == 2 and payload["resolution"] == RES
    for name in ("evaluation_images.json", "evaluation_images.md", "pairs.parquet", "evaluation_images.png"):
        assert (tmp_path / "out" / name).is_file(), name

    # the prior baseline is the real prior image / latent against the real later one, computed independently here
    from cxrgen.data.latents import load_latents
    from cxrgen.evaluate.classifier import LabelledImages, with_store_root
    from cxrgen.icu.inputs import cache_rows

    cache = load_latents(setup["latents"])
    scale = cache.scaling_factor
    prior_z = cache.mean[cache_rows(cache, test["prior_image_id"].tolist())] * scale
    later_z = cache.mean[cache_rows(cache, test["later_image_id"].tolist())] * scale
    assert payload["errors"]["latent_mse"]["arms"]["prior"]["value"] == pytest.approx(
        float(((prior_z - later_z) ** 2).mean()), rel=1e-5)
    store = with_store_root(pd.read_parquet(setup["index"]), setup["index"].parent).set_index("image_id")

    def images(ids):
        data = LabelledImages(store.loc[ids].reset_index(), RES)
        return torch.stack([data.image(i) for i in range(len(data))])

    prior_mse = M.mse(images(test["prior_image_id"].tolist()), images(test["later_image_id"].tolist()))
    assert payload["errors"]["pixel_mse"]["arms"]["prior"]["value"] == pytest.approx(float(prior_mse.mean()),
                                                                                       rel=1e-6)
    table = pd.read_parquet(tmp_path / "out" / "pairs.parquet")
    assert table["pair_key"].tolist() == test["pair_key"].tolist()
    np.testing.assert_allclose(table["pixel_mse_prior"], prior_mse, rtol=1e-6)
    gen = payload["errors"]["pixel_mse"]
    assert gen["vs_prior"]["generated"]["value"] == pytest.approx(
        float((table["pixel_mse_generated"] - table["pixel_mse_prior"]).mean()), rel=1e-6)
    assert np.isfinite(table["ssim_generated"]).all() and (table["ssim_generated"] <= 1).all()
    fid = payload["distribution"]["evaluator"]["vs_real_later"]
    assert fid["generated"]["n_a"] == 2 * len(test) and fid["prior"]["n_a"] == fid["prior"]["n_b"] == len(test)
    assert fid["generated"]["fid"]["value"] >= 0
    classifier = payload["classifier"]
    assert set(classifier["macro_auroc"]) == {"generated", "prior", "ae_reconstruction", "real_later"}
    assert classifier["samples"]["generated"] == 2
    text = (tmp_path / "out" / "evaluation_images.md").read_text()
    assert "generated − prior (paired)" in text and f"{RES} px" in text
    assert set(table["finding_changes"]) - {"no change"}  # the synthetic labels do change between images

    # determinism: same config and seed -> the same numbers; another sample count -> other generated numbers
    again = _run(setup, tmp_path / "again")
    for metric in ("pixel_mse", "ssim", "latent_mse"):
        assert again["errors"][metric] == payload["errors"][metric]
    one = _run(setup, tmp_path / "one", samples_per_pair=1, max_pairs=3)
    assert one["n_pairs"] == 3 and one["distribution"]["evaluator"]["vs_real_later"]["generated"]["n_a"] == 3


def test_stage_names_the_split_when_it_has_no_pairs(setup, tmp_path):
    pairs = pd.read_parquet(setup["cohort"] / "pairs.parquet")
    assert set(pairs["split"]) == {"train", "val", "test"}
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for name in ("stays.parquet", "ehr.npz"):
        (cohort / name).write_bytes((setup["cohort"] / name).read_bytes())
    pairs[pairs["split"] != "test"].to_parquet(cohort / "pairs.parquet", index=False)
    cfg, backbones_cfg = _cfgs()
    with pytest.raises(ValueError, match="split = 'test'"):
        evaluate_ddl_images(cohort_dir=cohort, latents_dir=setup["latents"], ae_dir=setup["ae"],
                            model_dir=setup["ldm"], evaluator_dir=setup["evaluator"], index_path=setup["index"],
                            cfg=cfg, backbones_cfg=backbones_cfg, seed=5, out_dir=tmp_path / "out")



def test_pair_samples_do_not_depend_on_their_batch(setup):
    from cxrgen.icu.ddl_ldm import load_ddl_ldm
    from cxrgen.icu.image_quality import generate_pair_latents, pair_sample_seeds

    model, scheduler_config, _ = load_ddl_ldm(setup["ldm"])
    g = torch.Generator().manual_seed(0)
    prior, values, static = torch.randn(3, 2, 8, 8, generator=g), torch.randn(3, 24, 76, generator=g), torch.rand(3, 2)
    start, end = torch.tensor([0, 2, 4]), torch.tensor([10, 12, 20])
    seeds = pair_sample_seeds(5, ["a", "b", "c"], 2)
    kwargs = {"prior": prior, "values": values, "static": static, "start": start, "end": end, "seeds": seeds,
              "steps": 2, "eta": 1.0}
    together = generate_pair_latents(model, scheduler_config, **kwargs, batch_size=6)
    alone = generate_pair_latents(model, scheduler_config, **kwargs, batch_size=1)
    assert together.shape == (2, 3, 2, 8, 8)
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
    assert (together[0] - together[1]).abs().amax() > 0.1  # two samples of a pair: two noises
