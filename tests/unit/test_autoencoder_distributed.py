"""The KL autoencoder trained data parallel (rule train_autoencoder on several GPUs): 2 gloo ranks on CPU started by
the launcher end with the weights of one process with the same global batch, through the adversarial phase too (the
posterior samples drawn for the global batch, the discriminator's batch norm over the global batch, the adaptive GAN
weight from the global batch's gradients, both optimizers' gradients summed over the ranks); a killed and resumed
2-rank run equals the uninterrupted one bit for bit, and rank 0 alone writes the output and the MLflow run."""

import json

import pytest
import torch
from distributed_helpers import (
    assert_close_weights,
    assert_identical_weights,
    assert_killed_and_resumed,
    assert_rank0_published,
    latest_state,
    train_kill_and_resume_on_two_ranks,
)
from test_autoencoder import RES, tiny_cfg, tiny_store

from cxrgen.models.autoencoder import FeaturePerceptualLoss, load_autoencoder
from cxrgen.stages.train_autoencoder import HISTORY_FILE, train_autoencoder

# Measured after 4 Adam steps on CPU, 2 of them adversarial (2 ranks vs 1 process: the same draws, sums in another
# order): losses and gradient norms agree to <1e-6 relative, the adaptive GAN weight (a ratio of two gradient norms)
# to 1.3e-6 at step 4 since the discriminator's global batch norm is cxrgen.train.collectives.GlobalBatchNorm2d;
# weights: largest difference 1.2e-6 (VAE) and
# 6.3e-6 (discriminator), median 2e-9. A wrong draw, batch statistics of half batches or a missing gradient sum moves
# most weights by ~lr = 1e-3 per step.
ATOL, MEDIAN_ATOL = 5e-5, 1e-7
# 4 images per step (2 per rank); the GAN is active from step 2 on (tiny_cfg), so steps 3 and 4 are adversarial.
# norm_num_groups 4 (2 channels per group): with one channel per group a conv bias feeding a GroupNorm is cancelled
# by it, its gradient is pure rounding noise, and Adam turns that noise into ±lr steps (measured: 3.6e-3 in 48 of
# 164k elements, which do not change the model's outputs)
CFG = tiny_cfg(max_steps=4, checkpoint_every=2, log_every=1, batch_size=4, norm_num_groups=4)
COMPARED = ("loss", "l1", "kl", "grad_norm", "gan_loss", "gan_weight", "disc_loss", "disc_grad_norm")
STEP_RTOL = 5e-6


def _history(state_dir):
    return [json.loads(line) for line in (state_dir / HISTORY_FILE).read_text().splitlines()]


def _modules(state_dir):
    return latest_state(state_dir)["modules"]


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
    """Uninterrupted, and killed after 3 steps (during the adversarial phase) and resumed, in one launch."""
    return train_kill_and_resume_on_two_ranks(train_autoencoder, inputs, tmp_path_factory, "train_autoencoder:ddp")


def test_two_ranks_train_the_single_process_weights(inputs, two_ranks):
    kwargs, root = inputs
    found, _, tracking = two_ranks
    metrics, two = found["straight"], root / "two"
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
                assert p[key] == pytest.approx(q[key], rel=STEP_RTOL), (q["step"], key)
    parallel_modules, single_modules = _modules(root / "two_state"), _modules(root / "one_state")
    for name, parallel, alone in [("vae", load_autoencoder(two).state_dict(),
                                   load_autoencoder(root / "one").state_dict()),
                                  ("discriminator", parallel_modules["discriminator"],
                                   single_modules["discriminator"])]:
        floats = [k for k in alone if alone[k].is_floating_point()]
        assert_close_weights(name, parallel, alone, ATOL, MEDIAN_ATOL, keys=floats)
    assert metrics["scaling_factor"] == pytest.approx(single["scaling_factor"], rel=1e-4)
    # rank 0 alone opened the run, finished it and wrote the output
    assert_rank0_published(tracking, "train_autoencoder:ddp", metrics, two)


def test_killed_and_resumed_two_ranks_equal_the_uninterrupted_run(two_ranks):
    found, root, tracking = two_ranks
    assert_killed_and_resumed(found, root, tracking, "train_autoencoder:ddp-resumed")
    assert_identical_weights(load_autoencoder(root / "resumed").state_dict(),
                             load_autoencoder(root / "two").state_dict())
    assert_identical_weights(_modules(root / "resumed_state")["discriminator"],
                             _modules(root / "two_state")["discriminator"])
