"""Data-parallel training with the shared loop: 2 gloo processes on CPU train the same weights as one process with
the same global batch, and a killed + resumed 2-process run equals the uninterrupted one bit for bit."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from cxrgen.train.distributed import launch
from cxrgen.train.loop import (
    Interrupted,
    LoopConfig,
    StepBatchSampler,
    attach_ema,
    latest_checkpoint,
    run_training,
    seed_everything,
)

GLOBAL_BATCH = 8
# 2 ranks average two half-batch gradients where 1 process takes one mean over the batch: the same numbers summed in
# another order, so fp32 rounding differs. Measured after 10 AdamW steps: 6e-8 (weights ~0.1, updates ~1e-2)
ATOL = 1e-6


def train_tiny(state_dir, max_steps=10, stop_after=None, fail_on_rank=None, with_ema=True, device="cpu", **loop):
    """A trainer written for several ranks: noise is drawn for the global batch, each rank keeps its rows."""
    X = torch.randn(37, 5, generator=torch.Generator().manual_seed(0))
    Y = X @ torch.randn(5, 1, generator=torch.Generator().manual_seed(1))
    seed_everything(3)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = attach_ema("model", model, decay=0.9) if with_ema else None  # (diffusers' import costs seconds)
    cfg = LoopConfig(max_steps=max_steps, checkpoint_every=3, log_every=1, seed=3, device=device,
                     stop_after_steps=stop_after, **loop)

    def loader_for(start):
        return ((X[idx], Y[idx]) for idx in StepBatchSampler(len(X), GLOBAL_BATCH, cfg.seed, start, cfg.max_steps))

    def step(batch, ctx):
        if ctx.rank == fail_on_rank:
            raise ValueError(f"rank {ctx.rank} fails on purpose")
        x, y = batch
        noise = ctx.local(torch.randn((len(x) * ctx.world_size, 5), generator=ctx.generator)) * 0.01
        with ctx.autocast():
            out = model((x + noise).to(ctx.device))
        loss = ((out.float() - y.to(ctx.device)) ** 2).mean()
        return {"loss": loss.item(), "grad_norm": ctx.backward_step(loss, model, opt)}

    result = run_training(cfg, modules={"model": model}, optimizers={"model": opt}, loader_for=loader_for,
                          train_step=step, state_dir=state_dir, emas={"model": ema} if ema else None,
                          distributed_ready=True)
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    every_rank = [weights]
    if dist.is_initialized():
        every_rank = [None] * dist.get_world_size()
        dist.all_gather_object(every_rank, weights)
    return {"weights": weights, "ranks_agree": all(torch.equal(w[k], weights[k]) for w in every_rank for k in w),
            "ema": [p.detach().cpu().clone() for p in ema.shadow_params] if ema else None, "history": result.history,
            "resumed_from": result.resumed_from}


FP16 = {"mixed_precision": "fp16", "grad_scale_init": 2.0**24, "grad_scale_growth_interval": 2}


def with_ema_and_in_fp16(root: Path) -> tuple[dict, dict]:
    """The uninterrupted 2-rank trainings of this file in one launch (starting the ranks costs seconds of imports on
    shared cores): with EMA into ``root/ema``, and in fp16 without EMA into ``root/fp16``."""
    return train_tiny(root / "ema"), train_tiny(root / "fp16", with_ema=False, **FP16)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_ranks")
    return launch(with_ema_and_in_fp16, 2, root), root


@pytest.fixture(scope="module")
def two_ranks(launched):
    (with_ema, _), root = launched
    return with_ema, root / "ema"


def test_two_ranks_train_the_single_process_weights(two_ranks, tmp_path):
    (parallel, state_dir), single = two_ranks, train_tiny(tmp_path)
    assert parallel["ranks_agree"]
    for name, p in single["weights"].items():
        assert torch.allclose(parallel["weights"][name], p, rtol=0, atol=ATOL), name
    for p, q in zip(parallel["ema"], single["ema"], strict=True):
        assert torch.allclose(p, q, rtol=0, atol=ATOL)
    # logged metrics are the mean over ranks: the global batch's loss
    losses = torch.tensor([[h["loss"] for h in run["history"]] for run in (parallel, single)])
    assert torch.allclose(losses[0], losses[1], rtol=1e-4)
    payload = torch.load(latest_checkpoint(state_dir), weights_only=False)
    assert payload["world_size"] == 2 and len(payload["rank_rngs"]) == 2
    assert not torch.equal(payload["rank_rngs"][0][0], payload["rank_rngs"][1][0])  # own dropout stream per rank


def test_two_fp16_ranks_skip_overflowing_steps_together(launched):
    """GradScaler with summed gradients: an overflow on any rank reaches every rank, so all skip that step and the
    ranks stay identical (the scalers' checkpointing is the single-process code: test_train_precision)."""
    (_, run), root = launched
    skipped = [not math.isfinite(h["grad_norm"]) for h in run["history"]]
    assert run["ranks_agree"] and any(skipped) and not all(skipped)
    assert torch.load(latest_checkpoint(root / "fp16"), weights_only=False)["scalers"]["model"]["scale"] < 2.0**24


def test_killed_and_resumed_two_ranks_equal_the_uninterrupted_run(two_ranks, tmp_path):
    straight, _ = two_ranks
    with pytest.raises(Interrupted):  # raised on the ranks, re-raised by the launcher
        launch(train_tiny, 2, tmp_path, stop_after=7)
    assert latest_checkpoint(tmp_path).name == "ckpt-00000006.pt"
    resumed = launch(train_tiny, 2, tmp_path)
    assert resumed["resumed_from"] == 6
    for name, p in straight["weights"].items():
        assert torch.equal(resumed["weights"][name], p), name
    for p, q in zip(straight["ema"], resumed["ema"], strict=True):
        assert torch.equal(p, q)


def test_an_error_on_one_rank_stops_all_and_reaches_the_caller(tmp_path):
    with pytest.raises(ValueError, match="rank 1 fails on purpose") as raised:
        launch(train_tiny, 2, tmp_path, fail_on_rank=1, with_ema=False)
    assert any("raised on rank 1 of 2" in note for note in raised.value.__notes__)
    assert latest_checkpoint(tmp_path) is None


def test_ranks_split_each_global_batch_as_a_function_of_seed_step_and_rank():
    single = StepBatchSampler(10, 4, seed=1, start_step=0, max_steps=6, rank=0, world_size=1)
    shards = [StepBatchSampler(10, 4, seed=1, start_step=2, max_steps=6, rank=r, world_size=2) for r in (0, 1)]
    for step, (a, b) in enumerate(zip(*shards, strict=True), start=2):
        assert a + b == single.indices_for_step(step)
    with pytest.raises(ValueError, match="not divisible"):
        StepBatchSampler(10, 5, seed=1, start_step=0, max_steps=6, rank=0, world_size=2)


def test_several_ranks_need_a_trainer_declared_ready(tmp_path):
    cfg = LoopConfig(max_steps=1, device="cpu", world_size=2, rank=0)
    with pytest.raises(ValueError, match="distributed_ready"):
        run_training(cfg, modules={}, optimizers={}, loader_for=lambda s: iter([]), train_step=lambda b, c: {},
                     state_dir=tmp_path)


def test_one_rank_is_a_plain_call(tmp_path):
    assert launch(train_tiny, 1, tmp_path, max_steps=2)["history"][-1]["step"] == 2


def wait_forever(pid_dir):
    rank = int(os.environ["RANK"])
    (Path(pid_dir) / f"{rank}.threads").write_text(str(torch.get_num_threads()))
    (Path(pid_dir) / f"{rank}.pid").write_text(str(os.getpid()))
    time.sleep(600)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # an unreaped zombie has stopped running


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_ranks_die_with_a_killed_launcher_and_share_the_cpus(tmp_path):
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            "from test_train_distributed import wait_forever; from cxrgen.train.distributed import launch; "
            f"launch(wait_forever, 2, {str(tmp_path)!r})")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    launcher = subprocess.Popen([sys.executable, "-c", code], env={**env, "PYTHONPATH": os.pathsep.join(sys.path)})
    pids = []
    try:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("*.pid"))) < 2:
            assert time.time() < deadline and launcher.poll() is None, "ranks did not start"
            time.sleep(0.2)
        pids = [int(f.read_text()) for f in tmp_path.glob("*.pid")]
        # without OMP_NUM_THREADS, each of the 2 ranks gets half of the cores (as under torchrun)
        expected = str(max(1, (os.cpu_count() or 1) // 2))
        assert [f.read_text() for f in sorted(tmp_path.glob("*.threads"))] == [expected, expected]
        launcher.send_signal(signal.SIGKILL)  # like a job whose main process is killed: no clean-up code runs
        launcher.wait()
        deadline = time.time() + 30
        while any(_alive(pid) for pid in pids) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in pids)
    finally:
        launcher.kill()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_sampler_follows_the_loop_config_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # e.g. a single-process training inside a rank of a bigger job
    monkeypatch.setenv("RANK", "1")
    cfg = LoopConfig(max_steps=2, device="cpu", world_size=1, rank=0, local_rank=0)
    sizes = []

    def loader_for(start):
        return iter(StepBatchSampler(37, GLOBAL_BATCH, cfg.seed, start, cfg.max_steps))

    run_training(cfg, modules={}, optimizers={}, loader_for=loader_for, state_dir=tmp_path,
                 train_step=lambda batch, ctx: sizes.append(len(batch)) or {})
    assert sizes == [GLOBAL_BATCH, GLOBAL_BATCH]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_with_nccl_train_the_single_gpu_weights(tmp_path):
    parallel = launch(train_tiny, 2, tmp_path / "two", with_ema=False, device="cuda")
    single = train_tiny(tmp_path / "one", with_ema=False, device="cuda")
    assert parallel["ranks_agree"]
    for name, p in single["weights"].items():
        assert torch.allclose(parallel["weights"][name], p, rtol=0, atol=1e-5), name
