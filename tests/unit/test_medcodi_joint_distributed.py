"""The joint-alignment layers trained data parallel: 2 gloo ranks on CPU, each keeping its rows of the (time, CFG drop,
noise) draws made for the global batch, follow the single-process run step by step over one round of the three pairs
(same losses) and end with its weights up to float summation order."""

import pytest
import torch
from medcodi_joint_helpers import build_generators, rule_cfg
from safetensors.torch import load_file

from cxrgen.stages.train_joint_alignment import train_joint_alignment
from cxrgen.train.distributed import launch
from cxrgen.train.loop import latest_checkpoint

ATOL, MEDIAN_ATOL = 1e-3, 1e-6  # as test_medcodi_ldm_distributed.py: AdamW amplifies rounding in a few elements


def _history(state_dir):
    return torch.load(latest_checkpoint(state_dir), weights_only=False)["extra"]["history"]


def test_two_ranks_follow_the_single_process_run(tmp_path):
    paths = build_generators(tmp_path)
    # cfg_dropout 0.5: the CFG draw differs between the rows of a batch; 3 steps = the pairs (F,L), (F,T), (L,T)
    kwargs = {k: str(paths[k]) for k in ("studies", "embeddings")}
    kwargs.update(latents_dir=str(paths["latents"]), ae_dir=str(paths["ae"]), frontal_dir=str(paths["frontal"]),
                  lateral_dir=str(paths["lateral"]), report_dir=str(paths["report"]), vae_dir=str(paths["vae"]),
                  seed=0, cfg=rule_cfg("train_joint_alignment", max_steps=3, checkpoint_every=3, cfg_dropout=0.5,
                                       lr=1e-3))
    two = launch(train_joint_alignment, 2, **kwargs, out_dir=str(tmp_path / "two"), state_dir=str(tmp_path / "two_st"))
    one = train_joint_alignment(**kwargs, out_dir=tmp_path / "one", state_dir=tmp_path / "one_st")
    assert two["world_size"] == 2 and one["world_size"] == 1 and two["steps"] == one["steps"] == 3
    history_two, history_one = _history(tmp_path / "two_st"), _history(tmp_path / "one_st")
    assert [h["step"] for h in history_two] == [h["step"] for h in history_one] == [1, 2, 3]
    assert history_two[0]["loss"] == pytest.approx(history_one[0]["loss"], rel=1e-6)
    for p, q in zip(history_two[1:], history_one[1:], strict=True):
        assert p["loss"] == pytest.approx(q["loss"], rel=1e-5)
    parallel = load_file(tmp_path / "two" / "alignment" / "diffusion_pytorch_model.safetensors")
    alone = load_file(tmp_path / "one" / "alignment" / "diffusion_pytorch_model.safetensors")
    differences = torch.cat([(parallel[k] - alone[k]).abs().flatten() for k in alone])
    print(f"2 ranks vs 1 process: max {differences.max():.2e}, median {differences.median():.2e}")
    assert differences.max() <= ATOL and differences.median() <= MEDIAN_ATOL
