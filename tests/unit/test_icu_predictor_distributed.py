"""The ICU predictor trained data parallel (rule train_icu_predictor on several GPUs): 2 gloo ranks on CPU started by
the launcher train the single-process predictor (arm ddl_cxr: EHR + last and generated CXR latents) with the same global
batch, a killed and resumed 2-rank run equals the uninterrupted one bit for bit, and rank 0 alone writes the output
(model + predictions) and the MLflow run."""

import numpy as np
import pandas as pd
import pytest
from ddl_helpers import TINY_EHR, icu_cfg, write_cohort
from distributed_helpers import (
    assert_close_weights,
    assert_identical_weights,
    assert_killed_and_resumed,
    assert_rank0_published,
    assert_same_steps,
    latest_state,
    train_kill_and_resume_in_ranks,
)

from cxrgen.icu.predictor import IcuPredictor
from cxrgen.stages.train_icu_predictor import train_icu_predictor
from cxrgen.train.distributed import launch

# Measured after 4 AdamW steps on CPU (2 ranks vs 1 process): the per-step losses agree to <1e-6 relative; weights:
# largest difference 1.9e-4, median 0 (AdamW's first steps amplify the rounding of near-zero gradients, as for
# train_ldm). A wrong slice or a missing gradient sum moves most weights by ~lr = 1e-3 per step.
ATOL, MEDIAN_ATOL = 5e-4, 1e-6
# 8 stays per step (4 per rank). The step draws no random numbers; dropout (EHR encoder and fusion) draws its masks
# per rank, so 2 ranks match one process only in distribution: dropout 0 here, as the other data-parallel tests do.
CFG = icu_cfg("predictor", max_steps=4, checkpoint_every=2, batch_size=8, ehr_encoder={**TINY_EHR, "dropout": 0.0},
              fusion={"patch_size": 4, "heads": 2, "ff_dim": 32, "dropout": 0.0})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every 2-rank run of this file, in one launch (starting the ranks costs seconds of imports on shared cores):
    uninterrupted, then killed after 3 steps (checkpoint at 2) and resumed."""
    from test_ldm import shared_tracking_json

    root = tmp_path_factory.mktemp("icu_predictor_ddp")
    cohort = write_cohort(root / "cohort")
    stays = pd.read_parquet(cohort["cohort"] / "stays.parquet")
    rng = np.random.default_rng(0)
    np.savez(root / "generated.npz", stay_keys=stays["stay_key"].to_numpy().astype(str),
             latents=rng.normal(size=(len(stays), 2, 8, 8)).astype(np.float32), scaling_factor=0.5)
    tracking = str(shared_tracking_json(tmp_path_factory))
    # plain str paths, as the adapter passes them: the ranks unpickle their arguments
    kwargs = {"cohort_dir": str(cohort["cohort"]), "arm": "ddl_cxr", "latents_dir": str(cohort["latents"]),
              "ae_dir": str(cohort["ae"]), "generated_path": str(root / "generated.npz"), "cfg": CFG, "seed": 3}
    found = launch(train_kill_and_resume_in_ranks, 2, train_icu_predictor, kwargs, root, tracking,
                   "train_icu_predictor:ddp")
    return kwargs, root, tracking, found


def _weights(out_dir):
    return IcuPredictor.from_pretrained(out_dir / "model").state_dict()


def _probabilities(out_dir) -> np.ndarray:
    frame = pd.read_parquet(out_dir / "predictions.parquet")
    return frame[[c for c in frame.columns if c.startswith("p_")]].to_numpy()


def test_two_ranks_train_the_single_process_weights(runs):
    kwargs, root, tracking, found = runs
    metrics = found["straight"]
    single = train_icu_predictor(**kwargs, out_dir=root / "one", state_dir=root / "one_state")
    assert metrics["world_size"] == 2 and single["world_size"] == 1 and metrics["steps"] == single["steps"] == 4
    assert metrics["n_predicted"] == single["n_predicted"] > 0
    parallel_log = latest_state(root / "two_state")["extra"]["history"]
    single_log = latest_state(root / "one_state")["extra"]["history"]
    assert_same_steps(parallel_log, single_log, [1, 2, 3, 4], loss=1e-6, grad_norm=1e-5)
    assert_close_weights("ICU predictor", _weights(root / "two"), _weights(root / "one"), ATOL, MEDIAN_ATOL)
    np.testing.assert_allclose(_probabilities(root / "two"), _probabilities(root / "one"), atol=1e-4)
    assert_rank0_published(tracking, "train_icu_predictor:ddp", metrics, root / "two")


def test_killed_and_resumed_two_ranks_equal_the_uninterrupted_run(runs):
    _, root, tracking, found = runs
    assert_killed_and_resumed(found, root, tracking, "train_icu_predictor:ddp-resumed")
    assert_identical_weights(_weights(root / "resumed"), _weights(root / "two"), "ICU predictor")
    pd.testing.assert_frame_equal(pd.read_parquet(root / "resumed" / "predictions.parquet"),
                                  pd.read_parquet(root / "two" / "predictions.parquet"))
