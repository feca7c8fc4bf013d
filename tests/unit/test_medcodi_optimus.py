"""Pretrained Optimus as MedCoDi-M's report VAE (config key medcodi.text_vae.pretrained), on a tiny random checkpoint
in Optimus' layout: loading and its errors, the latent injection (memory + embedding, checked against a from-formula
GPT-2 block), fine-tuning in the stage, save/reload, and the report diffusion model on its latents."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from medcodi_optimus_helpers import HEADS, read_tiny_weights, write_tiny_optimus
from medcodi_text_helpers import IMPRESSIONS, medcodi_cfg, write_embeddings, write_study_table
from safetensors.torch import load_file

from cxrgen.medcodi.optimus import LoadedOptimusVAE, load_optimus, optimus_trainer, resolve_pretrained
from cxrgen.medcodi.text_diffusion import sample_reports
from cxrgen.medcodi.text_vae import LoadedTextVAE, load_text_vae, reconstruction_metrics
from cxrgen.stages.train_report_diffusion import train_report_diffusion
from cxrgen.stages.train_text_vae import train_text_vae
from cxrgen.train.distributed import launch
from cxrgen.train.loop import Interrupted, seed_everything

LATENT = 8
REPORTS = [t[0].upper() + t[1:] for t in IMPRESSIONS]  # cased, as bert-base-cased / GPT-2 see them


def optimus_cfg(pretrained, **overrides):
    return medcodi_cfg("text_vae", **{"pretrained": pretrained, "model": {"latent_dim": LATENT}, "lr": 5e-5,
                                      **overrides})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_optimus(tmp_path_factory.mktemp("optimus") / "optimus", REPORTS)


@pytest.fixture(scope="module")
def loaded(checkpoint):
    model, tokenizers = load_optimus(resolve_pretrained(str(checkpoint)), max_tokens=24, latent_dim=LATENT)
    return model.eval(), tokenizers


def test_loads_the_checkpoint_through_the_config_key(checkpoint, loaded):
    model, tokenizers = loaded
    encoder, decoder = read_tiny_weights(checkpoint)
    assert torch.equal(model.to_moments.weight, encoder["linear.weight"])
    assert torch.equal(model.encoder.encoder.layer[0].attention.self.query.weight,
                       encoder["encoder.layer.0.attention.self.query.weight"])
    assert torch.equal(model.latent_to_memory.weight, decoder["transformer.linear.weight"])
    assert torch.equal(model.latent_to_embedding.weight, decoder["transformer.linear_emb.weight"])
    assert torch.equal(model.decoder.h[0].attn.c_attn.weight, decoder["transformer.h.0.attn.c_attn.weight"])
    # the mapping form of the key
    cfg = medcodi_cfg("text_vae", pretrained={"path": str(checkpoint), "step": 100})
    source = resolve_pretrained(cfg["pretrained"])
    assert (source.step, source.lowercase) == (100, False)
    # tokenizers: BERT [CLS] … [SEP] with pad 0; GPT-2 BPE + Optimus' <PAD> <BOS> <EOS> after its vocabulary
    assert (tokenizers.pad_id, tokenizers.bos_id, tokenizers.eos_id) == (300, 301, 302) and len(tokenizers) == 303
    enc_ids, enc_lengths, ids, lengths = tokenizers.batch(REPORTS[:2], 24)
    assert enc_ids[0, 0] == tokenizers.bert.cls_token_id
    assert enc_ids[0, enc_lengths[0] - 1] == tokenizers.bert.sep_token_id
    padding = torch.arange(enc_ids.shape[1])[None, :] >= enc_lengths[:, None]
    assert tokenizers.encoder_pad_id == 0 and padding.any() and (enc_ids[padding] == 0).all()
    assert all(tokenizers.decode(ids[i].tolist()) == REPORTS[i] for i in range(2))
    assert ids[0, lengths[0] - 1] == tokenizers.eos_id
    # the encoder gives the configured latent
    mean, logvar = model.encode(enc_ids, enc_lengths)
    assert mean.shape == logvar.shape == (2, LATENT)


def test_safetensors_checkpoint_loads_the_same_weights(checkpoint, loaded, tmp_path):
    other = write_tiny_optimus(tmp_path / "st", REPORTS, safetensors=True)
    model, _ = load_optimus(resolve_pretrained({"path": str(other)}), max_tokens=24, latent_dim=LATENT)
    reference = loaded[0].state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


def test_the_decoder_reads_the_latent_as_memory_and_as_embedding(loaded):
    model, tokenizers = loaded
    _, _, ids, _ = tokenizers.batch(REPORTS[:3], 24)
    z = torch.randn(3, LATENT, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model.decode_logits(z, ids)
        assert not torch.allclose(model.decode_logits(z + 0.5, ids), logits)
        for path in (model.latent_to_memory, model.latent_to_embedding):  # each route alone carries z
            saved = path.weight.clone()
            path.weight.zero_()
            assert not torch.allclose(model.decode_logits(z + 0.5, ids), model.decode_logits(z, ids))
            path.weight.copy_(saved)
        assert torch.equal(model.decode_logits(z, ids), logits)
    # the same logits from the formula of one GPT-2 block with Optimus' extra key/value slot (key = value = W_mem z)
    # at position 0, the tokens at positions 1.., and W_emb z added to every token embedding
    assert torch.allclose(_reference_logits(model, z, ids), logits, atol=1e-5)
    # greedy decoding with the key/value cache follows the teacher-forced logits
    decoded = model.greedy_decode(z, max_tokens=6)
    first = logits[:, 0].argmax(-1)
    assert [row[0] if row else tokenizers.eos_id for row in decoded] == first.tolist()


def _reference_logits(model, z, ids):
    gpt = model.decoder
    inputs = torch.cat([torch.full_like(ids[:, :1], model.config.bos_id), ids[:, :-1]], dim=1)
    batch, length = inputs.shape
    hidden = gpt.wte(inputs) + gpt.wpe(torch.arange(1, length + 1))[None] + model.latent_to_embedding(z)[:, None]
    memory = model.latent_to_memory(z)[:, None, :]  # one layer: [B, 1, H]
    block = gpt.h[0]
    x = block.ln_1(hidden)
    q, k, v = (x @ block.attn.c_attn.weight + block.attn.c_attn.bias).split(hidden.shape[-1], dim=-1)
    k, v = torch.cat([memory, k], dim=1), torch.cat([memory, v], dim=1)

    def heads(t):
        return t.view(batch, t.shape[1], HEADS, -1).transpose(1, 2)

    q, k, v = heads(q), heads(k), heads(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    allowed = torch.ones(length, length + 1, dtype=torch.bool).tril(diagonal=1)  # memory + tokens up to itself
    attended = (scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v).transpose(1, 2).reshape(batch, length, -1)
    hidden = hidden + attended @ block.attn.c_proj.weight + block.attn.c_proj.bias
    h = block.ln_2(hidden) @ block.mlp.c_fc.weight + block.mlp.c_fc.bias
    hidden = hidden + F.gelu(h, approximate="tanh") @ block.mlp.c_proj.weight + block.mlp.c_proj.bias
    return gpt.ln_f(hidden) @ gpt.wte.weight.T


def test_a_missing_or_incomplete_directory_names_the_key_and_the_layout(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)medcodi\.text_vae\.pretrained.*not a directory.*vocab\.json"):
        resolve_pretrained(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"(?s)medcodi\.text_vae\.pretrained.*no checkpoint-encoder"):
        resolve_pretrained(str(tmp_path / "empty"))
    broken = write_tiny_optimus(tmp_path / "broken", REPORTS[:3])
    (broken / "merges.txt").unlink()
    (broken / "checkpoint-decoder-100" / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError) as error:
        resolve_pretrained({"path": str(broken)})
    message = str(error.value)
    assert "config key 'medcodi.text_vae.pretrained'" in message
    assert "missing in" in message and "merges.txt" in message
    assert "checkpoint-decoder-100/pytorch_model.bin or model.safetensors" in message
    assert "checkpoint-encoder-<step>/config.json" in message  # the expected layout is listed
    # several steps: pick one explicitly
    (checkpoint / "checkpoint-encoder-7").mkdir()
    try:
        with pytest.raises(FileNotFoundError, match=r"several checkpoints.*\[7, 100\]"):
            resolve_pretrained(str(checkpoint))
        assert resolve_pretrained({"path": str(checkpoint), "step": 100}).step == 100
    finally:
        (checkpoint / "checkpoint-encoder-7").rmdir()
    with pytest.raises(ValueError, match=r"8-d latent.*medcodi\.text_vae\.model\.latent_dim' is 768"):
        load_optimus(resolve_pretrained(str(checkpoint)), max_tokens=24, latent_dim=768)


def test_two_fine_tuning_steps_then_save_and_reload_give_identical_outputs(checkpoint, tmp_path):
    cfg = optimus_cfg(str(checkpoint))
    seed_everything(0)
    trainer = optimus_trainer(cfg, resolve_pretrained(cfg["pretrained"]), REPORTS)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.model.train()
    generator = torch.Generator().manual_seed(0)
    for step in range(2):
        out = trainer.model(*trainer.inputs([0, 1, 2, 3], "cpu"), torch.randn(4, LATENT, generator=generator),
                            beta=trainer.beta(step), free_bits=0.5)
        trainer.optimizer.zero_grad()
        out["loss"].backward()
        trainer.optimizer.step()
    after = trainer.model.state_dict()
    assert not torch.equal(after["latent_to_memory.weight"], before["latent_to_memory.weight"])
    assert not torch.equal(after["encoder.pooler.dense.weight"], before["encoder.pooler.dense.weight"])
    trainer.model.save_pretrained(tmp_path / "vae")
    trainer.tokenizer.save(tmp_path / "vae")
    assert json.loads((tmp_path / "vae/config.json").read_text())["backend"] == "optimus"

    live = LoadedOptimusVAE(trainer.model, trainer.tokenizer)
    reloaded = load_text_vae(tmp_path / "vae")
    assert isinstance(reloaded, LoadedOptimusVAE) and reloaded.latent_dim == LATENT
    assert all(torch.equal(v, after[k]) for k, v in reloaded.model.state_dict().items())
    means = live.encode_means(REPORTS)
    assert torch.equal(reloaded.encode_means(REPORTS), means)
    assert torch.allclose(live.encode_means(REPORTS, batch_size=2), means, atol=1e-5)  # padding is masked
    nll, n = live.token_nll(REPORTS, means)
    assert (nll, n) == pytest.approx(live.token_nll(REPORTS, means, batch_size=2), rel=1e-5)
    _, _, ids, _ = live.tokenizer.batch(REPORTS, 24)
    assert torch.equal(reloaded.model.decode_logits(means, ids), live.model.decode_logits(means, ids))
    assert reloaded.decode(means) == live.decode(means)
    assert reconstruction_metrics(reloaded, REPORTS[:3]) == reconstruction_metrics(live, REPORTS[:3])


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("optimus_studies")
    table = write_study_table(root / "studies.parquet")
    write_embeddings(root / "embeddings.npz", table)
    return root


def test_stage_fine_tunes_resumes_and_the_report_diffusion_trains_on_its_latents(checkpoint, studies, tmp_path):
    cfg = optimus_cfg(str(checkpoint), max_steps=2, checkpoint_every=1)
    kwargs = {"studies": studies / "studies.parquet", "cfg": cfg, "seed": 3}
    whole = train_text_vae(**kwargs, out_dir=tmp_path / "whole", state_dir=tmp_path / "s1")
    with pytest.raises(Interrupted):
        train_text_vae(**kwargs, out_dir=tmp_path / "split", state_dir=tmp_path / "s2", stop_after_steps=1)
    resumed = train_text_vae(**kwargs, out_dir=tmp_path / "split", state_dir=tmp_path / "s2")
    assert resumed["resumed_from"] == 1 and whole["steps"] == 2
    assert whole["backend"] == "optimus" and whole["pretrained"] == {"path": str(checkpoint), "step": 100}
    assert whole["vocab_size"] == 303 and whole["val"]["n"] == 6
    a, b = load_text_vae(tmp_path / "whole"), load_text_vae(tmp_path / "split")
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    pretrained, _ = load_optimus(resolve_pretrained(str(checkpoint)), max_tokens=24, latent_dim=LATENT)
    assert not torch.equal(a.model.to_moments.weight, pretrained.to_moments.weight)  # fine-tuned

    diffusion = train_report_diffusion(studies=studies / "studies.parquet", embeddings=studies / "embeddings.npz",
                                       vae_dir=tmp_path / "whole", cfg=medcodi_cfg("report_diffusion"),
                                       prompting="multi", seed=0, out_dir=tmp_path / "diffusion",
                                       state_dir=tmp_path / "s3")
    assert diffusion["steps"] == 4
    conditions = torch.zeros(2, 16)
    reports = sample_reports(tmp_path / "diffusion", None, conditions, seeds=[0, 1], steps=2)
    assert len(reports) == 2 and all(isinstance(r, str) for r in reports)


def test_two_ranks_fine_tune_to_the_single_process_weights(studies, tmp_path):
    """Data parallel fine-tuning (2 gloo ranks on CPU) ends with one process's weights (dropout 0: its draws are
    per rank); tolerances as test_medcodi_text_distributed.py, at a learning rate where a wrong draw or a missing
    gradient sum moves the weights by more."""
    checkpoint = write_tiny_optimus(tmp_path / "optimus", REPORTS, dropout=0.0)
    kwargs = {"studies": str(studies / "studies.parquet"), "cfg": optimus_cfg(str(checkpoint), max_steps=3, lr=3e-3),
              "seed": 0}
    one = train_text_vae(**kwargs, out_dir=tmp_path / "one", state_dir=tmp_path / "s1")
    two = launch(train_text_vae, 2, **kwargs, out_dir=str(tmp_path / "two"), state_dir=str(tmp_path / "s2"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    a, b = (load_file(tmp_path / d / "diffusion_pytorch_model.safetensors") for d in ("one", "two"))
    differences = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert differences.max() <= 2e-4 and differences.median() <= 1e-6, (differences.max(), differences.median())


def test_the_gru_vae_still_loads_as_before(studies, tmp_path):
    train_text_vae(studies=studies / "studies.parquet", cfg=medcodi_cfg("text_vae", max_steps=1), seed=0,
                   out_dir=tmp_path / "gru", state_dir=tmp_path / "state")
    assert "backend" not in json.loads((tmp_path / "gru/config.json").read_text())
    assert isinstance(load_text_vae(tmp_path / "gru"), LoadedTextVAE)
