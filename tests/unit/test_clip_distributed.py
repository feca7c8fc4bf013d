"""CLIP trained data parallel (rules train_clip, train_clip_avatls on several GPUs): 2 gloo ranks on CPU started by
the launcher compute the single process's InfoNCE loss over the global batch (each rank's embeddings contrasted with
every rank's), end with its weights, resume bit for bit after a kill, and rank 0 alone writes and tracks."""

from pathlib import Path

import pytest
import torch
from distributed_helpers import (
    assert_identical_weights,
    assert_killed_and_resumed,
    assert_rank0_published,
    assert_same_steps,
    checkpoint_history,
    compare_weights,
    train_kill_and_resume_in_ranks,
)
from test_clip import RES, tiny_cfg, tiny_store

from cxrgen.models.clip import load_clip
from cxrgen.stages.train_clip import train_clip, train_clip_avatls
from cxrgen.train.distributed import launch

# The ranks encode half batches and sum their gradients: the single process's numbers in another summation order.
# Measured on CPU after 4 steps (batch 4, lr 1e-3): per-step losses agree to ~1e-7 relative, gradient norms to ~1e-6;
# the weights' median difference is 0, the largest 2.6e-6 (one MLP weight) outside the attention key biases. A key
# bias has a gradient of exactly 0 in exact arithmetic (softmax ignores a constant added to every score): its gradient
# is rounding noise, which depends on the summation order, and AdamW turns noise into steps of ~lr (largest
# difference measured 7.8e-5). Those are compared at ~lr * steps. A missing negative or gradient term moves most
# weights by ~lr per step.
ATOL, KEY_BIAS_ATOL, MEDIAN_ATOL = 2e-5, 8e-3, 1e-7
CFG = {"max_steps": 4, "checkpoint_every": 2, "log_every": 1, "eval_every": 2, "batch_size": 4}
AVATLS = {"eval_every": 0, "squeeze": {"length": 4, "max_steps": 2, "warmup_steps": 0}}


def on_two_ranks(kwargs: dict, root: str, tracking: str) -> dict:
    """Every 2-rank run of this file, in one launch (starting the ranks costs seconds of imports on shared cores):
    uninterrupted, killed after 3 steps (checkpoint at 2) and resumed, and the AVA-TLS fine-tuning of the first."""
    root = Path(root)
    found = train_kill_and_resume_in_ranks(train_clip, kwargs, root, tracking, "train_clip:ddp")
    found["avatls"] = train_clip_avatls(**{**kwargs, "cfg": tiny_cfg(**{**CFG, **AVATLS})},
                                        baseline_dir=str(root / "two"), out_dir=str(root / "avatls_two"),
                                        state_dir=str(root / "avatls_two_state"), tracking_json=None,
                                        job_name="avatls")
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from test_ldm import shared_tracking_json

    root = tmp_path_factory.mktemp("clip_ddp")
    tiny_store(root)
    tracking = str(shared_tracking_json(tmp_path_factory))
    # plain str paths, as the adapter passes them: the ranks unpickle their arguments
    kwargs = {"index_path": str(root / "index.parquet"), "store_root": str(root), "resolution": RES,
              "cfg": tiny_cfg(**CFG), "seed": 5}
    return kwargs, root, tracking, launch(on_two_ranks, 2, kwargs, str(root), tracking)


def _assert_same_steps(parallel_state, single_state):
    assert_same_steps(checkpoint_history(parallel_state), checkpoint_history(single_state), loss=1e-6,
                      grad_norm=1e-5, logit_scale=1e-6)


def _weight_differences(a: dict, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute differences of every weight but the attention key biases, and of those."""
    assert a.keys() == b.keys()
    rest, key_biases = [], []
    for name in a:
        difference = (a[name].float() - b[name].float()).abs().flatten()
        if name.endswith("attn.in_proj_bias"):  # query, key, value biases
            third = len(difference) // 3
            key_biases.append(difference[third:2 * third])
            difference = torch.cat([difference[:third], difference[2 * third:]])
        rest.append(difference)
    return torch.cat(rest), torch.cat(key_biases)


def test_two_ranks_compute_the_global_batch_loss_and_weights(runs):
    kwargs, root, tracking, found = runs
    parallel = found["straight"]
    single = train_clip(**kwargs, out_dir=root / "one", state_dir=root / "one_state", tracking_json=None,
                        job_name="train_clip:one")
    assert parallel["world_size"] == 2 and single["world_size"] == 1 and parallel["steps"] == single["steps"] == 4
    # the logged loss is the mean of the ranks' losses: the InfoNCE of the global batch, step by step
    _assert_same_steps(root / "two_state", root / "one_state")
    rest, key_biases = _weight_differences(load_clip(root / "two").model.state_dict(),
                                           load_clip(root / "one").model.state_dict())
    print(f"CLIP 2 ranks vs 1 process: largest weight difference {rest.max():.2e}, median {rest.median():.2e}; "
          f"attention key biases: largest {key_biases.max():.2e}")
    assert rest.max() <= ATOL and rest.median() <= MEDIAN_ATOL and key_biases.max() <= KEY_BIAS_ATOL
    # rank 0 alone evaluated retrieval (the same model: the same recall) and opened, finished and filled the run
    assert parallel["retrieval"].keys() == single["retrieval"].keys()
    for key, value in single["retrieval"].items():
        assert parallel["retrieval"][key] == pytest.approx(value, abs=1e-6), key
    run = assert_rank0_published(tracking, "train_clip:ddp", parallel, root / "two")
    assert "val/i2t_recall_at_5" in run.data.metrics


def test_killed_and_resumed_two_ranks_equal_the_uninterrupted_run(runs):
    _, root, tracking, found = runs
    assert_killed_and_resumed(found, root, tracking, "train_clip:ddp-resumed")
    assert_identical_weights(load_clip(root / "resumed").model.state_dict(), load_clip(root / "two").model.state_dict())


def test_avatls_squeeze_fine_tuning_on_two_ranks_matches_one_process(runs):
    kwargs, root, _, found = runs
    assert found["avatls"]["world_size"] == 2 and found["avatls"]["squeeze"]["length"] == 4
    train_clip_avatls(**{**kwargs, "cfg": tiny_cfg(**{**CFG, **AVATLS})}, baseline_dir=root / "two",
                      out_dir=root / "avatls_one", state_dir=root / "avatls_one_state", tracking_json=None,
                      job_name="avatls")
    _assert_same_steps(root / "avatls_two_state", root / "avatls_one_state")
    two, one = (load_clip(root / name).squeeze.state_dict() for name in ("avatls_two", "avatls_one"))
    assert compare_weights("AVA-TLS squeeze", two, one).max() <= ATOL
