"""AVA-TLS: the information squeeze, its place in the CLIP model directory and text encoder, rule train_clip_avatls and
the retrieval fragment."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_clip import RES, tiny_cfg, tiny_store

from cxrgen.models.clip import (
    attach_squeeze,
    contrastive_loss,
    encode_texts,
    load_clip,
    load_text_encoder,
    save_clip,
    scratch_clip,
)
from cxrgen.models.squeeze import SQUEEZE_DIR, InformationSqueeze
from cxrgen.report.avatls import avatls_markdown
from cxrgen.stages.report_avatls import report_avatls
from cxrgen.stages.train_clip import train_clip, train_clip_avatls
from cxrgen.train.loop import Interrupted, seed_everything

SQUEEZE = {"length": 4, "heads": 2, "train_towers": False, "max_steps": 3, "lr": 1e-3, "warmup_steps": 1}


def squeeze_module(width=16, length=5, embed_dim=8, layers=1) -> InformationSqueeze:
    torch.manual_seed(0)
    return InformationSqueeze(width=width, length=length, heads=2, layers=layers, mlp_ratio=2.0, embed_dim=embed_dim)


def test_shapes_all_valid_mask_and_determinism():
    module = squeeze_module()
    tokens = torch.randn(3, 11, 16)
    mask = torch.arange(11)[None] < torch.tensor([[4], [11], [2]])
    squeezed, out_mask = module(tokens, mask)
    assert squeezed.shape == (3, 5, 16) and out_mask.shape == (3, 5) and out_mask.dtype == torch.bool
    assert out_mask.all()
    assert torch.equal(squeezed, module(tokens, mask)[0])
    # LayerNorm output: the squeezed tokens have the scale of a text tower's final-layer tokens
    assert torch.allclose(squeezed.mean(-1), torch.zeros(3, 5), atol=1e-5)
    pooled = module.pooled(squeezed)
    assert pooled.shape == (3, 8) and torch.allclose(pooled.norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match="tokens"):
        module(tokens, mask[:, :5])


def test_padding_is_ignored_and_gets_no_gradient():
    module = squeeze_module(layers=2)
    tokens = torch.randn(2, 9, 16)
    mask = torch.arange(9)[None] < torch.tensor([[3], [6]])
    reference, _ = module(tokens, mask)
    garbage = tokens.clone()
    garbage[~mask] = 100.0 * torch.randn(int((~mask).sum()), 16)
    assert torch.allclose(module(garbage, mask)[0], reference, atol=1e-6)  # padded values do not matter
    changed = tokens.clone()
    changed[0, 1] = torch.randn(16)  # a real token does
    assert not torch.allclose(module(changed, mask)[0][0], reference[0], atol=1e-4)
    leaf = tokens.clone().requires_grad_(True)
    module.embed(leaf, mask).sum().backward()
    assert torch.all(leaf.grad[~mask] == 0) and leaf.grad[mask].abs().sum() > 0
    # a row without any real token (never produced by the tokenizers, which add start/end tokens) stays finite
    empty = torch.zeros(1, 9, dtype=torch.bool)
    assert torch.isfinite(module(tokens[:1], empty)[0]).all()


def test_contrastive_loss_on_squeezed_reports_is_symmetric_and_trains_the_queries():
    module = squeeze_module(embed_dim=8)
    g = torch.Generator().manual_seed(1)
    images = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    tokens = torch.randn(6, 10, 16, generator=g)
    mask = torch.arange(10)[None] < torch.randint(2, 11, (6, 1), generator=g)
    reports = module.embed(tokens, mask)
    scale = torch.tensor(10.0)
    forward, swapped = contrastive_loss(images, reports, scale), contrastive_loss(reports, images, scale)
    assert torch.allclose(forward, swapped)
    forward.backward()
    assert module.queries.grad is not None and module.queries.grad.abs().sum() > 0
    # a few steps pull matched pairs together: the loss falls
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    before = float(forward.detach())
    for _ in range(20):
        optimizer.zero_grad()
        loss = contrastive_loss(images, module.embed(tokens, mask), scale)
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < before - 0.1


@pytest.fixture
def squeezed_dir(tmp_path):
    seed_everything(0)
    bundle = attach_squeeze(scratch_clip(tiny_cfg(), RES), tiny_cfg(squeeze=SQUEEZE)["squeeze"])
    save_clip(bundle, tmp_path / "m")
    return tmp_path / "m", bundle


def test_saved_with_the_clip_dir_and_loaded_strictly(squeezed_dir):
    model_dir, bundle = squeezed_dir
    assert json.loads((model_dir / SQUEEZE_DIR / "config.json").read_text())["length"] == 4
    loaded = load_clip(model_dir)
    for (k, v), (k2, w) in zip(bundle.squeeze.state_dict().items(), loaded.squeeze.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, w)
    import open_clip  # plain open_clip still reads the directory (without the squeeze)

    assert isinstance(open_clip.create_model(f"local-dir:{model_dir}"), open_clip.CLIP)
    weights_file = model_dir / SQUEEZE_DIR / "diffusion_pytorch_model.safetensors"
    weights = load_file(str(weights_file))
    weights.pop("queries")
    save_file(weights, str(weights_file))
    with pytest.raises(RuntimeError, match="queries"):
        load_clip(model_dir)
    weights_file.unlink()
    with pytest.raises(FileNotFoundError, match="squeeze"):
        load_clip(model_dir)


def test_text_encoder_returns_squeezed_tokens(squeezed_dir, tmp_path):
    model_dir, bundle = squeezed_dir
    encoder = load_text_encoder(model_dir)
    assert encoder.squeezed and (encoder.dim, encoder.context_length) == (32, 4)
    assert not any(p.requires_grad for p in encoder.parameters())
    texts = ["Large right pleural effusion.", "", "word " * 40]
    tokens, mask = encoder.encode(texts)
    assert tokens.shape == (3, 4, 32) and mask.dtype == torch.bool and mask.all()
    assert not torch.allclose(tokens[0], tokens[1])
    pooled = encoder.encode_pooled(texts)
    with torch.no_grad():
        assert torch.allclose(pooled, encode_texts(load_clip(model_dir), texts), atol=1e-6)
    assert torch.allclose(encoder.encode_summary(texts), tokens.mean(dim=1))
    # without a squeeze the same tower gives full-length tokens
    save_clip(scratch_clip(tiny_cfg(), RES), tmp_path / "plain")
    plain = load_text_encoder(tmp_path / "plain")
    assert not plain.squeezed and plain.encode(texts)[0].shape == (3, 16, 32)


def _stage(tmp_path, name, fn, **kw):
    return fn(index_path=tmp_path / "index.parquet", store_root=tmp_path, resolution=RES,
              cfg=tiny_cfg(**{"squeeze": SQUEEZE, **kw.pop("cfg", {})}), seed=5, state_dir=tmp_path / f"state_{name}",
              out_dir=tmp_path / f"out_{name}", tracking_json=None, job_name=name, **kw)


def test_avatls_stage_fine_tunes_the_baseline_resumes_and_reports(tmp_path):
    tiny_store(tmp_path)
    baseline = _stage(tmp_path, "base", train_clip)
    assert baseline["squeeze"] is None and not (tmp_path / "out_base" / SQUEEZE_DIR).exists()
    straight = _stage(tmp_path, "a", train_clip_avatls, baseline_dir=tmp_path / "out_base")
    assert straight["steps"] == 3 and straight["squeeze"]["length"] == 4 and straight["text_tokens"] == 16
    assert straight["trained_parameters"] == straight["squeeze_parameters"] + 1  # + the logit scale
    assert set(straight["retrieval"]) == set(baseline["retrieval"])
    base, squeezed = load_clip(tmp_path / "out_base"), load_clip(tmp_path / "out_a")
    # train_towers false: the towers are the baseline's, only the temperature and the squeeze moved
    for (k, v), (_, w) in zip(base.model.state_dict().items(), squeezed.model.state_dict().items(), strict=True):
        assert torch.equal(v, w) or k == "logit_scale", k
    assert load_text_encoder(tmp_path / "out_a").encode(["Cardiomegaly."])[0].shape == (1, 4, 32)

    with pytest.raises(Interrupted):
        _stage(tmp_path, "b", train_clip_avatls, baseline_dir=tmp_path / "out_base", stop_after_steps=2)
    resumed = _stage(tmp_path, "b", train_clip_avatls, baseline_dir=tmp_path / "out_base")
    assert resumed["resumed_from"] == 2
    again = load_clip(tmp_path / "out_b")
    for (k, v), (_, w) in zip(squeezed.squeeze.state_dict().items(), again.squeeze.state_dict().items(), strict=True):
        assert torch.equal(v, w), k

    text = report_avatls(baseline_dir=tmp_path / "out_base", avatls_dir=tmp_path / "out_a",
                         out_path=tmp_path / "reports" / "avatls.md")
    assert (tmp_path / "reports" / "avatls.md").read_text() == text
    rows = [line for line in text.splitlines() if line.startswith("| val |") or line.startswith("| test |")]
    assert len(rows) == 2 * 2 * 3  # splits × directions × k
    key = "val/i2t_recall_at_5"
    assert f"{baseline['retrieval'][key]:.3f} | {straight['retrieval'][key]:.3f}" in rows[1]
    assert "16 (baseline) → 4 (squeezed" in text
    with pytest.raises(ValueError, match="no squeeze"):
        avatls_markdown(baseline, baseline)


def test_trained_towers_change_and_ldm_cross_attends_to_k_tokens(tmp_path):
    from test_ldm import TINY_UNET, ldm_cfg

    from cxrgen.stages.train_ldm import LatentDiffusionTrainer

    tiny_store(tmp_path)
    _stage(tmp_path, "base", train_clip, cfg={"max_steps": 1})
    metrics = _stage(tmp_path, "t", train_clip_avatls, baseline_dir=tmp_path / "out_base",
                     cfg={"squeeze": {**SQUEEZE, "train_towers": True, "max_steps": 1}})
    assert metrics["trained_parameters"] > metrics["squeeze_parameters"] + 1
    base, tuned = load_clip(tmp_path / "out_base"), load_clip(tmp_path / "out_t")
    assert not torch.equal(base.model.visual.conv1.weight, tuned.model.visual.conv1.weight)

    encoder = load_text_encoder(tmp_path / "out_t")
    seed_everything(0)
    trainer = LatentDiffusionTrainer(ldm_cfg(unet=TINY_UNET), latent_mean=torch.randn(4, 3, 8, 8), latent_std=None,
                                     texts=["Cardiomegaly.", "", "Left effusion.", "Edema."], text_encoder=encoder)
    assert trainer.null_tokens.shape == (1, 4, 32) and trainer.unet.config.cross_attention_dim == 32
    loss = trainer.loss([0, 1, 2, 3], torch.Generator().manual_seed(0), torch.device("cpu"))
    assert np.isfinite(float(loss.detach()))


def test_avatls_report_adds_zero_shot_rows_and_skips_splits_without_pairs():
    def metrics(recall: float, zero_shot: float, squeeze: dict | None) -> dict:
        retrieval = {"val/pairs": 4.0, "val/unique_texts": 3.0, "val/i2t_recall_at_1": recall,
                     "val/i2t_recall_at_1_chance": 0.33, "val/zero_shot_auroc/Edema": zero_shot,
                     "val/zero_shot_auroc/macro": zero_shot, "test/zero_shot_auroc/macro": 0.5}  # test: no pairs
        return {"retrieval": retrieval, "squeeze": squeeze, "steps": 3, "seconds_per_step_this_run": 0.1,
                "n_train_pairs": 9, "resolution": 32, "text_tokens": 16}

    text = avatls_markdown(metrics(0.25, 0.61, None), metrics(0.5, 0.72, {"length": 4, "layers": 1}))
    assert "| val | 4 (3) | image → report | 1 | 0.250 | 0.500 | 0.330 |" in text
    assert "| val | 1 | 0.610 | 0.720 |" in text and "| test | 0 | 0.500 | 0.500 |" in text
    assert not any(line.startswith("| test | 4") for line in text.splitlines())
