"""The MedCoDi-M report VAE (rule train_text_vae): tokenizer round trip, Optimus' β schedule and KL thresholding, a
real reconstruction check after overfitting a few reports, and the stage (checkpoint, resume, config errors)."""

import pytest
import torch
from medcodi_text_helpers import IMPRESSIONS, medcodi_cfg, write_study_table
from safetensors.torch import load_file

from cxrgen.medcodi.bleu import report_tokens
from cxrgen.medcodi.text_vae import (
    TextVAE,
    WordTokenizer,
    detokenize,
    gaussian_kl,
    kl_weight,
    load_text_vae,
    normalise_report,
    thresholded_kl,
)
from cxrgen.stages.train_text_vae import train_text_vae
from cxrgen.train.loop import Interrupted, seed_everything

SENTENCES = ["No acute cardiopulmonary process.", "Small left pleural effusion.",
             "Mild cardiomegaly without pulmonary edema.", "Right lower lobe pneumonia, new since prior."]


def test_tokenizer_round_trip_unknown_words_and_determinism(tmp_path):
    texts = [*IMPRESSIONS, *IMPRESSIONS[:2]]
    tokenizer = WordTokenizer.build(texts, min_count=1)
    for text in IMPRESSIONS:
        assert tokenizer.decode(tokenizer.encode(text)) == text  # the impressions are already normalised
    assert tokenizer.decode(tokenizer.encode("No EFFUSION; new opacity.")) == "no effusion <unk> <unk> <unk>."
    # min_count drops rarer words; ids by (count desc, word)
    frequent = WordTokenizer.build(["No effusion.", "no edema.", "Small effusion."], min_count=2)
    assert frequent.words == ["<pad>", "<bos>", "<eos>", "<unk>", ".", "effusion", "no"]
    assert frequent.decode(frequent.encode("small edema, no effusion.")) == "<unk> <unk> <unk> no effusion."
    # order of the corpus does not change the ids; save/load keeps them
    assert WordTokenizer.build(list(reversed(texts))).words == tokenizer.words
    tokenizer.save(tmp_path)
    assert WordTokenizer.load(tmp_path).words == tokenizer.words
    # truncation keeps <eos> last
    ids = tokenizer.encode(IMPRESSIONS[2], max_tokens=3)
    assert len(ids) == 3 and ids[-1] == tokenizer.eos_id


@pytest.mark.parametrize("text", ["Tip in SVC (2.5 cm above carina).", "Right-sided PICC/port; stable!",
                                  "  spaces   and\ttabs  ", ""])
def test_detokenize_only_changes_spaces(text):
    tokens = report_tokens(text)
    assert report_tokens(detokenize(tokens)) == tokens
    assert normalise_report(normalise_report(text)) == normalise_report(text)


def test_optimus_beta_schedule():
    beta = [kl_weight(s, 100, 1.0, ratio_zero=0.5, ratio_increase=0.25) for s in range(100)]
    assert beta[0] == beta[49] == 0.0 and beta[50] == 0.0
    assert beta[60] == pytest.approx(0.4) and beta[75] == 1.0 == beta[99]
    cyclic = [kl_weight(s, 100, 0.5, 0.5, 0.25, cycles=2) for s in (0, 30, 49, 50, 80)]
    assert cyclic == pytest.approx([0.0, 0.2, 0.5, 0.0, 0.2])


def test_kl_term_matches_torch_and_free_bits_stop_the_gradient():
    mean = torch.tensor([[0.0, 1.0, 0.1], [2.0, -0.5, 0.0]], requires_grad=True)
    logvar = torch.tensor([[0.0, 0.5, -0.1], [-1.0, 0.2, 0.0]], requires_grad=True)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * logvar).exp()),
                                                 torch.distributions.Normal(0.0, 1.0))
    kl = gaussian_kl(mean, logvar)
    assert torch.allclose(kl, expected, atol=1e-6)
    thresholded = thresholded_kl(kl, free_bits=0.3)
    assert torch.allclose(thresholded, (kl * (kl > 0.3)).sum(dim=1))
    thresholded.sum().backward()
    below = (kl <= 0.3).detach()
    assert below.any() and (~below).any()
    assert (mean.grad[below] == 0).all() and (mean.grad[~below] != 0).all()
    assert torch.allclose(thresholded_kl(kl, 0.0), kl.sum(dim=1))


def test_vae_reconstructs_training_reports_after_a_short_overfit():
    """Decoding works: greedy decoding of the posterior mean reproduces each of 4 training reports exactly after a
    short overfit with Optimus' schedule (plain autoencoding, then β rising to 1 above 0.5 free nats per dimension),
    and did not before training."""
    seed_everything(0)
    tokenizer = WordTokenizer.build(SENTENCES)
    model = TextVAE(vocab_size=len(tokenizer), embed_dim=32, hidden_dim=64, latent_dim=768, dropout=0.0,
                    max_tokens=16)
    ids, lengths = tokenizer.batch(SENTENCES, 16)
    targets = [normalise_report(s) for s in SENTENCES]

    def reconstructions():
        model.eval()
        with torch.no_grad():
            out = [tokenizer.decode(t) for t in model.greedy_decode(model.encode(ids, lengths)[0])]
        model.train()
        return out

    assert reconstructions() != targets
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    steps = 200
    for step in range(steps):
        noise = torch.randn(len(SENTENCES), 768, generator=generator)
        out = model(ids, lengths, noise, beta=kl_weight(step, steps, 1.0, 0.5, 0.25), free_bits=0.5)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert reconstructions() == targets
    assert out["kl"] > 0  # the posterior did not collapse onto the prior


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    path = tmp_path_factory.mktemp("medcodi_text") / "studies.parquet"
    write_study_table(path)
    return path


def _weights(directory):
    return load_file(directory / "diffusion_pytorch_model.safetensors")


def test_stage_resume_equals_uninterrupted_and_writes_a_loadable_vae(studies, tmp_path):
    cfg = medcodi_cfg("text_vae")
    whole = train_text_vae(studies=studies, cfg=cfg, seed=3, out_dir=tmp_path / "whole", state_dir=tmp_path / "s1")
    with pytest.raises(Interrupted):
        train_text_vae(studies=studies, cfg=cfg, seed=3, out_dir=tmp_path / "split", state_dir=tmp_path / "s2",
                       stop_after_steps=2)
    assert not (tmp_path / "split").exists()
    resumed = train_text_vae(studies=studies, cfg=cfg, seed=3, out_dir=tmp_path / "split", state_dir=tmp_path / "s2")
    assert resumed["resumed_from"] == 2 and whole["steps"] == resumed["steps"] == 4
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert whole["n_train"] == 11 and whole["val"]["n"] == 6  # study 11 (train) has no report
    assert whole["final_kl"] >= 0 and whole["seconds_per_step"] > 0

    vae = load_text_vae(tmp_path / "whole")
    assert vae.latent_dim == 768 and len(vae.tokenizer) == whole["vocab_size"]
    means = vae.encode_means(list(IMPRESSIONS))
    assert means.shape == (len(IMPRESSIONS), 768) and torch.equal(means, vae.encode_means(list(IMPRESSIONS)))
    assert all(isinstance(t, str) for t in vae.decode(means))


def test_a_missing_pretrained_optimus_path_is_a_config_error(studies, tmp_path):
    """Loading real Optimus weights is tested in test_medcodi_optimus.py; a wrong path fails before training."""
    with pytest.raises(FileNotFoundError, match="medcodi.text_vae.pretrained"):
        train_text_vae(studies=studies, cfg=medcodi_cfg("text_vae", pretrained=str(tmp_path / "optimus")), seed=0,
                       out_dir=tmp_path / "out", state_dir=tmp_path / "state")
    assert not (tmp_path / "out").exists() and not (tmp_path / "state").exists()
