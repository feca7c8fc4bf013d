import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from cxrgen.config import validate_config
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.models.autoencoder import build_autoencoder, save_autoencoder
from cxrgen.models.sr import (
    build_sr,
    diffusion_loss,
    load_sr,
    random_crops,
    resize_bicubic,
    save_sr,
    super_resolve,
)
from cxrgen.stages.init_tracking import init_tracking
from cxrgen.stages.train_sr import train_sr
from cxrgen.store import ShardWriter, shard_path
from cxrgen.train.loop import Interrupted, latest_checkpoint

LOW, HIGH = 32, 64


def tiny_cfg(**overrides) -> dict:
    section = {"model": {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
                         "mid_attention": True, "attention_head_dim": 8},
               "batch_size": 2, "base": {"max_steps": 3}, "finetune": {"max_steps": 3},
               "validation": {"images": 2, "steps": 2}, "loop": {"checkpoint_every": 1, "log_every": 1}, **overrides}
    return validate_config({"sources": {"nih": {}}, "sr": section})["sr"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store"))


def make_store(root):
    """10 smooth phantoms stored at LOW and HIGH px: 6 train PA, 1 train LATERAL (excluded), 3 val PA."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:HIGH, :HIGH] / HIGH
    images = []
    for _ in range(10):
        image = np.full((HIGH, HIGH), 0.3)
        for cx in (0.3, 0.7):
            r = rng.uniform(0.12, 0.2)
            image[((xx - cx) / r) ** 2 + ((yy - 0.5) / (1.8 * r)) ** 2 < 1] = rng.uniform(0.6, 0.9)
        image += 0.05 * np.sin(xx * rng.uniform(10, 30))  # fine detail that bicubic upsampling cannot restore
        images.append(np.clip(image, 0, 1))
    splits = ["train"] * 7 + ["val"] * 3
    views = ["PA"] * 6 + ["LATERAL"] + ["PA"] * 3
    rows = [{"image_id": f"img-{i:02d}", "source": "nih", "shard": 0, "split": splits[i], "view": views[i],
             "report_findings": "", "report_impression": "", **{c: np.nan for c in LABEL_COLUMNS}} for i in range(10)]
    for res in (LOW, HIGH):
        with ShardWriter(shard_path(root, res, "nih", 0)) as writer:
            for row, image in zip(rows, images, strict=True):
                small = image.reshape(res, HIGH // res, res, HIGH // res).mean(axis=(1, 3))
                offset, nbytes, sha = writer.append((small * 65535).round().astype(np.uint16))
                row.update({f"offset_{res}": offset, f"nbytes_{res}": nbytes, f"sha256_{res}": sha})
    pd.DataFrame(rows).to_parquet(root / "index.parquet")
    return root


@pytest.fixture(scope="module")
def autoencoder_dir(tmp_path_factory):
    return make_autoencoder(tmp_path_factory.mktemp("ae") / "autoencoder")


def make_autoencoder(out):
    """A tiny untrained autoencoder at LOW px, saved as rule train_autoencoder saves it."""
    torch.manual_seed(0)
    ae_cfg = validate_config({"sources": {"nih": {}}, "autoencoder": {
        "block_out_channels": [8, 8], "layers_per_block": 1, "norm_num_groups": 4}})["autoencoder"]
    save_autoencoder(build_autoencoder(ae_cfg, LOW), out)
    return out


def _weights(sr_dir) -> dict[str, torch.Tensor]:
    return load_sr(sr_dir).unet.state_dict()


def _run(store, tmp, name, *, mode="bicubic", stop=None, tracking=None, **kwargs):
    return train_sr(index_path=store / "index.parquet", store_root=store, low_res=LOW, high_res=HIGH,
                    cfg=kwargs.pop("cfg", tiny_cfg()), seed=7, state_dir=tmp / f"{name}-state",
                    out_dir=tmp / name, tracking_json=tracking, job_name=f"sr:{name}", mode=mode,
                    stop_after_steps=stop, **kwargs)


def _kill_then_resume(store, tmp, name, **kwargs):
    with pytest.raises(Interrupted):
        _run(store, tmp, name, stop=2, **kwargs)
    assert latest_checkpoint(tmp / f"{name}-state").name == "ckpt-00000002.pt"
    assert not (tmp / name).exists()  # weights appear only when training completes
    return _run(store, tmp, name, **kwargs)


def test_build_from_config_and_defaults():
    defaults = validate_config({"sources": {"nih": {}}})["sr"]
    assert defaults["schedule"] == {"num_train_timesteps": 2000, "beta_schedule": "squaredcos_cap_v2",
                                    "prediction_type": "epsilon", "timestep_spacing": "trailing"}
    assert (defaults["base"]["lr"], defaults["finetune"]["lr"], defaults["loss"]) == (5e-5, 2e-5, "l1")
    assert defaults["model"]["block_out_channels"] == [16, 32, 64, 128, 256, 512, 512, 512]
    model = build_sr(tiny_cfg(), low_res=LOW, high_res=HIGH)
    assert (model.unet.config.in_channels, model.unet.config.out_channels) == (2, 1)
    out = model.unet(torch.zeros(3, 2, HIGH, HIGH), torch.tensor([0, 5, 1999])).sample
    assert out.shape == (3, 1, HIGH, HIGH)
    with pytest.raises(ValueError, match="divisible"):
        build_sr(tiny_cfg(model={"block_out_channels": [8, 8, 8, 8, 8, 8, 8, 8]}), low_res=LOW, high_res=HIGH)
    with pytest.raises(ValueError, match="exceed"):
        build_sr(tiny_cfg(), low_res=HIGH, high_res=HIGH)


def test_cosine_schedule():
    scheduler = build_sr(tiny_cfg(), low_res=LOW, high_res=HIGH).scheduler
    alpha_bar = scheduler.alphas_cumprod
    assert scheduler.config.num_train_timesteps == 2000 and len(alpha_bar) == 2000
    assert torch.all(alpha_bar[1:] < alpha_bar[:-1])
    assert alpha_bar[0] > 0.9999 and alpha_bar[-1] < 1e-8
    # cosine: ᾱ(t) ≈ cos²((t/T + s)/(1 + s) · π/2), s = 0.008 (Nichol & Dhariwal 2021), away from the β cap
    t = torch.tensor([500, 1000, 1500])
    expected = torch.cos(((t + 1) / 2000 + 0.008) / 1.008 * torch.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    torch.testing.assert_close(alpha_bar[t].double(), expected.double(), rtol=1e-3, atol=1e-5)


def test_save_load_is_strict(tmp_path):
    torch.manual_seed(1)
    model = build_sr(tiny_cfg(), low_res=LOW, high_res=HIGH, mode="decoded")
    save_sr(model, tmp_path / "sr")
    loaded = load_sr(tmp_path / "sr")
    assert (loaded.low_res, loaded.high_res, loaded.mode) == (LOW, HIGH, "decoded")
    assert loaded.scheduler.config.num_train_timesteps == 2000
    for (k, p), (k2, q) in zip(model.unet.state_dict().items(), loaded.unet.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(p, q)
    weights_file = next((tmp_path / "sr" / "unet").glob("*.safetensors"))
    weights = load_file(weights_file)
    weights.pop(next(iter(weights)))
    save_file(weights, weights_file)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_sr(tmp_path / "sr")
    with pytest.raises(FileNotFoundError):
        load_sr(tmp_path)


def test_super_resolve_is_seeded_and_independent_of_the_batch():
    torch.manual_seed(2)
    model = build_sr(tiny_cfg(), low_res=LOW, high_res=HIGH)
    low = torch.rand(3, 1, LOW, LOW) * 2 - 1

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    for eta in (0.0, 1.0):
        batch = super_resolve(model, low, steps=3, eta=eta, generator=gens(10, 11, 12))
        assert batch.shape == (3, 1, HIGH, HIGH) and batch.abs().max() <= 1
        again = super_resolve(model, low, steps=3, eta=eta, generator=gens(10, 11, 12))
        assert torch.equal(batch, again)
        alone = super_resolve(model, low[1:2], steps=3, eta=eta, generator=gens(11))
        torch.testing.assert_close(alone, batch[1:2], rtol=0, atol=1e-5)
        other_seed = super_resolve(model, low[1:2], steps=3, eta=eta, generator=gens(99))
        assert (other_seed - alone).abs().max() > 1e-3
    with pytest.raises(ValueError, match="shape"):
        super_resolve(model, torch.zeros(1, 1, HIGH, HIGH), steps=2)
    with pytest.raises(ValueError, match="generators"):
        super_resolve(model, low, steps=2, generator=gens(1, 2))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_loss_targets(prediction):
    torch.manual_seed(3)
    model = build_sr(tiny_cfg(schedule={"prediction_type": prediction}), low_res=LOW, high_res=HIGH)
    high = torch.rand(2, 1, HIGH, HIGH) * 2 - 1
    condition = resize_bicubic(resize_bicubic(high, LOW), HIGH)
    l1 = diffusion_loss(model, high, condition, torch.Generator().manual_seed(0), "l1")
    l2 = diffusion_loss(model, high, condition, torch.Generator().manual_seed(0), "l2")
    assert torch.isfinite(l1) and torch.isfinite(l2) and l1 != l2
    # a denoiser that outputs exactly the target of its prediction type has zero loss
    generator = torch.Generator().manual_seed(0)
    timesteps = torch.randint(0, 2000, (2,), generator=generator)
    noise = torch.randn(high.shape, generator=generator)
    target = {"epsilon": noise, "sample": high,
              "v_prediction": model.scheduler.get_velocity(high, noise, timesteps)}[prediction]
    model.unet.forward = lambda *args, **kwargs: type("Out", (), {"sample": target})()
    assert diffusion_loss(model, high, condition, torch.Generator().manual_seed(0), "l1") == 0


def test_random_crops_take_the_same_window_from_each_tensor():
    grid = torch.arange(2 * 10 * 10, dtype=torch.float32).reshape(2, 1, 10, 10)
    a, b = random_crops([grid, -grid], 4, torch.Generator().manual_seed(0))
    assert a.shape == (2, 1, 4, 4) and torch.equal(a, -b)
    for i in range(2):  # a contiguous window of sample i
        top, left = divmod(int(a[i, 0, 0, 0]) - 100 * i, 10)
        assert torch.equal(a[i], grid[i, :, top : top + 4, left : left + 4])
    with pytest.raises(ValueError, match="larger"):
        random_crops([grid], 11, torch.Generator())


def test_train_resume_and_finetune(store, autoencoder_dir, tmp_path):
    tracking = tmp_path / "run.json"
    init_tracking(tracking, "test", tmp_path)

    straight = _run(store, tmp_path, "base")
    resumed = _kill_then_resume(store, tmp_path, "base-resumed", tracking=tracking)
    for (k, p), q in zip(_weights(tmp_path / "base").items(), _weights(tmp_path / "base-resumed").values(),
                         strict=True):
        assert torch.equal(p, q), k
    assert straight["val_psnr_sr"] == resumed["val_psnr_sr"]
    assert straight["steps"] == 3 and straight["n_train"] == 6  # the lateral image is not used
    for key in ("final_loss", "val_psnr_sr", "val_ssim_sr", "val_psnr_bicubic", "val_ssim_bicubic"):
        assert np.isfinite(straight[key]), key
    out = tmp_path / "base"
    assert json.loads((out / "metrics.json").read_text())["mode"] == "bicubic"
    assert (out / "val_grid.png").stat().st_size > 0 and (out / "loss_curve.png").stat().st_size > 0
    assert not (tmp_path / "base.tmp").exists()

    run = mlflow.tracking.MlflowClient(json.loads(tracking.read_text())["tracking_uri"]).get_run(
        resumed["mlflow_run_id"])  # the resumed job continued the interrupted job's run
    assert run.info.status == "FINISHED" and run.data.params["sr.base.lr"] == "5e-05"
    assert {"loss", "val_psnr_sr", "val_ssim_bicubic"} <= set(run.data.metrics)

    with pytest.raises(ValueError, match="ae_dir"):
        _run(store, tmp_path, "no-ae", mode="decoded")
    base = _weights(tmp_path / "base")
    # the architecture comes from init_dir, not from cfg; also covers stored LR images and patch training
    fine_cfg = tiny_cfg(lr_source="store", train_crop=48, model={"block_out_channels": [16, 16]})
    fine_kwargs = {"mode": "decoded", "ae_dir": autoencoder_dir, "init_dir": tmp_path / "base", "cfg": fine_cfg}
    fine = _run(store, tmp_path, "fine", **fine_kwargs)
    _kill_then_resume(store, tmp_path, "fine-resumed", **fine_kwargs)
    fine_weights = _weights(tmp_path / "fine")
    for (k, p), q in zip(fine_weights.items(), _weights(tmp_path / "fine-resumed").values(), strict=True):
        assert torch.equal(p, q), k
    assert load_sr(tmp_path / "fine").mode == "decoded" and fine["mode"] == "decoded"
    # initialised from the base weights: 3 Adam steps at lr 2e-5 move every weight by less than 1e-3
    assert max((fine_weights[k] - base[k]).abs().max().item() for k in base) < 1e-3
    assert any(not torch.equal(fine_weights[k], base[k]) for k in base)
