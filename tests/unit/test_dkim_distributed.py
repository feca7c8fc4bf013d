"""The DKIM adapter trained data parallel (rule train_dkim on several GPUs): 2 gloo ranks on CPU started by the
launcher end with the adapter of one process with the same global batch, a killed and resumed 2-rank run equals the
uninterrupted one bit for bit, and rank 0 alone writes the output and the MLflow run."""

import pytest
import torch
from distributed_helpers import (
    assert_identical_weights,
    assert_killed_and_resumed,
    assert_rank0_published,
    assert_same_steps,
    checkpoint_history,
    train_kill_and_resume_on_two_ranks,
    weight_differences,
)
from safetensors.torch import load_file
from test_dkim import dkim_cfg, make_base_ldm
from test_ldm import ldm_cfg

from cxrgen.stages.train_dkim import train_dkim

# The 2 ranks run base + adapter on half batches and sum their gradients: the single-process numbers in another
# summation order (and other CPU conv kernels for half batches). Measured on CPU over 4 steps: losses agree to 1.1e-6
# relative, gradient norms to 1.3e-5. The weights agree less closely than the LDM's (test_ldm_distributed) because the
# adapter starts with zero output convolutions: AdamW's first step of a parameter is sign(gradient) * lr whatever its
# size, so the zero convolutions' first step (step 1) and the encoder's (step 2, its first non-zero gradient) flip
# the sign of the few elements whose gradient is at rounding level, and those differ by up to ~lr. Measured on the
# saved EMA weights: largest difference 1.4e-3, median 4.8e-7, 1.4% of the elements differ by more than 1e-5 (the
# same run with 1 or 2 CPU threads: largest 4.7e-6). A deliberately broken run (every rank using rank 0's draws, or
# no gradient sum over ranks) gave median 5.7e-4 with 87% of the elements beyond 1e-5, losses off by 1e-4 to 6e-2
# relative from step 2 on and gradient norms by 17% or more.
LOSS_REL, GRAD_NORM_REL = 1e-5, 1e-4
MEDIAN_ATOL, TAIL_ATOL, TAIL_FRACTION, ATOL = 1e-5, 1e-5, 0.05, 2.5e-3
# cfg_dropout 0.5: with 4 steps of 4 items some conditions are dropped, so the joint drop mask's draw is checked too
CFG = {"max_steps": 4, "checkpoint_every": 2, "batch_size": 4, "cfg_dropout": 0.5, "latent_sampling": "posterior"}
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dkim_ddp")
    ldm, latents, clip_dir = make_base_ldm(root)
    # plain str paths and dicts, as the adapter passes them: the ranks unpickle their arguments
    return {"ldm_dir": str(ldm), "latents_dir": str(latents), "clip_dir": str(clip_dir), "cfg": dkim_cfg(**CFG),
            "ldm_cfg": ldm_cfg(), "seed": 3}, root


@pytest.fixture(scope="module")
def two_ranks(inputs, tmp_path_factory):
    """Uninterrupted, and killed after 3 steps and resumed, in one launch."""
    return train_kill_and_resume_on_two_ranks(train_dkim, inputs, tmp_path_factory, "train_dkim:ddp")


def test_two_ranks_train_the_single_process_adapter(inputs, two_ranks):
    kwargs, root = inputs
    found, _, tracking = two_ranks
    metrics, two = found["straight"], root / "two"
    single = train_dkim(**kwargs, out_dir=root / "one", state_dir=root / "one_state")
    assert metrics["world_size"] == 2 and single["world_size"] == 1 and metrics["steps"] == single["steps"] == 4
    assert metrics["base_unchanged"] and metrics["base_unet_sha"] == single["base_unet_sha"]
    # the logged loss is the mean over the ranks: the global batch's loss, step by step
    parallel_log, single_log = checkpoint_history(root / "two_state"), checkpoint_history(root / "one_state")
    assert_same_steps(parallel_log, single_log, [1, 2, 3, 4], loss=LOSS_REL, grad_norm=GRAD_NORM_REL)
    assert [p["lr"] for p in parallel_log] == [q["lr"] for q in single_log]
    parallel, alone = load_file(two / WEIGHTS), load_file(root / "one" / WEIGHTS)  # EMA adapter weights + bank
    assert parallel.keys() == alone.keys() and torch.equal(parallel["bank"], alone["bank"])
    differences = weight_differences(parallel, alone)
    tail = float((differences > TAIL_ATOL).float().mean())
    print(f"DKIM adapter: 2 ranks vs 1 process: largest difference {differences.max():.2e}, "
          f"median {differences.median():.2e}, {tail:.2%} of the elements beyond {TAIL_ATOL:g}")
    assert differences.median() <= MEDIAN_ATOL and tail <= TAIL_FRACTION and differences.max() <= ATOL
    # the adapter trained away from its zero-initialised outputs (the comparison is not of two untouched models)
    moved = [parallel[k].abs().max() for k in parallel if k.startswith("controlnet.controlnet_down_blocks")]
    assert max(moved) > 1e-4
    # the validation (rank 0 only) sees the same adapter
    assert metrics["val_loss_dkim"] == pytest.approx(single["val_loss_dkim"], rel=1e-5)  # measured 7e-7
    # rank 0 alone opened the run, finished it and wrote the output
    assert_rank0_published(tracking, "train_dkim:ddp", metrics, two)


def test_killed_and_resumed_two_ranks_equal_the_uninterrupted_run(two_ranks):
    found, root, tracking = two_ranks
    assert_killed_and_resumed(found, root, tracking, "train_dkim:ddp-resumed")
    resumed, uninterrupted = load_file(root / "resumed" / WEIGHTS), load_file(root / "two" / WEIGHTS)
    assert resumed.keys() == uninterrupted.keys()
    assert_identical_weights(resumed, uninterrupted)
