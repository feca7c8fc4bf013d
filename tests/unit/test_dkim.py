"""DKIM: templates from labels, the knowledge bank, the zero-initialised adapter, the sampling hook and the second
training stage (base frozen, resume, save/load)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_ldm import TINY_UNET, ldm_cfg, make_clip, make_latent_cache

from cxrgen.config import validate_config
from cxrgen.hashing import dir_digest
from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS, label_column
from cxrgen.models.diffusion import LatentSampler, SamplerSettings, build_unet, make_train_scheduler
from cxrgen.models.dkim import (
    DISEASE_SENTENCES,
    DkimAdapter,
    build_controlnet,
    build_knowledge_bank,
    knowledge_report,
    knowledge_states,
    load_dkim,
)
from cxrgen.pipeline import CxrPipeline, write_pipeline_json
from cxrgen.prompts import grid_labels
from cxrgen.stages.train_dkim import train_dkim
from cxrgen.train.loop import Interrupted, latest_checkpoint

FINDINGS = list(CHEXPERT_LABELS)
NAN = np.nan


def labels_frame(rows: list[dict[str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame([{c: NAN for c in LABEL_COLUMNS} for _ in rows])
    for i, row in enumerate(rows):
        for name, value in row.items():
            frame.loc[i, label_column(name)] = value
    return frame


def test_templates_from_labels():
    assert tuple(DISEASE_SENTENCES) == CHEXPERT_LABELS
    frame = labels_frame([{"Cardiomegaly": 1.0, "Pleural Effusion": 1.0, "Edema": 0.0},
                          {"No Finding": 1.0, "Cardiomegaly": 0.0, "Pneumothorax": 0.0},
                          {"No Finding": 0.0},   # "not normal" alone says nothing about a finding
                          {}])                    # no labels at all (e.g. an unlabelled source)
    assert knowledge_report(frame) == ["There is cardiomegaly. There is pleural effusion.", "There is no finding.",
                                       "", ""]
    assert knowledge_report(frame, negatives=True) == [
        "There is cardiomegaly. There is no edema. There is pleural effusion.",
        "There is no finding. There is no cardiomegaly. There is no pneumothorax.", "", ""]
    states = knowledge_states(frame, FINDINGS, negatives=True)
    assert states.shape == (4, 14) and states.dtype == np.int8
    assert states[0, FINDINGS.index("Cardiomegaly")] == 1 and states[0, FINDINGS.index("Edema")] == -1
    assert states[2, FINDINGS.index("No Finding")] == 0 and not states[3].any()
    assert not (knowledge_states(frame, FINDINGS, negatives=False) == -1).any()
    # an [N, 14] array in CHEXPERT_LABELS order gives the same states; a subset of findings selects columns
    np.testing.assert_array_equal(knowledge_states(frame[list(LABEL_COLUMNS)].to_numpy(), FINDINGS, True), states)
    subset = knowledge_states(frame, ["Edema", "Cardiomegaly"], negatives=True)
    np.testing.assert_array_equal(subset[0], [-1, 1])
    with pytest.raises(ValueError, match="14"):
        knowledge_states(np.zeros((2, 3)), FINDINGS, False)
    grid = grid_labels(["No Finding", "Pneumothorax"])
    assert knowledge_report(grid) == ["There is no finding.", "There is pneumothorax."]


class SummaryEncoder:
    """Stand-in text encoder: a deterministic vector per text (encode_summary), as the knowledge bank uses."""

    dim = 16

    def encode_summary(self, texts):
        out = []
        for text in texts:
            g = torch.Generator().manual_seed(sum(map(ord, text)) * 31 + len(text))
            out.append(torch.randn(self.dim, generator=g))
        return torch.stack(out)


def tiny_adapter(seed=0, cond_channels=4):
    torch.manual_seed(seed)
    unet = build_unet(TINY_UNET, latent_channels=3, sample_size=8, cross_attention_dim=16).eval()
    bank = build_knowledge_bank(SummaryEncoder(), FINDINGS)
    return unet, DkimAdapter(build_controlnet(unet, len(FINDINGS), cond_channels), bank, FINDINGS, negatives=True)


def test_knowledge_bank_and_condition_lookup():
    _, adapter = tiny_adapter()
    bank = adapter.bank
    assert bank.shape == (14, 3, 16)
    assert torch.equal(bank[:, 1], bank[:1, 1].expand(14, -1))  # "unknown" = the empty text for every finding
    assert not torch.equal(bank[2, 0], bank[2, 2])  # "There is no cardiomegaly." ≠ "There is cardiomegaly."
    assert torch.equal(bank[0, 0], bank[0, 1])  # "No Finding" has no negative sentence: unknown
    frame = labels_frame([{"Cardiomegaly": 1.0, "Edema": 0.0}, {}])
    knowledge = adapter.condition(frame)
    assert knowledge.tokens.shape == (2, 14, 16) and knowledge.pooled.shape == (2, 14 * 16, 1, 1)
    assert torch.equal(knowledge.tokens[0, 2], bank[2, 2]) and torch.equal(knowledge.tokens[0, 5], bank[5, 0])
    assert torch.equal(knowledge.tokens[1], adapter.null_condition(1).tokens[0])


def test_zero_initialised_adapter_leaves_the_base_output_unchanged_exactly():
    unet, adapter = tiny_adapter()
    g = torch.Generator().manual_seed(3)
    x, context = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 6, 16, generator=g)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    t = torch.tensor([5, 400, 999])
    knowledge = adapter.condition(labels_frame([{"Cardiomegaly": 1.0}, {"Pneumothorax": 1.0}, {}]))
    with torch.no_grad():
        residuals = adapter.residuals(x, t, knowledge)
        down, mid = residuals["down_block_additional_residuals"], residuals["mid_block_additional_residual"]
        assert len(down) == 4 and all(not r.any() for r in down) and not mid.any()
        base = unet(x, t, encoder_hidden_states=context, encoder_attention_mask=mask).sample
        injected = unet(x, t, encoder_hidden_states=context, encoder_attention_mask=mask, **residuals).sample
    assert torch.equal(base, injected)
    # the adapter is a copy of the base encoder (ControlNet initialisation)
    assert torch.equal(adapter.controlnet.down_blocks[0].resnets[0].conv1.weight,
                       unet.down_blocks[0].resnets[0].conv1.weight)
    # once its zero convolutions move, the knowledge changes the prediction
    with torch.no_grad():
        for p in adapter.controlnet.controlnet_down_blocks.parameters():
            p.add_(0.05)
        moved = unet(x, t, encoder_hidden_states=context, encoder_attention_mask=mask,
                     **adapter.residuals(x, t, knowledge)).sample
    assert not torch.allclose(moved, base)


def test_sampling_hook_is_exact_at_initialisation_and_needs_labels():
    unet, adapter = tiny_adapter()
    scheduler = make_train_scheduler(ldm_cfg()["schedule"]).config

    def encode(texts):
        tokens = torch.stack([SummaryEncoder().encode_summary([t] * 5) for t in texts])
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool)

    settings = SamplerSettings(steps=3, eta=1.0, guidance_scale=3.0)
    prompts, seeds = ["Cardiomegaly.", "Small left pneumothorax."], [1, 2]
    labels = labels_frame([{"Cardiomegaly": 1.0}, {"Pneumothorax": 1.0}])
    plain = LatentSampler(unet, scheduler, encode).sample(prompts, seeds, settings)
    hooked = LatentSampler(unet, scheduler, encode, adapter=adapter)
    assert torch.equal(hooked.sample(prompts, seeds, settings, labels=labels), plain)
    with pytest.raises(ValueError, match="labels"):
        hooked.sample(prompts, seeds, settings)
    with torch.no_grad():
        for p in adapter.controlnet.controlnet_mid_block.parameters():
            p.add_(0.1)
    assert not torch.allclose(hooked.sample(prompts, seeds, settings, labels=labels), plain)


# ------------------------------------------------------------------------------------------------ stage


def make_base_ldm(tmp_path):
    """A text-conditioned LDM directory as rule train_ldm writes it (random UNet), on a tiny latent cache."""
    latents, ae_dir, _ = make_latent_cache(tmp_path)
    clip_dir = make_clip(tmp_path / "clip")
    ldm = tmp_path / "ldm" / "cheff"
    torch.manual_seed(0)
    unet = build_unet(TINY_UNET, latent_channels=3, sample_size=8, cross_attention_dim=32)
    unet.save_pretrained(ldm / "unet")
    make_train_scheduler(ldm_cfg()["schedule"]).save_pretrained(ldm / "scheduler")
    write_pipeline_json(ldm, final_dir=ldm, conditioning="text", ae_dir=ae_dir, clip_dir=clip_dir, sr_dir=None)
    return ldm, latents, clip_dir


def dkim_cfg(**overrides) -> dict:
    section = {"batch_size": 4, "max_steps": 3, "checkpoint_every": 2, "log_every": 1, "ema_decay": 0.9, "lr": 1e-3,
               "warmup_steps": 1, "cond_channels": 4, "sample_grid": {"columns": 1, "steps": 2}, **overrides}
    return validate_config({"sources": {"nih": {}}, "dkim": section})["dkim"]


def _train(tmp_path, ldm, latents, name, **kw):
    return train_dkim(ldm_dir=ldm, latents_dir=latents, cfg=dkim_cfg(**kw.pop("cfg", {})), ldm_cfg=ldm_cfg(),
                      seed=3, out_dir=tmp_path / f"dkim_{name}", state_dir=tmp_path / f"state_{name}", **kw)


def test_second_stage_freezes_the_base_resumes_and_saves(tmp_path):
    ldm, latents, clip_dir = make_base_ldm(tmp_path)
    base_files = dir_digest(ldm / "unet")
    straight = _train(tmp_path, ldm, latents, "a", clip_dir=clip_dir)
    out = tmp_path / "dkim_a"
    # no sample grid: that is rule sample_dkim_grid's (tests/unit/test_sample_grids.py)
    assert {p.name for p in out.iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors", "metrics.json",
                                              "loss.png", "MODEL_CARD.md", "model_card.json"}
    assert not any("grid" in key for key in straight) and straight["world_size"] == 1
    assert straight["steps"] == 3 and straight["base_unchanged"] and dir_digest(ldm / "unet") == base_files
    assert straight["n_train"] == 9  # 12 train latents, 3 without a report (ldm.require_report)
    assert np.isfinite(straight["val_loss_base"]) and np.isfinite(straight["val_loss_dkim"])
    assert straight["val_loss_base"] != straight["val_loss_dkim"]  # the trained adapter does something
    config = json.loads((out / "config.json").read_text())
    info = config["provenance"]
    assert config["_class_name"] == "DkimAdapter"
    assert info["base_unet_sha"] == base_files and info["base_ldm"] == "../ldm/cheff"
    assert config["sentences"]["Cardiomegaly"] == ["There is cardiomegaly.", "There is no cardiomegaly."]

    adapter = load_dkim(out, base_ldm_dir=ldm)
    zero_convs = list(adapter.controlnet.controlnet_down_blocks.parameters())
    assert any(p.abs().sum() > 0 for p in zero_convs)  # trained away from zero
    with pytest.raises(ValueError, match="trained for"):
        other = tmp_path / "other"
        torch.manual_seed(9)
        build_unet(TINY_UNET, latent_channels=3, sample_size=8, cross_attention_dim=32).save_pretrained(other / "unet")
        load_dkim(out, base_ldm_dir=other)
    with pytest.raises(ValueError, match="text encoder"):
        _train(tmp_path, ldm, latents, "x", clip_dir=tmp_path / "ae")

    with pytest.raises(Interrupted):
        _train(tmp_path, ldm, latents, "b", stop_after_steps=2)
    assert latest_checkpoint(tmp_path / "state_b").name == "ckpt-00000002.pt"
    resumed = _train(tmp_path, ldm, latents, "b")
    assert resumed["resumed_from"] == 2
    again = load_dkim(tmp_path / "dkim_b")
    for (k, v), w in zip(adapter.controlnet.state_dict().items(), again.controlnet.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert torch.equal(adapter.bank, again.bank)

    pipe = CxrPipeline.from_dir(ldm, dkim_dir=out)
    images = pipe(["Cardiomegaly."], [0], SamplerSettings(steps=2), labels=grid_labels(["Cardiomegaly"]))["low"]
    assert images.shape == (1, 1, 32, 32)
