"""DDL-CXR LDM: the contrastive margin term, the label policy of the auxiliary BCE, training (resume, determinism)
and the generation of the latents at prediction time."""

import numpy as np
import pandas as pd
import pytest
import torch
from ddl_helpers import icu_cfg, write_cohort

from cxrgen.data.latents import load_latents
from cxrgen.icu.ddl_ldm import (
    DdlLdmTrainer,
    contrastive_margin_loss,
    load_ddl_ldm,
    noised_condition,
    pair_data,
    sample_seed,
    snr_weight,
)
from cxrgen.icu.inputs import load_ehr, pair_labels, read_pairs
from cxrgen.models.diffusion import make_train_scheduler
from cxrgen.stages.generate_ddl_latents import generate_ddl_latents
from cxrgen.stages.train_ddl_ldm import train_ddl_ldm
from cxrgen.train.loop import Interrupted, latest_checkpoint, seed_everything
from cxrgen.train.losses import masked_bce
from cxrgen.train.sections import loop_config

# ------------------------------------------------------------------------------------------- contrastive margin term


def _errors(true_mean: float, noised_mean: float, shape=(1, 2, 3, 3)):
    """Per-element squared errors whose per-sample means are the given values (constant, so both hinges agree)."""
    return (torch.full(shape, true_mean, requires_grad=True), torch.full(shape, noised_mean, requires_grad=True))


@pytest.mark.parametrize("hinge", ["sample", "element"])
def test_contrastive_term_sign_and_margin(hinge):
    margin = 0.2
    err_true, err_noised = _errors(0.5, 0.8)  # true-EHR error lower by 0.3 >= margin: satisfied
    assert contrastive_margin_loss(err_true, err_noised, margin, hinge=hinge).item() == 0.0
    err_true, err_noised = _errors(0.5, 0.7)  # lower by exactly the margin: satisfied
    assert contrastive_margin_loss(err_true, err_noised, margin, hinge=hinge).item() == pytest.approx(0.0, abs=1e-6)
    err_true, err_noised = _errors(0.5, 0.6)  # lower by less than the margin: 0.1 left
    assert contrastive_margin_loss(err_true, err_noised, margin, hinge=hinge).item() == pytest.approx(0.1)
    err_true, err_noised = _errors(0.9, 0.6)  # the noised EHR denoises better: margin + 0.3
    loss = contrastive_margin_loss(err_true, err_noised, margin, hinge=hinge)
    assert loss.item() == pytest.approx(0.5)
    loss.backward()  # descending the term lowers the true-EHR error and raises the noised-EHR error
    assert (err_true.grad > 0).all() and (err_noised.grad < 0).all()


def test_contrastive_hinges_differ_where_elements_disagree():
    err_true = torch.tensor([[0.0, 1.0]])  # mean 0.5
    err_noised = torch.tensor([[1.0, 0.0]])  # mean 0.5
    assert contrastive_margin_loss(err_true, err_noised, 0.2, hinge="sample").item() == pytest.approx(0.2)
    # per element: relu(-1 + 0.2) = 0 and relu(1 + 0.2) = 1.2 -> mean 0.6
    assert contrastive_margin_loss(err_true, err_noised, 0.2, hinge="element").item() == pytest.approx(0.6)
    with pytest.raises(ValueError, match="contrastive_hinge"):
        contrastive_margin_loss(err_true, err_noised, 0.2, hinge="triplet")


def test_snr_weight_and_per_sample_weights():
    scheduler = make_train_scheduler(icu_cfg("ldm")["schedule"])
    t = torch.tensor([0, 500, 999])
    abar = scheduler.alphas_cumprod[t]
    snr = abar / (1 - abar)
    torch.testing.assert_close(snr_weight(scheduler.alphas_cumprod, t), 1.0 / (1.0 + snr))
    assert snr_weight(scheduler.alphas_cumprod, t)[0] < 0.01 < 0.99 < snr_weight(scheduler.alphas_cumprod, t)[2]
    err_true = torch.stack([torch.full((2, 2), 0.9), torch.full((2, 2), 0.9)])
    err_noised = torch.full((2, 2, 2), 0.6)
    weighted = contrastive_margin_loss(err_true, err_noised, 0.2, weights=torch.tensor([1.0, 0.0]))
    assert weighted.item() == pytest.approx(0.5 / 2)


def test_noised_condition_mixes_embedding_and_noise():
    tokens, delta = torch.ones(2, 3, 4), torch.full((2, 3, 4), -1.0)
    assert torch.equal(noised_condition(tokens, 0.0, delta), tokens)
    assert torch.equal(noised_condition(tokens, 1.0, delta), delta)
    torch.testing.assert_close(noised_condition(tokens, 0.25, delta), torch.full((2, 3, 4), 0.5))


# ------------------------------------------------------------------------------------------------ label policy


def test_nan_labels_contribute_nothing():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 0.0, -2.0]], requires_grad=True)
    labels = torch.tensor([[1.0, float("nan"), 0.0], [float("nan"), float("nan"), 1.0]])
    loss = masked_bce(logits, labels)
    known = torch.isfinite(labels)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[known], labels[known])
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert (logits.grad[~known] == 0).all() and (logits.grad[known] != 0).all()
    # any value of a masked logit gives the same loss
    other = logits.detach().clone()
    other[~known] = 100.0
    torch.testing.assert_close(masked_bce(other, labels), expected)
    empty = torch.zeros(2, 3, requires_grad=True)
    nothing = masked_bce(empty, torch.full((2, 3), float("nan")))
    nothing.backward()
    assert nothing.item() == 0.0 and (empty.grad == 0).all()


def test_pair_labels_refuse_the_public_codes_0_to_3_coding():
    frame = pd.DataFrame({f"label_{c}": [1.0, 0.0, np.nan] for c in __import__("cxrgen.labels").labels.LABEL_COLUMNS})
    assert torch.isnan(pair_labels(frame)[2]).all() and pair_labels(frame)[0].eq(1).all()
    frame.iloc[0, 3] = 2.0  # "positive" in the paper code's coding
    with pytest.raises(ValueError, match="explicit binary policy"):
        pair_labels(frame)
    bare = frame.rename(columns=lambda c: c.removeprefix("label_")).iloc[1:]
    assert pair_labels(bare).shape == (2, 14)  # also reads lbl_* columns


# ------------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("icu"))


def _data(cohort):
    pairs = read_pairs(cohort["cohort"])
    train = pairs[pairs["split"] == "train"].reset_index(drop=True)
    cache = load_latents(cohort["latents"], ae_dir=cohort["ae"])
    return pair_data(train, load_ehr(cohort["cohort"]), cache, with_std=True)


def _fit(state_dir, cfg, cohort, stop_after=None):
    loop = loop_config(cfg, seed=3, stop_after_steps=stop_after, device="cpu")
    seed_everything(loop.seed)
    trainer = DdlLdmTrainer(cfg, _data(cohort))
    return trainer, trainer.fit(loop, state_dir)


def test_two_steps_resume_equals_uninterrupted_and_is_deterministic(tmp_path, cohort):
    cfg = icu_cfg("ldm", max_steps=2, checkpoint_every=1, contrastive_ramp="none")
    straight, result = _fit(tmp_path / "a", cfg, cohort)
    assert result.steps_done == 2
    assert all(np.isfinite(h[k]) for h in result.history for k in ("loss", "mse", "label_bce", "contrastive"))
    assert result.history[-1]["contrastive"] > 0  # untrained: the true EHR is no better than noise yet
    again, _ = _fit(tmp_path / "b", cfg, cohort)
    with pytest.raises(Interrupted):
        _fit(tmp_path / "c", cfg, cohort, stop_after=1)
    assert latest_checkpoint(tmp_path / "c").name == "ckpt-00000001.pt"
    resumed, result = _fit(tmp_path / "c", cfg, cohort)
    assert result.resumed_from == 1
    for other in (again, resumed):
        for (name, p), q in zip(straight.model.state_dict().items(), other.model.state_dict().values(), strict=True):
            assert torch.equal(p, q), name
        for p, q in zip(straight.ema.shadow_params, other.ema.shadow_params, strict=True):
            assert torch.equal(p, q)
    # the EHR encoder and the label head train with the UNet
    seed_everything(3)
    untrained = DdlLdmTrainer(cfg, _data(cohort))
    enc = dict(untrained.model.ehr_encoder.named_parameters())
    assert any(not torch.equal(p, enc[n]) for n, p in straight.model.ehr_encoder.named_parameters())
    assert not torch.equal(straight.model.label_head.linear.weight, untrained.model.label_head.linear.weight)


def test_contrastive_ramp_starts_at_zero(cohort):
    cfg = icu_cfg("ldm", max_steps=4)
    seed_everything(0)
    trainer = DdlLdmTrainer(cfg, _data(cohort))
    trainer.model.eval()  # no dropout: both calls see the same network
    trainer.max_steps = 4
    assert [trainer.ramp(s) for s in range(4)] == [0.0, 0.25, 0.5, 0.75]
    g = torch.Generator().manual_seed(0)
    terms = trainer.loss([0, 1, 2, 3], g, torch.device("cpu"), ramp=0.0)
    torch.testing.assert_close(terms.total, terms.mse + 1.4 * terms.label_bce)
    g = torch.Generator().manual_seed(0)
    ramped = trainer.loss([0, 1, 2, 3], g, torch.device("cpu"), ramp=0.5)
    torch.testing.assert_close(ramped.total, terms.mse + 1.4 * terms.label_bce + 0.5 * ramped.contrastive)


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddl_ldm")
    metrics = train_ddl_ldm(cohort_dir=cohort["cohort"], latents_dir=cohort["latents"], ae_dir=cohort["ae"],
                            cfg=icu_cfg("ldm", max_steps=2), seed=0, out_dir=root / "model", state_dir=root / "state")
    return root / "model", metrics


def test_stage_writes_a_loadable_model(trained):
    model_dir, metrics = trained
    assert metrics["steps"] == 2 and metrics["n_train_pairs"] > 0 and np.isfinite(metrics["val_mse_ema"])
    assert 0.0 <= metrics["val_true_ehr_lower_error_fraction_ema"] <= 1.0
    for name in ("unet", "ehr_encoder", "label_head", "scheduler", "ddl_ldm.json", "metrics.json", "loss.png"):
        assert (model_dir / name).exists(), name
    model, scheduler_config, manifest = load_ddl_ldm(model_dir)
    assert model.unet.config.in_channels == 2 * model.unet.config.out_channels == 4
    assert model.unet.config.cross_attention_dim == model.ehr_encoder.config.d_model
    assert manifest["latent_shape"] == [2, 8, 8] and manifest["scaling_factor"] == 0.5
    assert scheduler_config["beta_end"] == pytest.approx(0.0195)


def test_generated_latents_shape_determinism_and_per_sample_seeds(trained, cohort, tmp_path):
    model_dir, _ = trained
    kwargs = {"cohort_dir": cohort["cohort"], "latents_dir": cohort["latents"], "ae_dir": cohort["ae"],
              "model_dir": model_dir, "seed": 7}
    cfg = icu_cfg("generation")
    summary = generate_ddl_latents(**kwargs, cfg=cfg, out_path=tmp_path / "a.npz")
    again = generate_ddl_latents(**kwargs, cfg={**cfg, "batch_size": 1}, out_path=tmp_path / "b.npz")
    stays = pd.read_parquet(cohort["cohort"] / "stays.parquet")
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert summary["n_stays"] == again["n_stays"] == len(stays)
    assert a["latents"].shape == (len(stays), 2, 8, 8) and a["latents"].dtype == np.float32
    assert a["stay_keys"].tolist() == stays["stay_key"].tolist() and float(a["scaling_factor"]) == 0.5
    # per-sample seeds: a stay's sample does not depend on its batch neighbours (batched kernels round ~1e-6)
    np.testing.assert_allclose(a["latents"], b["latents"], atol=1e-4, rtol=1e-4)
    assert np.abs(a["latents"][0] - a["latents"][1]).max() > 0.1  # no noise shared across samples
    generate_ddl_latents(**kwargs, cfg=cfg, out_path=tmp_path / "c.npz")
    assert np.array_equal(a["latents"], np.load(tmp_path / "c.npz")["latents"])
    assert sample_seed(7, "stay000") != sample_seed(8, "stay000") != sample_seed(7, "stay001")
