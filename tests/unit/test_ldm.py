import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from cxrgen.config import validate_config
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.models.diffusion import (
    CHEFF_BETA_END,
    CHEFF_BETA_START,
    LDM_DEFAULT_BETA_END,
    SD_BETA_END,
    SD_BETA_START,
    LatentSampler,
    SamplerSettings,
    build_unet,
    cfg_drop_mask,
    drop_condition,
    ldm_linear_betas,
    load_unet,
    make_train_scheduler,
    terminal_alpha_bar,
    unet_config,
)
from cxrgen.stages.train_ldm import LatentDiffusionTrainer, loop_config
from cxrgen.train.loop import Interrupted, latest_checkpoint, seed_everything

TINY_UNET = {"base_channels": 16, "channel_mult": [1, 2], "layers_per_block": 1,
             "attention_downsample_factors": [2], "attention_head_dim": 8, "norm_num_groups": 8}


class TinyTextEncoder:
    """Stand-in for cxrgen.models.clip's frozen text tower: open_clip's tokenizer + a seeded token embedding."""

    def __init__(self, dim: int = 16, context_length: int = 16):
        import open_clip

        self._tokenize = open_clip.tokenize
        self.dim, self.context_length = dim, context_length
        self.embedding = torch.nn.Embedding(49408, dim).requires_grad_(False)
        torch.nn.init.normal_(self.embedding.weight, generator=torch.Generator().manual_seed(0))

    def encode(self, texts):
        tokens = self._tokenize(list(texts), context_length=self.context_length)
        return self.embedding(tokens), (tokens != 0).long()


def ldm_cfg(**overrides) -> dict:
    cfg = validate_config({"sources": {"nih": {}}, "ldm": {"unet": TINY_UNET, "batch_size": 4, "max_steps": 3, "checkpoint_every": 2,
                                   "log_every": 1, "ema_decay": 0.9, "lr": 1e-3,
                                   "sample_grid": {"columns": 2, "steps": 3}}})["ldm"]
    cfg.update(overrides)
    return cfg


def test_scaled_linear_is_the_ldm_linear_schedule_and_terminal_snr():
    scheduler = make_train_scheduler(ldm_cfg()["schedule"])
    formula = ldm_linear_betas(CHEFF_BETA_START, CHEFF_BETA_END, 1000)
    np.testing.assert_allclose(scheduler.betas.numpy(), formula, rtol=1e-5)
    assert scheduler.betas[0].item() == pytest.approx(0.0015) and scheduler.betas[-1].item() == pytest.approx(0.0295)
    cheff = terminal_alpha_bar(CHEFF_BETA_START, CHEFF_BETA_END)
    ldm_default = terminal_alpha_bar(CHEFF_BETA_START, LDM_DEFAULT_BETA_END)
    sd = terminal_alpha_bar(SD_BETA_START, SD_BETA_END)
    assert cheff == pytest.approx(3.15e-6, rel=0.01)
    assert ldm_default == pytest.approx(1.42e-4, rel=0.01)
    assert sd == pytest.approx(4.66e-3, rel=0.01)
    assert float(scheduler.alphas_cumprod[-1]) == pytest.approx(cheff, rel=1e-3)
    # the plain "linear" (in β) schedule with the same endpoints is a different, noisier-at-the-end schedule
    assert not np.allclose(np.linspace(0.0015, 0.0295, 1000), formula)


def test_cheff_unet_translates_to_diffusers_blocks():
    full = validate_config({"sources": {"nih": {}}})["ldm"]["unet"]
    kwargs = unet_config(full, latent_channels=3, sample_size=64, cross_attention_dim=512)
    assert kwargs["block_out_channels"] == (224, 448, 896, 896)
    # attention at spatial 32/16/8 of a 64² latent = every level but the first (Cheff §7.3.2)
    assert kwargs["down_block_types"] == ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3
    assert kwargs["up_block_types"] == ("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",)
    assert kwargs["attention_head_dim"] == (7, 14, 28, 28)  # diffusers: number of heads = channels / 32
    uncond = unet_config(full, latent_channels=3, sample_size=64, cross_attention_dim=None)
    assert uncond["_class_name"] == "UNet2DModel" and uncond["down_block_types"][1] == "AttnDownBlock2D"
    with pytest.raises(ValueError, match="divisible"):
        unet_config({**full, "attention_head_dim": 100}, latent_channels=3, sample_size=64, cross_attention_dim=8)


def test_cfg_dropout_rate_and_replacement():
    drop = cfg_drop_mask(40000, 0.1, torch.Generator().manual_seed(0))
    assert abs(drop.float().mean().item() - 0.1) < 0.006
    enc = TinyTextEncoder()
    tokens, mask = enc.encode(["left effusion", "cardiomegaly", "pneumothorax"])
    null_tokens, null_mask = enc.encode([""])
    flags = torch.tensor([False, True, False])
    out_tokens, out_mask = drop_condition(tokens, mask, null_tokens, null_mask, flags)
    assert torch.equal(out_tokens[1], null_tokens[0]) and torch.equal(out_mask[1], null_mask[0])
    assert torch.equal(out_tokens[[0, 2]], tokens[[0, 2]]) and torch.equal(out_mask[[0, 2]], mask[[0, 2]])


def test_unet_save_load_is_strict(tmp_path):
    torch.manual_seed(0)
    unet = build_unet(TINY_UNET, latent_channels=3, sample_size=8, cross_attention_dim=16)
    unet.save_pretrained(tmp_path / "unet")
    loaded = load_unet(tmp_path / "unet")
    for (name, p), q in zip(unet.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state.pop(sorted(state)[0])
    save_file(state, weights)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_unet(tmp_path / "unet")


def _latents(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), 0.1 * torch.rand(n, 3, 8, 8, generator=g)


TEXTS = ["Large right pleural effusion.", "", "Cardiomegaly.", "Left pneumothorax.", "Normal chest.",
         "Right lower lobe pneumonia.", "", "Edema.", "Bilateral atelectasis.", "Rib fracture."]


def _fit(state_dir, cfg, stop_after=None):
    mean, std = _latents()
    loop = loop_config(cfg, seed=5, stop_after_steps=stop_after, device="cpu")
    seed_everything(loop.seed)
    trainer = LatentDiffusionTrainer(cfg, latent_mean=mean, latent_std=std, texts=TEXTS,
                                     text_encoder=TinyTextEncoder() if cfg["conditioning"] == "text" else None)
    result = trainer.fit(loop, state_dir)
    return trainer, result


def test_three_steps_and_kill_resume_equality(tmp_path):
    cfg = ldm_cfg(conditioning="text")  # the unconditional variant trains in the stage test below
    straight, result = _fit(tmp_path / "a", cfg)
    assert result.steps_done == 3 and all(np.isfinite(h["loss"]) for h in result.history)
    with pytest.raises(Interrupted):
        _fit(tmp_path / "b", cfg, stop_after=3 - 1)  # killed after step 2; checkpoint at step 2
    assert latest_checkpoint(tmp_path / "b").name == "ckpt-00000002.pt"
    resumed, result = _fit(tmp_path / "b", cfg)
    assert result.resumed_from == 2
    for p, q in zip(straight.unet.state_dict().values(), resumed.unet.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    for p, q in zip(straight.ema.shadow_params, resumed.ema.shadow_params, strict=True):
        assert torch.equal(p, q)


@pytest.fixture(scope="module")
def sampler():
    torch.manual_seed(1)
    unet = build_unet(TINY_UNET, latent_channels=3, sample_size=8, cross_attention_dim=16)
    return LatentSampler(unet, make_train_scheduler(ldm_cfg()["schedule"]).config, TinyTextEncoder().encode)


def test_ddim_is_deterministic_and_independent_of_batch_composition(sampler):
    settings = SamplerSettings(steps=4, eta=1.0, guidance_scale=3.0)
    alone = sampler.sample(["Large right pleural effusion."], [7], settings)
    again = sampler.sample(["Large right pleural effusion."], [7], settings)
    assert torch.equal(alone, again)
    mixed = sampler.sample(["Cardiomegaly.", "Large right pleural effusion.", ""], [3, 7, 9], settings)
    # same noise streams; batched kernels may round differently (~1e-5 relative), nothing more
    torch.testing.assert_close(mixed[1:2], alone, atol=1e-3, rtol=1e-3)
    assert not torch.allclose(mixed[0], alone[0], atol=1e-2)  # another seed/prompt: another sample


def test_condition_changes_the_sample(sampler):
    settings = SamplerSettings(steps=4, eta=0.0, guidance_scale=1.0)
    cond = sampler.sample(["Large right pleural effusion."], [0], settings)
    null = sampler.sample([""], [0], settings)
    guided = sampler.sample(["Large right pleural effusion."], [0], SamplerSettings(steps=4, eta=0.0,
                                                                                      guidance_scale=4.0))
    assert (cond - null).abs().max() > 1e-3
    assert (guided - cond).abs().max() > 1e-3


# ------------------------------------------------------------------------------------- stage-level fixtures


def make_store(root, n=16, resolution=32, seed=0):
    """A tiny unified store (shards + index) of random smooth images with report texts."""
    from cxrgen.store import ShardWriter, shard_path

    rng = np.random.default_rng(seed)
    rows = []
    with ShardWriter(shard_path(root, resolution, "demo", 0)) as writer:
        for i in range(n):
            img = rng.random((resolution // 4, resolution // 4))
            img = np.kron(img, np.ones((4, 4)))
            offset, nbytes, digest = writer.append(np.round(img * 65535).astype(np.uint16))
            split = "train" if i < n - 4 else ("val" if i < n - 2 else "test")
            row = {"image_id": f"img{i:03d}", "source": "demo", "split": split, "view": "PA", "shard": 0,
                   "report_findings": TEXTS[i % len(TEXTS)], "report_impression": "",
                   f"offset_{resolution}": offset, f"nbytes_{resolution}": nbytes, f"sha256_{resolution}": digest}
            for j, column in enumerate(LABEL_COLUMNS):
                row[column] = float((i + j) % 3 == 0)
            rows.append(row)
    index = pd.DataFrame(rows)
    index.to_parquet(root / "index.parquet", index=False)
    return root / "index.parquet"


def make_autoencoder(ae_dir, resolution=32):
    from cxrgen.models.autoencoder import build_autoencoder, save_autoencoder

    torch.manual_seed(0)
    vae = build_autoencoder({"block_out_channels": [8, 16, 16], "layers_per_block": 1, "latent_channels": 3,
                             "norm_num_groups": 8, "mid_block_attention": False}, resolution)
    vae.register_to_config(scaling_factor=0.9)
    save_autoencoder(vae, ae_dir)
    return ae_dir


def make_latent_cache(tmp_path):
    from cxrgen.stages.cache_latents import cache_latents

    store = tmp_path / "store"
    store.mkdir()
    index_path = make_store(store)
    ae_dir = make_autoencoder(tmp_path / "ae")
    cache_latents(index_path=index_path, store_root=store, resolution=32, ae_dir=ae_dir, out_dir=tmp_path / "latents")
    return tmp_path / "latents", ae_dir, index_path


_TRACKING: dict = {}


def shared_tracking_json(tmp_path_factory):
    """One MLflow SQLite store per test session (creating its schema costs seconds; test_generate reuses it)."""
    if "path" not in _TRACKING:
        from cxrgen.stages.init_tracking import init_tracking

        root = tmp_path_factory.mktemp("mlflow")
        init_tracking(root / "run.json", "test", root)
        _TRACKING["path"] = root / "run.json"
    return _TRACKING["path"]


def make_clip(clip_dir, resolution=32):
    """A tiny from-scratch open_clip model saved as rule train_clip saves it."""
    from cxrgen.models.clip import save_clip, scratch_clip

    torch.manual_seed(0)
    cfg = {"embed_dim": 16, "init_temperature": 0.07,
           "vision": {"layers": 1, "width": 32, "head_width": 16, "patch_size": 16, "mlp_ratio": 2.0},
           "text": {"context_length": 32, "width": 32, "heads": 2, "layers": 1, "mlp_ratio": 2.0}}
    save_clip(scratch_clip(cfg, resolution), clip_dir)
    return clip_dir


def test_unconditional_variant_trains_a_unet2dmodel(tmp_path):
    trainer, result = _fit(tmp_path, ldm_cfg(conditioning="none", max_steps=1))
    assert type(trainer.unet).__name__ == "UNet2DModel" and np.isfinite(result.history[-1]["loss"])


def test_train_ldm_stage_writes_a_pipeline_loadable_with_diffusers(tmp_path, tmp_path_factory):
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from cxrgen.models.diffusion import SamplerSettings
    from cxrgen.pipeline import CxrPipeline, read_pipeline_json
    from cxrgen.stages.train_ldm import train_ldm

    latents, ae_dir, _ = make_latent_cache(tmp_path)
    clip_dir = make_clip(tmp_path / "clip")
    tracking = shared_tracking_json(tmp_path_factory)
    cfg = ldm_cfg(max_steps=2)
    metrics = train_ldm(latents_dir=latents, ae_dir=ae_dir, clip_dir=clip_dir, cfg=cfg, seed=0,
                        out_dir=tmp_path / "ldm", state_dir=tmp_path / "state", tracking_json=tracking,
                        job_name="train_ldm")
    out = tmp_path / "ldm"
    # 12 train images, 3 without a report (require_report)
    assert metrics["steps"] == 2 and metrics["n_train"] == 9 and np.isfinite(metrics["val_loss_ema"])
    assert metrics["mlflow_run_id"] and metrics["text_encoding_seconds"] > 0
    # the sample grid is rule sample_ldm_grid's (tests/unit/test_sample_grids.py): the trainer draws none
    assert {p.name for p in out.iterdir()} == {"unet", "unet_raw", "scheduler", "cxrgen_pipeline.json",
                                               "metrics.json", "loss.png", "MODEL_CARD.md", "model_card.json"}
    assert not any("grid" in key for key in metrics)
    info = read_pipeline_json(out)
    assert info["conditioning"] == "text" and info["autoencoder"] == ae_dir.resolve()
    assert info["text_encoder"] == clip_dir.resolve()
    assert json.loads((out / "cxrgen_pipeline.json").read_text())["autoencoder"] == "../ae"  # relative
    # plain diffusers loading, as documented
    unet = UNet2DConditionModel.from_pretrained(out / "unet")
    scheduler = DDIMScheduler.from_pretrained(out / "scheduler", set_alpha_to_one=False)
    assert unet.config.sample_size == 8 and unet.config.cross_attention_dim == 32
    assert scheduler.config.beta_end == pytest.approx(0.0295) and scheduler.config.beta_schedule == "scaled_linear"
    assert not (tmp_path / "ldm.tmp").exists()
    # the final weights are the EMA weights, different from the raw ones
    raw = UNet2DConditionModel.from_pretrained(out / "unet_raw")
    assert any(not torch.equal(p, q) for p, q in zip(unet.parameters(), raw.parameters(), strict=True))
    pipe = CxrPipeline.from_dir(out)
    images = pipe(["Large right pleural effusion."], [0], SamplerSettings(steps=2))["low"]
    assert images.shape == (1, 1, 32, 32) and images.abs().max() <= 1.0


def test_diffusion_targets_match_their_definitions():
    from cxrgen.models.diffusion import diffusion_target

    clean, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    schedule = ldm_cfg()["schedule"]
    eps_sched = make_train_scheduler(schedule)
    assert torch.equal(diffusion_target(eps_sched, clean, noise, t), noise)
    v_sched = make_train_scheduler({**schedule, "prediction_type": "v_prediction"})
    abar = v_sched.alphas_cumprod[t].view(-1, 1, 1, 1).float()
    expected = abar.sqrt() * noise - (1 - abar).sqrt() * clean
    assert torch.allclose(diffusion_target(v_sched, clean, noise, t), expected, atol=1e-5)
    # a perfect v-prediction gives back x0 through the scheduler's own step
    noisy = v_sched.add_noise(clean, noise, t)
    x0 = abar.sqrt() * noisy - (1 - abar).sqrt() * expected
    assert torch.allclose(x0, clean, atol=1e-4)


def test_report_less_latents_train_on_label_reports_only_when_configured():
    from cxrgen.prompts import label_template_report
    from cxrgen.train.data import conditioning_texts

    rows = pd.DataFrame({"image_id": ["a", "b", "c"], "text": ["Small left effusion.", "", ""]})
    for column in LABEL_COLUMNS:
        rows[column] = np.nan
    rows.loc[1, "lbl_cardiomegaly"] = 1.0
    assert conditioning_texts(rows, "empty").tolist() == ["Small left effusion.", "", ""]
    texts = conditioning_texts(rows, "label_template").tolist()
    assert texts[0] == "Small left effusion." and texts[2] == ""
    assert texts[1] == label_template_report(rows.iloc[1].to_dict(), "b") and texts[1]
