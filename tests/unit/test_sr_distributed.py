"""The super-resolution model trained data parallel (rules train_sr and finetune_sr on several GPUs): 2 gloo ranks on
CPU started by the launcher end with the weights of one process with the same global batch (random crops, timesteps
and noise drawn for the global batch), a killed and resumed 2-rank run equals the uninterrupted one bit for bit, and
rank 0 alone writes the output and the MLflow run."""

import json

import pytest
import torch
from test_ldm import shared_tracking_json
from test_sr import HIGH, LOW, make_autoencoder, make_store, tiny_cfg

from cxrgen.models.sr import load_sr
from cxrgen.stages.train_sr import train_sr
from cxrgen.train.distributed import launch
from cxrgen.train.loop import Interrupted, latest_checkpoint

# Measured after 4 Adam steps on CPU (2 ranks vs 1 process: the same draws, gradients summed in another order):
# losses and gradient norms agree to <1e-6 relative; weights (raw and EMA): largest difference 5.5e-7 (train_sr) and
# 2.8e-7 (finetune_sr), median 0. A wrong draw or a missing gradient sum moves most weights by ~lr = 5e-5 per step
# (Adam's step size).
ATOL, MEDIAN_ATOL = 5e-6, 1e-8
# 4 images per step (2 per rank) of 6; patch training covers the crop draw; EMA on to check the averaged weights
CFG = tiny_cfg(batch_size=4, base={"max_steps": 4}, finetune={"max_steps": 4}, train_crop=48, ema_decay=0.5,
               loop={"checkpoint_every": 2, "log_every": 1})


def _runs(tracking_json, job_name):
    from mlflow.tracking import MlflowClient

    info = json.loads(tracking_json.read_text())
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    return client.search_runs([info["experiment_id"]], filter_string=f"tags.`snakemake.job` = '{job_name}'")


def _checkpoint(state_dir):
    return torch.load(latest_checkpoint(state_dir), weights_only=False)


def _compare(name, parallel, alone):
    differences = torch.cat([(parallel[k] - alone[k]).abs().flatten() for k in alone])
    print(f"{name}: 2 ranks vs 1 process: largest difference {differences.max():.2e}, "
          f"median {differences.median():.2e}")
    assert differences.max() <= ATOL and differences.median() <= MEDIAN_ATOL, name


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sr_ddp")
    store = make_store(root / "store")
    # plain str paths, as the adapter passes them: the ranks unpickle their arguments
    return {"index_path": str(store / "index.parquet"), "store_root": str(store), "low_res": LOW, "high_res": HIGH,
            "cfg": CFG, "seed": 7}, root


@pytest.fixture(scope="module")
def two_ranks(inputs, tmp_path_factory):
    kwargs, root = inputs
    tracking = shared_tracking_json(tmp_path_factory)
    metrics = launch(train_sr, 2, **kwargs, out_dir=str(root / "two"), state_dir=str(root / "two_state"),
                     tracking_json=str(tracking), job_name="train_sr:ddp")
    return metrics, root / "two", tracking


def _assert_same_training(root, parallel_state, single_state, parallel_dir, single_dir):
    parallel_ckpt, single_ckpt = _checkpoint(root / parallel_state), _checkpoint(root / single_state)
    parallel_log, single_log = parallel_ckpt["extra"]["history"], single_ckpt["extra"]["history"]
    assert [h["step"] for h in parallel_log] == [h["step"] for h in single_log] == [1, 2, 3, 4]
    for p, q in zip(parallel_log, single_log, strict=True):  # the logged loss: the mean over the ranks
        assert p["loss"] == pytest.approx(q["loss"], rel=1e-6)
        assert p["grad_norm"] == pytest.approx(q["grad_norm"], rel=1e-6)
    _compare(f"{parallel_dir} raw", parallel_ckpt["modules"]["unet"], single_ckpt["modules"]["unet"])
    _compare(f"{parallel_dir} EMA", load_sr(root / parallel_dir).unet.state_dict(),
             load_sr(root / single_dir).unet.state_dict())


def test_two_ranks_train_the_single_process_weights(inputs, two_ranks):
    kwargs, root = inputs
    metrics, two, tracking = two_ranks
    single = train_sr(**kwargs, out_dir=root / "one", state_dir=root / "one_state", tracking_json=None,
                      job_name="train_sr")
    assert metrics["world_size"] == 2 and single["world_size"] == 1 and metrics["steps"] == single["steps"] == 4
    _assert_same_training(root, "two_state", "one_state", "two", "one")
    # rank 0 alone opened the run, finished it and wrote the output
    runs = _runs(tracking, "train_sr:ddp")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].info.run_id == metrics["mlflow_run_id"]
    assert runs[0].data.tags["cxrgen.world_size"] == "2"
    assert json.loads((two / "metrics.json").read_text())["world_size"] == 2
    assert not (root / "two.tmp").exists()


def test_finetune_on_decoded_images_two_ranks_equal_one_process(inputs, two_ranks):
    """Rule finetune_sr: low-resolution inputs through the autoencoder, weights from the base model."""
    kwargs, root = inputs
    _, base, _ = two_ranks
    ae_dir = make_autoencoder(root / "autoencoder")
    fine = {**kwargs, "cfg": {**CFG, "lr_source": "store"}, "mode": "decoded", "ae_dir": str(ae_dir),
            "init_dir": str(base), "tracking_json": None, "job_name": "finetune_sr"}
    parallel = launch(train_sr, 2, **fine, out_dir=str(root / "fine_two"), state_dir=str(root / "fine_two_state"))
    single = train_sr(**fine, out_dir=str(root / "fine_one"), state_dir=str(root / "fine_one_state"))
    assert parallel["mode"] == single["mode"] == "decoded" and parallel["world_size"] == 2
    _assert_same_training(root, "fine_two_state", "fine_one_state", "fine_two", "fine_one")


def test_killed_and_resumed_two_ranks_equal_the_uninterrupted_run(inputs, two_ranks, tmp_path_factory):
    kwargs, root = inputs
    _, straight, _ = two_ranks
    tracking = shared_tracking_json(tmp_path_factory)
    run = {**kwargs, "out_dir": str(root / "resumed"), "state_dir": str(root / "resumed_state"),
           "tracking_json": str(tracking), "job_name": "train_sr:ddp-resumed"}
    with pytest.raises(Interrupted):  # raised on both ranks, re-raised by the launcher
        launch(train_sr, 2, **run, stop_after_steps=3)
    assert latest_checkpoint(root / "resumed_state").name == "ckpt-00000002.pt"
    assert not (root / "resumed").exists()
    [killed] = _runs(tracking, "train_sr:ddp-resumed")
    assert killed.info.status == "KILLED"  # rank 0 recorded it before the launcher stopped
    metrics = launch(train_sr, 2, **run)
    assert metrics["steps"] == 4
    resumed, uninterrupted = load_sr(root / "resumed").unet.state_dict(), load_sr(straight).unet.state_dict()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    resumed_raw = _checkpoint(root / "resumed_state")["modules"]["unet"]
    straight_raw = _checkpoint(root / "two_state")["modules"]["unet"]
    assert all(torch.equal(resumed_raw[k], straight_raw[k]) for k in straight_raw)
    [run_after] = _runs(tracking, "train_sr:ddp-resumed")  # the resumed job continued the same run
    assert run_after.info.run_id == killed.info.run_id and run_after.info.status == "FINISHED"
