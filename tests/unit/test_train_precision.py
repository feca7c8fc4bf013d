"""Mixed precision in the shared loop on CPU: bf16 autocast really runs, fp16 scales the loss with a GradScaler whose
state is checkpointed, and both resume bit-exactly."""

import math

import pytest
import torch
from torch import nn

from cxrgen.train.loop import (
    Interrupted,
    LoopConfig,
    StepBatchSampler,
    clip_and_step,
    latest_checkpoint,
    run_training,
    seed_everything,
)

X = torch.randn(37, 5, generator=torch.Generator().manual_seed(0))
Y = X @ torch.randn(5, 1, generator=torch.Generator().manual_seed(1))


def _run(state_dir, precision, *, max_steps=10, stop_after=None, call="ctx", **loop):
    seed_everything(3)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    cfg = LoopConfig(max_steps=max_steps, checkpoint_every=3, log_every=1, seed=3, mixed_precision=precision,
                     stop_after_steps=stop_after, device="cpu", **loop)
    dtypes = set()

    def loader_for(start):
        return ((X[idx], Y[idx]) for idx in StepBatchSampler(len(X), 8, cfg.seed, start, cfg.max_steps))

    def step(batch, ctx):
        x, y = batch
        noise = torch.randn(x.shape, generator=ctx.generator) * 0.01
        with ctx.autocast():
            out = model(x + noise)
        dtypes.add(out.dtype)
        loss = ((out.float() - y) ** 2).mean()
        # "legacy": the call trainers used before ctx.backward_step existed
        norm = ctx.backward_step(loss, model, opt) if call == "ctx" else clip_and_step(loss, model, opt, cfg.grad_clip)
        return {"loss": loss.item(), "grad_norm": norm}

    result = run_training(cfg, modules={"model": model}, optimizers={"model": opt}, loader_for=loader_for,
                          train_step=step, state_dir=state_dir)
    return model, result, dtypes


def _killed_then_resumed(state_dir, precision, **kw):
    with pytest.raises(Interrupted):
        _run(state_dir, precision, stop_after=7, **kw)
    assert latest_checkpoint(state_dir).name == "ckpt-00000006.pt"
    return _run(state_dir, precision, **kw)


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("precision, dtype", [("no", torch.float32), ("bf16", torch.bfloat16)])
def test_cpu_autocast_follows_the_config_and_resumes_exactly(tmp_path, precision, dtype):
    straight, result, dtypes = _run(tmp_path / "a", precision)
    assert dtypes == {dtype}  # bf16 on CPU really autocasts (it is not silently fp32)
    assert all(math.isfinite(h["loss"]) for h in result.history)
    resumed, result, _ = _killed_then_resumed(tmp_path / "b", precision)
    assert result.resumed_from == 6
    _assert_same_weights(straight, resumed)


def test_bf16_trains_differently_from_fp32(tmp_path):
    fp32, _, _ = _run(tmp_path / "a", "no")
    bf16, _, _ = _run(tmp_path / "b", "bf16")
    assert not torch.equal(fp32[0].weight, bf16[0].weight)


@pytest.mark.parametrize("call", ["ctx", "legacy"])
def test_fp16_scales_the_loss_checkpoints_the_scaler_and_resumes_exactly(tmp_path, call):
    # a start scale of 2^24 overflows fp16 gradients: the scaler skips those steps and backs off; growth every
    # 2 clean steps moves the scale again, so a resume that forgot the scaler state would skip different steps
    loop = {"grad_scale_init": 2.0**24, "grad_scale_growth_interval": 2}
    straight, result, dtypes = _run(tmp_path / "a", "fp16", call=call, **loop)
    assert dtypes == {torch.float16}
    norms = [h["grad_norm"] for h in result.history]
    assert not math.isfinite(norms[0])  # the first step overflowed and was skipped, not applied
    assert any(math.isfinite(n) for n in norms)
    assert all(torch.isfinite(p).all() for p in straight.parameters())
    saved = torch.load(latest_checkpoint(tmp_path / "a"), weights_only=False)["scalers"]["model"]
    assert saved["scale"] < 2.0**24
    resumed, result, _ = _killed_then_resumed(tmp_path / "b", "fp16", call=call, **loop)
    assert result.resumed_from == 6
    _assert_same_weights(straight, resumed)


def test_fp16_resume_depends_on_the_saved_scaler_state(tmp_path):
    """The negative control for the test above: dropping the scaler state from the checkpoint changes the result."""
    loop = {"grad_scale_init": 2.0**24, "grad_scale_growth_interval": 2}
    straight, _, _ = _run(tmp_path / "a", "fp16", **loop)
    with pytest.raises(Interrupted):
        _run(tmp_path / "b", "fp16", stop_after=7, **loop)
    ckpt = latest_checkpoint(tmp_path / "b")
    payload = torch.load(ckpt, weights_only=False)
    del payload["scalers"]
    torch.save(payload, ckpt)
    forgetful, _, _ = _run(tmp_path / "b", "fp16", **loop)
    assert not all(torch.equal(p, q) for p, q in zip(straight.parameters(), forgetful.parameters(), strict=True))


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="mixed_precision"):
        LoopConfig(max_steps=1, mixed_precision="fp8")


def test_fp16_needs_the_optimizer_registered_with_the_loop(tmp_path):
    seed_everything(0)
    model, stray = nn.Linear(5, 1), nn.Linear(5, 1)
    opt, stray_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(stray.parameters(), lr=0.1)
    cfg = LoopConfig(max_steps=1, mixed_precision="fp16", device="cpu")

    def step(batch, ctx):
        with ctx.autocast():
            loss = stray(X).float().mean()
        return {"grad_norm": ctx.backward_step(loss, stray, stray_opt)}

    with pytest.raises(ValueError, match="not passed to run_training"):
        run_training(cfg, modules={"model": model}, optimizers={"model": opt}, loader_for=lambda s: iter([None]),
                     train_step=step, state_dir=tmp_path)
