"""The KL autoencoder trained data parallel (rule train_autoencoder on several GPUs): 2 gloo ranks on CPU started by
the launcher end with the weights of one process with the same global batch, through the adversarial phase too (the
posterior samples drawn for the global batch, the discriminator's batch norm over the global batch, the adaptive GAN
weight from the global batch's gradients, both optimizers' gradients summed over the ranks); a killed and resumed
2-rank run equals the uninterrupted one bit for bit, and rank 0 alone writes the output and the MLflow run."""

import json

import pytest
import torch
from test_autoencoder import RES, tiny_cfg, tiny_store
from test_ldm import shared_tracking_json

from cxrgen.models.autoencoder import FeaturePerceptualLoss, load_autoencoder
from cxrgen.stages.train_autoencoder import HISTORY_FILE, train_autoencoder
from cxrgen.train.distributed import launch
from cxrgen.train.loop import Interrupted, latest_checkpoint

# Measured after 4 Adam steps on CPU, 2 of them adversarial (2 ranks vs 1 process: the same draws, sums in another
# order): losses, GAN weights and gradient norms agree to <1e-6 relative; weights: largest difference 1.2e-6 (VAE) and
# 6.3e-6 (discriminator), median 2e-9. A wrong draw, batch statistics of half batches or a missing gradient sum moves
# most weights by ~lr = 1e-3 per step.
ATOL, MEDIAN_ATOL = 5e-5, 1e-7
# 4 images per step (2 per rank); the GAN is active from step 2 on (tiny_cfg), so steps 3 and 4 are adversarial.
# norm_num_groups 4 (2 channels per group): with one channel per group a conv bias feeding a GroupNorm is cancelled
# by it, its gradient is pure rounding noise, and Adam turns that noise into ±lr steps (measured: 3.6e-3 in 48 of
# 164k elements, which do not change the model's outputs)
CFG = tiny_cfg(max_steps=4, checkpoint_every=2, log_every=1, batch_size=4, norm_num_groups=4)
COMPARED = ("loss", "l1", "kl", "grad_norm", "gan_loss", "gan_weight", "disc_loss", "disc_grad_norm")


def _runs(tracking_json, job_name):
    from mlflow.tracking import MlflowClient

    info = json.loads(tracking_json.read_text())
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    return client.search_runs([info["experiment_id"]], filter_string=f"tags.`snakemake.job` = '{job_name}'")


def _history(state_dir):
    return [json.loads(line) for line in (state_dir / HISTORY_FILE).read_text().splitlines()]


def _modules(state_dir):
    return torch.load(latest_checkpoint(state_dir), weights_only=False)["modules"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ae_ddp")
    (root / "store").mkdir()
    tiny_store(root / "store")
    torch.manual_seed(1)  # a frozen perceptual network, pickled once for every rank
    perceptual = FeaturePerceptualLoss(torch.nn.Conv2d(1, 4, 3))
    # plain str paths, as the adapter passes them: the ranks unpickle their arguments
    return {"index_path": str(root / "store/index.parquet"), "store_root": str(root / "store"), "resolution": RES,
            "cfg": CFG, "seed": 5, "perceptual_net": perceptual}, root


@pytest.fixture(scope="module")
def two_ranks(inputs, tmp_path_factory):
    kwargs, root = inputs
    tracking = shared_tracking_json(tmp_path_factory)
    metrics = launch(train_autoencoder, 2, **kwargs, out_dir=str(root / "two"), state_dir=str(root / "two_state"),
                     tracking_json=str(tracking), job_name="train_autoencoder:ddp")
    return metrics, root / "two", tracking


def test_two_ranks_train_the_single_process_weights(inputs, two_ranks):
    kwargs, root = inputs
    metrics, two, tracking = two_ranks
    single = train_autoencoder(**kwargs, out_dir=root / "one", state_dir=root / "one_state", tracking_json=None,
                               job_name="train_autoencoder")
    assert metrics["world_size"] == 2 and single["world_size"] == 1 and metrics["steps"] == single["steps"] == 4
    parallel_log, single_log = _history(root / "two_state"), _history(root / "one_state")
    assert [h["step"] for h in parallel_log] == [h["step"] for h in single_log] == [1, 2, 3, 4]
    assert "disc_loss" not in single_log[1] and "disc_loss" in single_log[2]  # steps 3 and 4 are adversarial
    for p, q in zip(parallel_log, single_log, strict=True):  # the logged values: means over the ranks
        assert p.keys() == q.keys()
        for key in COMPARED:
            if key in q:
                assert p[key] == pytest.approx(q[key], rel=1e-6), (q["step"], key)
    parallel_modules, single_modules = _modules(root / "two_state"), _modules(root / "one_state")
    for name, parallel, alone in [("vae", load_autoencoder(two).state_dict(),
                                   load_autoencoder(root / "one").state_dict()),
                                  ("discriminator", parallel_modules["discriminator"],
                                   single_modules["discriminator"])]:
        floats = [k for k in alone if alone[k].is_floating_point()]
        differences = torch.cat([(parallel[k] - alone[k]).abs().flatten() for k in floats])
        print(f"{name}: 2 ranks vs 1 process: largest difference {differences.max():.2e}, "
              f"median {differences.median():.2e}")
        assert differences.max() <= ATOL and differences.median() <= MEDIAN_ATOL, name
    assert metrics["scaling_factor"] == pytest.approx(single["scaling_factor"], rel=1e-4)
    # rank 0 alone opened the run, finished it and wrote the output
    runs = _runs(tracking, "train_autoencoder:ddp")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].info.run_id == metrics["mlflow_run_id"]
    assert runs[0].data.tags["cxrgen.world_size"] == "2"
    assert json.loads((two / "metrics.json").read_text())["world_size"] == 2
    assert not (root / "two.tmp").exists()


def test_killed_and_resumed_two_ranks_equal_the_uninterrupted_run(inputs, two_ranks, tmp_path_factory):
    kwargs, root = inputs
    _, straight, _ = two_ranks
    tracking = shared_tracking_json(tmp_path_factory)
    run = {**kwargs, "out_dir": str(root / "resumed"), "state_dir": str(root / "resumed_state"),
           "tracking_json": str(tracking), "job_name": "train_autoencoder:ddp-resumed"}
    with pytest.raises(Interrupted):  # raised on both ranks during the adversarial phase, re-raised by the launcher
        launch(train_autoencoder, 2, **run, stop_after_steps=3)
    assert latest_checkpoint(root / "resumed_state").name == "ckpt-00000002.pt"
    assert not (root / "resumed").exists()
    [killed] = _runs(tracking, "train_autoencoder:ddp-resumed")
    assert killed.info.status == "KILLED"  # rank 0 recorded it before the launcher stopped
    metrics = launch(train_autoencoder, 2, **run)
    assert metrics["resumed_from"] == 2 and metrics["steps"] == 4
    resumed, uninterrupted = load_autoencoder(root / "resumed").state_dict(), load_autoencoder(straight).state_dict()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    resumed_disc = _modules(root / "resumed_state")["discriminator"]
    straight_disc = _modules(root / "two_state")["discriminator"]
    assert all(torch.equal(resumed_disc[k], straight_disc[k]) for k in straight_disc)
    [run_after] = _runs(tracking, "train_autoencoder:ddp-resumed")  # the resumed job continued the same run
    assert run_after.info.run_id == killed.info.run_id and run_after.info.status == "FINISHED"
