"""The super-resolution model trained data parallel (rules train_sr and finetune_sr on several GPUs): 2 gloo ranks on
CPU started by the launcher end with the weights of one process with the same global batch (random crops, timesteps
and noise drawn for the global batch), a killed and resumed 2-rank run equals the uninterrupted one bit for bit, and
rank 0 alone writes the output and the MLflow run."""

from pathlib import Path

import pytest
from distributed_helpers import (
    assert_close_weights,
    assert_identical_weights,
    assert_killed_and_resumed,
    assert_rank0_published,
    assert_same_steps,
    latest_state,
    train_kill_and_resume_in_ranks,
)
from test_sr import HIGH, LOW, make_autoencoder, make_store, tiny_cfg

from cxrgen.models.sr import load_sr
from cxrgen.stages.train_sr import train_sr
from cxrgen.train.distributed import launch

# Measured after 4 Adam steps on CPU (2 ranks vs 1 process: the same draws, gradients summed in another order):
# losses and gradient norms agree to <1e-6 relative; weights (raw and EMA): largest difference 5.5e-7 (train_sr) and
# 2.8e-7 (finetune_sr), median 0. A wrong draw or a missing gradient sum moves most weights by ~lr = 5e-5 per step
# (Adam's step size).
ATOL, MEDIAN_ATOL = 5e-6, 1e-8
# 4 images per step (2 per rank) of 6; patch training covers the crop draw; EMA on to check the averaged weights
CFG = tiny_cfg(batch_size=4, base={"max_steps": 4}, finetune={"max_steps": 4}, train_crop=48, ema_decay=0.5,
               loop={"checkpoint_every": 2, "log_every": 1})


def finetune_kwargs(kwargs: dict, root) -> dict:
    """Rule finetune_sr's arguments: low-resolution inputs through the autoencoder, weights from the base model."""
    return {**kwargs, "cfg": {**CFG, "lr_source": "store"}, "mode": "decoded", "ae_dir": str(Path(root) / "autoencoder"),
            "init_dir": str(Path(root) / "two"), "tracking_json": None, "job_name": "finetune_sr"}


def on_two_ranks(kwargs: dict, root: str, tracking: str) -> dict:
    """Every 2-rank run of this file, in one launch (starting the ranks costs seconds of imports on shared cores):
    uninterrupted, killed after 3 steps (checkpoint at 2) and resumed, and rule finetune_sr from the first."""
    root = Path(root)
    found = train_kill_and_resume_in_ranks(train_sr, kwargs, root, tracking, "train_sr:ddp")
    found["fine"] = train_sr(**finetune_kwargs(kwargs, root), out_dir=str(root / "fine_two"),
                             state_dir=str(root / "fine_two_state"))
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from test_ldm import shared_tracking_json

    root = tmp_path_factory.mktemp("sr_ddp")
    store = make_store(root / "store")
    make_autoencoder(root / "autoencoder")
    tracking = str(shared_tracking_json(tmp_path_factory))
    # plain str paths, as the adapter passes them: the ranks unpickle their arguments
    kwargs = {"index_path": str(store / "index.parquet"), "store_root": str(store), "low_res": LOW, "high_res": HIGH,
              "cfg": CFG, "seed": 7}
    return kwargs, root, tracking, launch(on_two_ranks, 2, kwargs, str(root), tracking)


def _assert_same_training(root, parallel_state, single_state, parallel_dir, single_dir):
    parallel_ckpt, single_ckpt = latest_state(root / parallel_state), latest_state(root / single_state)
    # the logged loss: the mean over the ranks
    assert_same_steps(parallel_ckpt["extra"]["history"], single_ckpt["extra"]["history"], [1, 2, 3, 4], loss=1e-6,
                      grad_norm=1e-6)
    assert_close_weights(f"{parallel_dir} raw", parallel_ckpt["modules"]["unet"], single_ckpt["modules"]["unet"],
                         ATOL, MEDIAN_ATOL)
    assert_close_weights(f"{parallel_dir} EMA", load_sr(root / parallel_dir).unet.state_dict(),
                         load_sr(root / single_dir).unet.state_dict(), ATOL, MEDIAN_ATOL)


def test_two_ranks_train_the_single_process_weights(runs):
    kwargs, root, tracking, found = runs
    metrics = found["straight"]
    single = train_sr(**kwargs, out_dir=root / "one", state_dir=root / "one_state", tracking_json=None,
                      job_name="train_sr")
    assert metrics["world_size"] == 2 and single["world_size"] == 1 and metrics["steps"] == single["steps"] == 4
    _assert_same_training(root, "two_state", "one_state", "two", "one")
    # rank 0 alone opened the run, finished it and wrote the output
    assert_rank0_published(tracking, "train_sr:ddp", metrics, root / "two")


def test_finetune_on_decoded_images_two_ranks_equal_one_process(runs):
    """Rule finetune_sr: low-resolution inputs through the autoencoder, weights from the base model."""
    kwargs, root, _, found = runs
    parallel = found["fine"]
    single = train_sr(**finetune_kwargs(kwargs, root), out_dir=str(root / "fine_one"),
                      state_dir=str(root / "fine_one_state"))
    assert parallel["mode"] == single["mode"] == "decoded" and parallel["world_size"] == 2
    _assert_same_training(root, "fine_two_state", "fine_one_state", "fine_two", "fine_one")


def test_killed_and_resumed_two_ranks_equal_the_uninterrupted_run(runs):
    _, root, tracking, found = runs
    # train_sr's metrics do not report the step it resumed from: the killed job's checkpoint 2 is checked
    assert_killed_and_resumed(found, root, tracking, "train_sr:ddp-resumed", reports_resumed_from=False)
    assert_identical_weights(load_sr(root / "resumed").unet.state_dict(), load_sr(root / "two").unet.state_dict())
    assert_identical_weights(latest_state(root / "resumed_state")["modules"]["unet"],
                             latest_state(root / "two_state")["modules"]["unet"])
