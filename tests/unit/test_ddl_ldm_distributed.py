"""The DDL-CXR LDM trained data parallel (rule train_ddl_ldm on several GPUs): 2 gloo ranks on CPU started by the
launcher train the single-process model with the same global batch (posterior samples, timesteps, noise and the
contrastive term's EHR noise δ drawn for the global batch; the label BCE divided by the global batch's known labels),
a killed and resumed 2-rank run equals the uninterrupted one bit for bit, and rank 0 alone writes the output and the
MLflow run."""

import pytest
from ddl_helpers import TINY_EHR, icu_cfg, write_cohort
from distributed_helpers import (
    assert_close_weights,
    assert_identical_weights,
    assert_killed_and_resumed,
    assert_rank0_published,
    assert_same_steps,
    latest_state,
    train_kill_and_resume_on_two_ranks,
)

from cxrgen.icu.ddl_ldm import load_ddl_ldm
from cxrgen.stages.train_ddl_ldm import train_ddl_ldm

# Measured after 4 AdamW steps on CPU (2 ranks vs 1 process): the per-step losses and gradient norms agree to <1e-6
# relative; weights (UNet, EHR encoder and label head, EMA): largest difference 1.6e-4, median 1.3e-8 (AdamW's
# first steps amplify the rounding of near-zero gradients, as for train_ldm). With the encoder's dropout on, step 1's
# loss already differs by 3e-3: a wrong draw or a missing gradient sum moves most weights by ~lr = 1e-3 per step.
ATOL, MEDIAN_ATOL = 5e-4, 1e-6
# 4 pairs per step (2 per rank); contrastive ramp off so the margin term (and its δ draw) acts from step 1. The EHR
# encoder's dropout (paper code 0.2) draws its masks per rank, so 2 ranks match one process only in distribution:
# dropout 0 here, as the SR and CLIP tests do.
CFG = icu_cfg("ldm", max_steps=4, checkpoint_every=2, batch_size=4, contrastive_ramp="none",
              ehr_encoder={**TINY_EHR, "dropout": 0.0})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddl_ddp")
    cohort = write_cohort(root / "cohort")
    # plain str paths, as the adapter passes them: the ranks unpickle their arguments
    return {"cohort_dir": str(cohort["cohort"]), "latents_dir": str(cohort["latents"]), "ae_dir": str(cohort["ae"]),
            "cfg": CFG, "seed": 5}, root


@pytest.fixture(scope="module")
def two_ranks(inputs, tmp_path_factory):
    """Uninterrupted, and killed after 3 steps and resumed, in one launch."""
    return train_kill_and_resume_on_two_ranks(train_ddl_ldm, inputs, tmp_path_factory, "train_ddl_ldm:ddp")


def _model_weights(model_dir):
    model, _, _ = load_ddl_ldm(model_dir)
    return model.state_dict()


def test_two_ranks_train_the_single_process_weights(inputs, two_ranks):
    kwargs, root = inputs
    found, _, tracking = two_ranks
    metrics, two = found["straight"], root / "two"
    single = train_ddl_ldm(**kwargs, out_dir=root / "one", state_dir=root / "one_state")
    assert metrics["world_size"] == 2 and single["world_size"] == 1 and metrics["steps"] == single["steps"] == 4
    parallel_log = latest_state(root / "two_state")["extra"]["history"]
    single_log = latest_state(root / "one_state")["extra"]["history"]
    assert_same_steps(parallel_log, single_log, [1, 2, 3, 4], loss=1e-5, mse=1e-5, label_bce=1e-5, contrastive=1e-5,
                      grad_norm=1e-4)
    assert_close_weights("DDL-CXR LDM (EMA)", _model_weights(two), _model_weights(root / "one"), ATOL, MEDIAN_ATOL)
    assert_rank0_published(tracking, "train_ddl_ldm:ddp", metrics, two)


def test_killed_and_resumed_two_ranks_equal_the_uninterrupted_run(two_ranks):
    found, root, tracking = two_ranks
    assert_killed_and_resumed(found, root, tracking, "train_ddl_ldm:ddp-resumed")
    assert_identical_weights(_model_weights(root / "resumed"), _model_weights(root / "two"), "DDL-CXR LDM")
