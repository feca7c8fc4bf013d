"""The report-conditioned LDM trained data parallel (rule train_ldm on several GPUs): 2 gloo ranks on CPU started by
the launcher end with the weights of one process with the same global batch, a killed and resumed 2-rank run equals
the uninterrupted one bit for bit, and rank 0 alone writes the output and the MLflow run."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_ldm import ldm_cfg, make_clip, make_latent_cache, shared_tracking_json

from cxrgen.stages.train_ldm import train_ldm
from cxrgen.train.distributed import launch
from cxrgen.train.loop import Interrupted, latest_checkpoint

# The 2 ranks run the UNet on half batches and sum their gradients: the single-process numbers in another summation
# order. The losses and gradient norms of every step agree to ~1e-7 relative (the draws are the same). Most weights
# agree to ~1e-8 (median, measured after 4 steps on CPU: 7e-9), but AdamW's m/sqrt(v) amplifies the rounding in the few
# elements whose gradient is nearly zero (a sum of cancelling per-sample terms): largest difference measured 5.6e-5.
# A wrong draw or a missing gradient sum moves most weights by ~lr = 1e-3 per step.
ATOL, MEDIAN_ATOL = 2e-4, 1e-6
# cfg_dropout 0.5: with 4 steps of 4 items some conditions are dropped, so the CFG mask's draw is checked too
CFG = {"max_steps": 4, "checkpoint_every": 2, "batch_size": 4, "cfg_dropout": 0.5, "latent_sampling": "posterior"}


def _weights(model_dir, name):
    return load_file(model_dir / name / "diffusion_pytorch_model.safetensors")


def _runs(tracking_json, job_name):
    from mlflow.tracking import MlflowClient

    info = json.loads(tracking_json.read_text())
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    return client.search_runs([info["experiment_id"]], filter_string=f"tags.`snakemake.job` = '{job_name}'")


def _history(state_dir):
    return torch.load(latest_checkpoint(state_dir), weights_only=False)["extra"]["history"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm_ddp")
    latents, ae_dir, _ = make_latent_cache(root)
    # plain str paths, as the adapter passes them: the ranks unpickle their arguments
    return {"latents_dir": str(latents), "ae_dir": str(ae_dir), "clip_dir": str(make_clip(root / "clip")),
            "cfg": ldm_cfg(**CFG), "seed": 0}, root


@pytest.fixture(scope="module")
def two_ranks(inputs, tmp_path_factory):
    kwargs, root = inputs
    tracking = shared_tracking_json(tmp_path_factory)
    metrics = launch(train_ldm, 2, **kwargs, out_dir=str(root / "two"), state_dir=str(root / "two_state"),
                     tracking_json=str(tracking), job_name="train_ldm:ddp")
    return metrics, root / "two", tracking


def test_two_ranks_train_the_single_process_weights(inputs, two_ranks):
    kwargs, root = inputs
    metrics, two, tracking = two_ranks
    single = train_ldm(**kwargs, out_dir=root / "one", state_dir=root / "one_state")
    assert metrics["world_size"] == 2 and single["world_size"] == 1 and metrics["steps"] == single["steps"] == 4
    # the logged loss is the mean over the ranks: the global batch's loss, step by step
    parallel_log, single_log = _history(root / "two_state"), _history(root / "one_state")
    assert [h["step"] for h in parallel_log] == [h["step"] for h in single_log] == [1, 2, 3, 4]
    for p, q in zip(parallel_log, single_log, strict=True):
        assert p["loss"] == pytest.approx(q["loss"], rel=1e-6) and p["grad_norm"] == pytest.approx(q["grad_norm"],
                                                                                                    rel=1e-5)
    for name in ("unet", "unet_raw"):  # unet: the EMA weights
        parallel, alone = _weights(two, name), _weights(root / "one", name)
        differences = torch.cat([(parallel[k] - alone[k]).abs().flatten() for k in alone])
        print(f"{name}: 2 ranks vs 1 process: largest difference {differences.max():.2e}, "
              f"median {differences.median():.2e}")
        assert differences.max() <= ATOL and differences.median() <= MEDIAN_ATOL, name
    # rank 0 alone opened the run, finished it and wrote the output
    runs = _runs(tracking, "train_ldm:ddp")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].info.run_id == metrics["mlflow_run_id"]
    assert runs[0].data.tags["cxrgen.world_size"] == "2"
    assert json.loads((two / "metrics.json").read_text())["world_size"] == 2
    assert not (root / "two.tmp").exists()


def test_killed_and_resumed_two_ranks_equal_the_uninterrupted_run(inputs, two_ranks, tmp_path_factory):
    kwargs, root = inputs
    _, straight, _ = two_ranks
    tracking = shared_tracking_json(tmp_path_factory)
    run = {**kwargs, "out_dir": str(root / "resumed"), "state_dir": str(root / "resumed_state"),
           "tracking_json": str(tracking), "job_name": "train_ldm:ddp-resumed"}
    with pytest.raises(Interrupted):  # raised on both ranks, re-raised by the launcher
        launch(train_ldm, 2, **run, stop_after_steps=3)
    assert latest_checkpoint(root / "resumed_state").name == "ckpt-00000002.pt"
    assert not (root / "resumed").exists()
    [killed] = _runs(tracking, "train_ldm:ddp-resumed")
    assert killed.info.status == "KILLED"  # rank 0 recorded it before the launcher stopped
    metrics = launch(train_ldm, 2, **run)
    assert metrics["resumed_from"] == 2 and metrics["steps"] == 4
    for name in ("unet", "unet_raw"):
        resumed, uninterrupted = _weights(root / "resumed", name), _weights(straight, name)
        assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted), name
    [run_after] = _runs(tracking, "train_ldm:ddp-resumed")  # the resumed job continued the same run
    assert run_after.info.run_id == killed.info.run_id and run_after.info.status == "FINISHED"
