import torch
from torch import nn

from cxrgen.train.loop import (
    Interrupted,
    LoopConfig,
    StepBatchSampler,
    attach_ema,
    clip_and_step,
    latest_checkpoint,
    run_training,
    seed_everything,
)

X = torch.randn(37, 5, generator=torch.Generator().manual_seed(0))
Y = X @ torch.randn(5, 1, generator=torch.Generator().manual_seed(1))


def _run(state_dir, max_steps, stop_after=None, checkpoint_every=3):
    seed_everything(3)  # trainers seed before building models so initial weights are reproducible
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = attach_ema("model", model, decay=0.9)
    cfg = LoopConfig(max_steps=max_steps, checkpoint_every=checkpoint_every, log_every=1, seed=3,
                     stop_after_steps=stop_after)

    def loader_for(start):
        sampler = StepBatchSampler(len(X), 8, seed=cfg.seed, start_step=start, max_steps=cfg.max_steps)
        return ((X[idx], Y[idx]) for idx in sampler)

    def step(batch, ctx):
        x, y = batch
        noise = torch.randn(x.shape, generator=ctx.generator) * 0.01  # uses the loop's RNG stream
        loss = ((model(x + noise) - y) ** 2).mean()
        clip_and_step(loss, model, opt, 1.0)
        return {"loss": loss.item()}

    result = run_training(cfg, modules={"model": model}, optimizers={"model": opt}, loader_for=loader_for,
                          train_step=step, state_dir=state_dir, emas={"model": ema})
    return model, ema, result


def test_sampler_is_a_function_of_step():
    a = StepBatchSampler(10, 4, seed=1, start_step=0, max_steps=6)
    b = StepBatchSampler(10, 4, seed=1, start_step=3, max_steps=6)
    assert list(a)[3:] == list(b)
    flat = [i for batch in list(a)[:5] for i in batch]
    assert sorted(flat[:10]) == list(range(10))  # each epoch is a permutation


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    straight, straight_ema, _ = _run(tmp_path / "a", max_steps=10)
    try:
        _run(tmp_path / "b", max_steps=10, stop_after=7)  # killed after step 7; last checkpoint at step 6
        raise AssertionError("should have been interrupted")
    except Interrupted:
        pass
    assert latest_checkpoint(tmp_path / "b").name == "ckpt-00000006.pt"
    resumed, resumed_ema, result = _run(tmp_path / "b", max_steps=10)
    assert result.resumed_from == 6
    for p, q in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    for p, q in zip(straight_ema.shadow_params, resumed_ema.shadow_params, strict=True):
        assert torch.equal(p, q)


def test_old_checkpoints_are_pruned(tmp_path):
    _run(tmp_path, max_steps=10, checkpoint_every=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt-00000008.pt", "ckpt-00000010.pt"]


def test_finished_run_does_nothing_on_rerun(tmp_path):
    first, _, _ = _run(tmp_path, max_steps=4)
    again, _, result = _run(tmp_path, max_steps=4)
    assert result.resumed_from == 4 and result.history == []
    for p, q in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q)


def test_best_on_validation_keeps_the_best_weights_and_survives_in_extra_state():
    from cxrgen.train.loop import BestOnValidation

    model = torch.nn.Linear(2, 1)
    extra: dict = {}
    seen = []
    tracker = BestOnValidation(model, extra, on_eval=lambda metrics, step: seen.append(step))
    assert BestOnValidation.due(50, 50, 120) and BestOnValidation.due(120, 50, 120)
    assert not BestOnValidation.due(60, 50, 120) and not BestOnValidation.due(60, 0, 120)
    with torch.no_grad():
        model.weight.fill_(1.0)
    tracker.record(50, {"val/auc": 0.7}, 0.7)
    with torch.no_grad():
        model.weight.fill_(2.0)
    tracker.record(100, {"val/auc": float("nan")}, float("nan"))  # a NaN score never wins
    tracker.record(120, {"val/auc": 0.6}, 0.6)
    tracker.log_hook({"loss": 0.5}, 10)
    assert seen == [50, 100, 120] and [e["step"] for e in extra["evals"]] == [50, 100, 120]
    # a resumed trainer gets the same dict back: the record continues
    resumed = BestOnValidation(model, extra)
    assert resumed.history == [{"step": 10, "loss": 0.5}]
    assert resumed.restore_best(120) == 50
    assert torch.all(model.weight == 1.0)
    assert BestOnValidation(model, None).restore_best(7) == 7  # nothing validated: the last weights stay
