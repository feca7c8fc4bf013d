"""The report-conditioned LDM trained data parallel (rule train_ldm on several GPUs): 2 gloo ranks on CPU started by
the launcher end with the weights of one process with the same global batch, a killed and resumed 2-rank run equals
the uninterrupted one bit for bit, and rank 0 alone writes the output and the MLflow run."""

import pytest
from distributed_helpers import (
    assert_close_weights,
    assert_identical_weights,
    assert_killed_and_resumed,
    assert_rank0_published,
    assert_same_steps,
    checkpoint_history,
    train_kill_and_resume_on_two_ranks,
)
from safetensors.torch import load_file
from test_ldm import ldm_cfg, make_clip, make_latent_cache

from cxrgen.stages.train_ldm import train_ldm

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


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm_ddp")
    latents, ae_dir, _ = make_latent_cache(root)
    # plain str paths, as the adapter passes them: the ranks unpickle their arguments
    return {"latents_dir": str(latents), "ae_dir": str(ae_dir), "clip_dir": str(make_clip(root / "clip")),
            "cfg": ldm_cfg(**CFG), "seed": 0}, root


@pytest.fixture(scope="module")
def two_ranks(inputs, tmp_path_factory):
    """Uninterrupted, and killed after 3 steps and resumed, in one launch."""
    return train_kill_and_resume_on_two_ranks(train_ldm, inputs, tmp_path_factory, "train_ldm:ddp")


def test_two_ranks_train_the_single_process_weights(inputs, two_ranks):
    kwargs, root = inputs
    found, _, tracking = two_ranks
    metrics, two = found["straight"], root / "two"
    single = train_ldm(**kwargs, out_dir=root / "one", state_dir=root / "one_state")
    assert metrics["world_size"] == 2 and single["world_size"] == 1 and metrics["steps"] == single["steps"] == 4
    # the logged loss is the mean over the ranks: the global batch's loss, step by step
    assert_same_steps(checkpoint_history(root / "two_state"), checkpoint_history(root / "one_state"), [1, 2, 3, 4],
                      loss=1e-6, grad_norm=1e-5)
    for name in ("unet", "unet_raw"):  # unet: the EMA weights
        assert_close_weights(name, _weights(two, name), _weights(root / "one", name), ATOL, MEDIAN_ATOL)
    # rank 0 alone opened the run, finished it and wrote the output
    assert_rank0_published(tracking, "train_ldm:ddp", metrics, two)


def test_killed_and_resumed_two_ranks_equal_the_uninterrupted_run(two_ranks):
    found, root, tracking = two_ranks
    assert_killed_and_resumed(found, root, tracking, "train_ldm:ddp-resumed")
    for name in ("unet", "unet_raw"):
        assert_identical_weights(_weights(root / "resumed", name), _weights(root / "two", name), name)
