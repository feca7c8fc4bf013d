import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from cxrgen.config import validate_config
from cxrgen.evaluate.metrics import ssim
from cxrgen.hashing import dir_digest
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.models.autoencoder import (
    WEIGHTS_FILE,
    AutoencoderObjective,
    FeaturePerceptualLoss,
    PatchDiscriminator,
    adaptive_gan_weight,
    build_autoencoder,
    latent_scale_factor,
    load_autoencoder,
    reconstruction_metrics,
    save_autoencoder,
)
from cxrgen.stages.init_tracking import init_tracking
from cxrgen.stages.train_autoencoder import train_autoencoder
from cxrgen.store import ShardWriter, shard_path
from cxrgen.train.loop import Interrupted, latest_checkpoint

RES = 32


def tiny_cfg(**overrides) -> dict:
    """The validated ``autoencoder`` section with a tiny model (full-scale defaults otherwise)."""
    section = {"block_out_channels": [8, 16, 32], "layers_per_block": 1, "norm_num_groups": 8, "batch_size": 4,
               "max_steps": 4, "checkpoint_every": 2, "log_every": 1, "lr": 1e-3, "scale_sample_size": 10,
               "val_max_images": 6, "grid_images": 4, "gan": {"start_step": 2, "channels": 8}, **overrides}
    return validate_config({"sources": {"nih": {}}, "autoencoder": section})["autoencoder"]


def tiny_store(root, n=24, res=RES) -> pd.DataFrame:
    """A store of ``n`` ellipse phantoms (white-ish lungs on grey) with splits, views, reports and labels."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:res, :res] / res
    rows = []
    with ShardWriter(shard_path(root, res, "nih", 0)) as writer:
        for i in range(n):
            image = np.full((res, res), 0.3)
            for cx in (0.3, 0.7):
                r = rng.uniform(0.12, 0.2)
                image[((xx - cx) / r) ** 2 + ((yy - 0.5) / (1.8 * r)) ** 2 < 1] = rng.uniform(0.6, 0.9)
            image = np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1)
            offset, nbytes, digest = writer.append((image * 65535).astype(np.uint16))
            row = {"image_id": f"nih-{i:04d}", "source": "nih", "shard": 0, f"offset_{res}": offset,
                   f"nbytes_{res}": nbytes, f"sha256_{res}": digest,
                   "split": ["train", "train", "train", "val", "test"][i % 5] if i < 20 else "train",
                   "view": "LATERAL" if i % 7 == 6 else "PA",
                   "report_findings": f"finding {i}" if i % 2 else None, "report_impression": "normal"}
            row.update({column: float(i % 2) if j == i % 14 else np.nan for j, column in enumerate(LABEL_COLUMNS)})
            rows.append(row)
    index = pd.DataFrame(rows)
    index.to_parquet(root / "index.parquet")
    return index


def test_build_from_config_downsamples_by_four():
    cfg = tiny_cfg()
    vae = build_autoencoder(cfg, RES)
    x = torch.rand(2, 1, RES, RES) * 2 - 1
    posterior = vae.encode(x).latent_dist
    assert posterior.mean.shape == (2, 3, 8, 8)
    assert vae.decode(posterior.mode()).sample.shape == (2, 1, RES, RES)
    assert all(a is None for a in vae.encoder.mid_block.attentions)  # Cheff §7.3.1: no self-attention
    with_attention = build_autoencoder({**cfg, "mid_block_attention": True}, RES)
    assert all(a is not None for a in with_attention.encoder.mid_block.attentions)


def test_full_scale_defaults_are_cheffs():
    cfg = validate_config({"sources": {"nih": {}}})["autoencoder"]
    assert cfg["block_out_channels"] == [128, 256, 512] and cfg["layers_per_block"] == 2
    assert cfg["latent_channels"] == 3 and cfg["kl_weight"] == 1e-6 and cfg["lr"] == 4.5e-6
    assert cfg["gan"] == {"enabled": True, "start_step": 5001, "weight": 0.5, "adaptive_weight": True,
                          "channels": 64, "layers": 3}


def test_strict_save_load_keeps_scaling_factor(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = build_autoencoder(tiny_cfg(), RES)
    vae.register_to_config(scaling_factor=0.731)
    save_autoencoder(vae, tmp_path / "ae")
    loaded = load_autoencoder(tmp_path / "ae")
    assert loaded.config.scaling_factor == pytest.approx(0.731)
    assert AutoencoderKL.from_pretrained(tmp_path / "ae").config.scaling_factor == pytest.approx(0.731)
    for (k, p), (k2, q) in zip(vae.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(p, q)
    digest = dir_digest(tmp_path / "ae")
    weights = load_file(tmp_path / "ae" / WEIGHTS_FILE)
    weights.pop(next(iter(weights)))
    save_file(weights, tmp_path / "ae" / WEIGHTS_FILE)
    assert dir_digest(tmp_path / "ae") != digest
    with pytest.raises(RuntimeError, match="Missing key"):
        load_autoencoder(tmp_path / "ae")


def test_scale_factor_from_known_latent_statistics():
    rng = np.random.default_rng(0)
    means = rng.normal(3.0, 2.0, size=(64, 3, 8, 8))
    assert latent_scale_factor(means) == pytest.approx(1 / means.std(), rel=1e-9)
    assert latent_scale_factor(means) == pytest.approx(0.5, rel=0.02)
    stds = np.full_like(means, 1.5)  # total variance 4 + 2.25
    assert latent_scale_factor(means, stds) == pytest.approx(1 / math.sqrt(means.var() + 2.25), rel=1e-9)
    samples = means + stds * rng.normal(size=means.shape)  # what LDM estimates by sampling
    assert latent_scale_factor(means, stds) == pytest.approx(1 / samples.std(), rel=0.03)
    with pytest.raises(ValueError):
        latent_scale_factor(np.ones((4, 3, 2, 2)))


def test_losses_are_finite_and_reach_every_part():
    torch.manual_seed(0)
    vae = build_autoencoder(tiny_cfg(), RES)
    feature_net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3))
    objective = AutoencoderObjective(kl_weight=1e-6, perceptual=FeaturePerceptualLoss(feature_net),
                                     discriminator=PatchDiscriminator(1, 8, 3), gan_start=1, gan_weight=0.5)
    x = torch.rand(3, 1, RES, RES) * 2 - 1
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample(generator=torch.Generator().manual_seed(0))).sample
    last = vae.decoder.conv_out.weight
    before, m0 = objective.generator_loss(x, recon, posterior, step=0, last_layer=last)
    assert "gan_loss" not in m0  # warm-up: no adversarial term yet
    loss, metrics = objective.generator_loss(x, recon, posterior, step=1, last_layer=last)
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["gan_weight"] > 0
    assert metrics["perceptual"] > 0 and metrics["kl"] > 0
    assert metrics["rec_loss"] > metrics["l1"] * RES * RES  # summed per sample, plus the perceptual term
    loss.backward()
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in feature_net.parameters())  # frozen perceptual network
    d_loss, d_metrics = objective.discriminator_loss(x, recon)
    assert math.isfinite(d_metrics["disc_loss"]) and d_loss.requires_grad


def test_adaptive_weight_balances_gradient_norms():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    rec, gan = (3 * w).sum(), (w**2).sum()  # grads (3,3) and (2,4)
    expected = math.sqrt(18) / (math.sqrt(20) + 1e-4) * 0.5
    assert float(adaptive_gan_weight(rec, gan, w, 0.5)) == pytest.approx(expected, rel=1e-6)


def test_psnr_ssim_on_identical_and_noisy_images():
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    same = reconstruction_metrics(x, x.clone())
    assert torch.isinf(same["psnr"]).all() and torch.allclose(same["ssim"], torch.ones(4))
    noise = 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    noisy = (x + noise).clamp(-1, 1)
    scores = reconstruction_metrics(x, noisy)
    mse01 = (((x - noisy) / 2) ** 2).flatten(1).mean(1)  # error measured in [0, 1] units
    assert torch.allclose(scores["psnr"], 10 * torch.log10(1 / mse01), atol=1e-4)
    assert (scores["psnr"] > 20).all() and (scores["psnr"] < 35).all()
    assert (scores["ssim"] < 0.999).all() and (scores["ssim"] > 0.3).all()
    assert (reconstruction_metrics(x, x + 2 * noise)["ssim"] < scores["ssim"]).all()
    # the harness's SSIM (cxrgen.evaluate.metrics.ssim) of the same images mapped to [0, 1]
    expected = ssim((noisy + 1) / 2, (x + 1) / 2)
    assert scores["ssim"].dtype == torch.float32 and np.allclose(scores["ssim"].numpy(), expected, atol=1e-6)


def _train(tmp_path, name, tracking, **kw):
    torch.manual_seed(1)  # the same frozen perceptual network in every attempt
    perceptual = FeaturePerceptualLoss(torch.nn.Conv2d(1, 4, 3))
    return train_autoencoder(index_path=tmp_path / "store/index.parquet", store_root=tmp_path / "store",
                             resolution=RES, cfg=tiny_cfg(), seed=5, state_dir=tmp_path / name / "state",
                             out_dir=tmp_path / name / "ae", tracking_json=tracking, job_name=f"train_ae:{name}",
                             perceptual_net=perceptual, **kw)


def test_stage_kill_resume_equality_outputs_and_tracking(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "store").mkdir()
    tiny_store(tmp_path / "store")
    tracking = tmp_path / "run.json"
    init_tracking(tracking, "test", tmp_path)
    straight = _train(tmp_path, "a", None)  # library use: no tracking
    with pytest.raises(Interrupted):
        _train(tmp_path, "b", tracking, stop_after_steps=3)  # GAN active from step 2; checkpoint at step 2
    assert latest_checkpoint(tmp_path / "b/state").name == "ckpt-00000002.pt"
    resumed = _train(tmp_path, "b", tracking)
    assert resumed["resumed_from"] == 2 and straight["steps"] == resumed["steps"] == 4
    a, b = load_autoencoder(tmp_path / "a/ae"), load_autoencoder(tmp_path / "b/ae")
    for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    assert a.config.scaling_factor == b.config.scaling_factor == pytest.approx(straight["scaling_factor"])
    assert straight["scaling_factor"] > 0 and math.isfinite(straight["val_psnr"])
    assert straight["latent_shape"] == [3, 8, 8] and straight["n_val_images"] == 3  # val ∩ frontal
    names = {p.name for p in (tmp_path / "a/ae").iterdir()}
    assert {"config.json", WEIGHTS_FILE, "metrics.json", "recon_grid.png", "loss_curve.png"} <= names
    assert json.loads((tmp_path / "a/ae/metrics.json").read_text())["val_ssim"] == straight["val_ssim"]
    assert not (tmp_path / "a/ae.tmp").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(json.loads(tracking.read_text())["tracking_uri"])
    run = client.get_run(resumed["mlflow_run_id"])  # the resumed attempt continued the killed attempt's run
    assert run.info.status == "FINISHED" and run.data.tags["snakemake.rule"] == "train_autoencoder"
    assert run.data.metrics["val/psnr"] == pytest.approx(resumed["val_psnr"])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert set(steps) == set(range(1, 5))
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"recon_grid.png", "loss_curve.png", "metrics.json"} <= artifacts


def test_clip_perceptual_needs_the_clip_model():
    from cxrgen.stages.train_autoencoder import _perceptual

    with pytest.raises(ValueError, match="clip_dir"):
        _perceptual(tiny_cfg(perceptual={"kind": "clip"}), None, None)
    assert _perceptual(tiny_cfg(), None, None) is None  # default: L1 only


def test_clip_perceptual_uses_the_in_domain_image_tower(tmp_path):
    from cxrgen.models.autoencoder import clip_perceptual_network
    from cxrgen.models.clip import save_clip, scratch_clip

    clip_cfg = validate_config({"sources": {"nih": {}}, "clip": {
        "embed_dim": 16, "vision": {"layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text": {"width": 16, "heads": 2, "layers": 1, "context_length": 16}}})["clip"]
    torch.manual_seed(0)
    save_clip(scratch_clip(clip_cfg, RES), tmp_path / "clip")
    perceptual = clip_perceptual_network(tmp_path / "clip")
    x = torch.rand(2, 1, RES, RES) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    assert torch.allclose(perceptual(x, x), torch.zeros(2), atol=1e-6)
    distance = perceptual(x, y)
    assert (distance > 0).all()
    distance.sum().backward()
    assert y.grad.abs().sum() > 0  # gradients reach the reconstruction, not the frozen tower
    assert all(not p.requires_grad for p in perceptual.parameters())
