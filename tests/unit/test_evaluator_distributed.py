"""The DenseNet evaluator trained data parallel (rules train_evaluator and run_downstream on several GPUs): 2 gloo ranks
on CPU started by the launcher draw the single process's augmentations, normalise with the global batch's statistics,
average the loss over the global batch's known labels, end with its weights (running statistics included), resume bit
for bit after a kill, and rank 0 alone validates, writes and tracks."""

import json
from pathlib import Path

import pytest
import torch
from distributed_helpers import (
    assert_identical_weights,
    assert_killed_and_resumed,
    assert_rank0_published,
    assert_same_steps,
    checkpoint_history,
    train_kill_and_resume_in_ranks,
    weight_differences,
)
from evaluate_helpers import real_store, synthetic_store
from safetensors.torch import load_file
from test_evaluator import RES, tiny_cfg

from cxrgen.config import validate_config
from cxrgen.evaluate.classifier import tiny_classifier_config
from cxrgen.stages.run_downstream import run_downstream
from cxrgen.stages.train_evaluator import train_evaluator
from cxrgen.train.distributed import launch

# The ranks run the DenseNet on half batches, share batch-norm sums and sum their gradients: the single process's
# numbers in another summation order. Measured on CPU after 4 steps (batch 4, lr 1e-2): per-step losses agree to
# ~1e-7 relative, one step's gradients to ~5e-9 absolute. The stem's batch-norm scale (features.norm0.weight) has a
# gradient of exactly 0 in exact arithmetic: its channels pass ReLU and max-pooling (both commute with a positive
# scale) into batch norms that normalise the scale away. Its gradient is rounding noise (~1e-7), which depends on the
# summation order, and Adam turns noise into steps of ~lr: largest difference measured 6.9e-4, and 2.2e-4 in the
# running statistics of the two batch norms that see those channels. These are compared at ~lr * steps; every other
# weight and running statistic: largest difference measured 8.9e-7 (median 0). With per-rank batch statistics
# (plain BatchNorm2d) the step-1 loss already differs by 1.4e-3 relative and weights by up to 7.7e-2.
ATOL, MEDIAN_ATOL, SCALE_FREE_ATOL = 2e-5, 1e-7, 4e-2
SCALE_FREE = ("features.norm0.weight", "features.denseblock1.denselayer1.norm1.running_",
              "features.transition1.norm.running_")
STEPS = {"max_steps": 4, "checkpoint_every": 2, "eval_every": 2}


def downstream_sections() -> tuple[dict, dict]:
    cfg = validate_config({"sources": {"nih": {}},
                           "evaluator": {"model": tiny_classifier_config(), "batch_size": 4, "max_steps": 2,
                                         "eval_every": 2, "log_every": 1},
                           "downstream": {"seeds": [0], "max_steps": 2, "scarcity": {"fractions": [0.0, 0.5]}}})
    return cfg["downstream"], cfg["evaluator"]


def on_two_ranks(evaluator: dict, downstream: dict, root: str, tracking: str) -> dict:
    """Every 2-rank run of this file, in one launch (starting the ranks costs seconds of imports on shared cores):
    train_evaluator uninterrupted, killed after 3 steps (checkpoint at 2) and resumed, and one downstream job."""
    root = Path(root)
    found = train_kill_and_resume_in_ranks(train_evaluator, evaluator, root, tracking, "train_evaluator:ddp")
    found["downstream"] = run_downstream(**downstream, state_dir=str(root / "downstream_two"),
                                         out_path=str(root / "downstream_two/metrics.json"), tracking_json=None,
                                         job_name="run_downstream:ddp")
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from test_ldm import shared_tracking_json

    root = tmp_path_factory.mktemp("evaluator_ddp")
    real = real_store(root / "store", n=40)
    train_ids = real.loc[real["split"] == "train", "image_id"].tolist()
    synthetic_store(root / "synthetic", real, twins_of=train_ids[:12])
    tracking = str(shared_tracking_json(tmp_path_factory))
    # plain str paths, as the adapters pass them: the ranks unpickle their arguments
    evaluator = {"index_path": str(root / "store/index.parquet"), "store_root": str(root / "store"),
                 "resolution": RES, "cfg": tiny_cfg(**STEPS), "seed": 1}
    cfg, evaluator_cfg = downstream_sections()
    downstream = {"real_index_path": str(root / "store/index.parquet"), "real_store_root": str(root / "store"),
                  "synthetic_store_root": str(root / "synthetic"), "experiment": "scarcity", "seed": 0,
                  "base_seed": 10, "cfg": cfg, "evaluator_cfg": evaluator_cfg, "resolution": RES}
    found = launch(on_two_ranks, 2, evaluator, downstream, str(root), tracking)
    return evaluator, downstream, root, tracking, found


def _weights(model_dir) -> dict:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def test_two_ranks_train_the_single_process_evaluator(runs):
    evaluator, _, root, tracking, found = runs
    parallel = found["straight"]
    single = train_evaluator(**evaluator, out_dir=root / "one", state_dir=root / "one_state", tracking_json=None,
                             job_name="train_evaluator:one")
    assert parallel["world_size"] == 2 and single["world_size"] == 1 and parallel["steps"] == single["steps"] == 4
    assert_same_steps(checkpoint_history(root / "two_state"), checkpoint_history(root / "one_state"), [1, 2, 3, 4],
                      loss=1e-6, grad_norm=1e-5)
    two, one = _weights(root / "two"), _weights(root / "one")
    assert two.keys() == one.keys() and any("running_var" in k for k in one)
    scale_free = weight_differences(two, one, [k for k in one if k.startswith(SCALE_FREE)])
    rest = weight_differences(two, one, [k for k in one if not k.startswith(SCALE_FREE)])
    print(f"evaluator 2 ranks vs 1 process: largest difference {rest.max():.2e}, median {rest.median():.2e}; "
          f"stem batch-norm scale and the statistics it scales: largest {scale_free.max():.2e}")
    assert rest.max() <= ATOL and rest.median() <= MEDIAN_ATOL and scale_free.max() <= SCALE_FREE_ATOL
    # rank 0 alone validated (every eval step, the same selection) and opened, finished and filled the run
    assert parallel["selected_step"] == single["selected_step"]
    assert parallel["val"]["auroc"]["macro"] == pytest.approx(single["val"]["auroc"]["macro"], abs=1e-6)
    run = assert_rank0_published(tracking, "train_evaluator:ddp", parallel, root / "two")
    assert "val/auroc_macro" in run.data.metrics


def test_killed_and_resumed_two_ranks_equal_the_uninterrupted_run(runs):
    _, _, root, tracking, found = runs
    assert_killed_and_resumed(found, root, tracking, "train_evaluator:ddp-resumed")
    assert_identical_weights(_weights(root / "resumed"), _weights(root / "two"))
    assert found["resumed"]["selected_step"] == found["straight"]["selected_step"]


def test_downstream_job_on_two_ranks_scores_the_arms_of_one_process(runs):
    _, downstream, root, _, found = runs
    parallel = found["downstream"]
    single = run_downstream(**downstream, state_dir=root / "downstream_one",
                            out_path=root / "downstream_one/metrics.json", tracking_json=None,
                            job_name="run_downstream:one")
    assert parallel["world_size"] == 2 and list(parallel["arms"]) == list(single["arms"]) == ["syn_0pct", "syn_50pct"]
    for name, arm in single["arms"].items():
        other = parallel["arms"][name]
        assert other["n"] == arm["n"] and other["selected_step"] == arm["selected_step"], name
        assert other["test"]["auroc"]["macro"] == pytest.approx(arm["test"]["auroc"]["macro"], abs=1e-6), name
        curves = [json.loads((root / job / name / "result.json").read_text())["_curve"]
                  for job in ("downstream_two", "downstream_one")]
        assert [h["loss"] for h in curves[0]["history"]] == pytest.approx([h["loss"] for h in curves[1]["history"]],
                                                                          rel=1e-6), name


def test_global_batch_norm_keeps_parameters_state_and_single_process_outputs():
    from cxrgen.evaluate.classifier import build_classifier
    from cxrgen.train.collectives import GlobalBatchNorm2d, global_batch_norm

    torch.manual_seed(0)
    model = build_classifier(tiny_classifier_config())
    parameters, state = list(model.parameters()), {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 1, RES, RES)
    expected = model.train()(x)
    model.load_state_dict(state)
    converted = global_batch_norm(model)
    assert converted is model and all(a is b for a, b in zip(model.parameters(), parameters, strict=True))
    assert sum(isinstance(m, GlobalBatchNorm2d) for m in model.modules()) == sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 0
    assert model.state_dict().keys() == state.keys()
    assert torch.equal(model(x), expected)  # without a process group: plain batch norm
