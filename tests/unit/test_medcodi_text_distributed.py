"""The report VAE and the report diffusion model trained data parallel (2 gloo ranks on CPU started by the launcher)
end with the weights of one process with the same global batch: the reparameterisation noise, subset draws, CFG
drops, timesteps and ε are drawn for the global batch and each rank keeps its rows."""

import pytest
import torch
from medcodi_text_helpers import medcodi_cfg, write_embeddings, write_study_table
from safetensors.torch import load_file

from cxrgen.stages.train_report_diffusion import train_report_diffusion
from cxrgen.stages.train_text_vae import train_text_vae
from cxrgen.train.distributed import launch

# same draws, another summation order; AdamW amplifies rounding only where a gradient is nearly zero (train_ldm's
# test measured up to 5.6e-5); a wrong draw or a missing gradient sum moves most weights by ~lr per step
ATOL, MEDIAN_ATOL = 2e-4, 1e-6


def _compare(a_file, b_file):
    a, b = load_file(a_file), load_file(b_file)
    differences = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert differences.max() <= ATOL and differences.median() <= MEDIAN_ATOL, (differences.max(), differences.median())


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("medcodi_ddp")
    table = write_study_table(root / "studies.parquet")
    write_embeddings(root / "embeddings.npz", table)
    return root


def on_two_ranks(vae_kwargs: dict, rd_kwargs: dict, root: str) -> tuple[dict, dict]:
    """Both 2-rank trainings of this file in one launch (starting the ranks costs seconds of imports on shared
    cores)."""
    vae = train_text_vae(**vae_kwargs, out_dir=f"{root}/vae2", state_dir=f"{root}/vae2_state")
    rd = train_report_diffusion(**rd_kwargs, out_dir=f"{root}/rd2", state_dir=f"{root}/rd2_state")
    return vae, rd


def test_two_ranks_train_the_single_process_weights(root):
    studies = str(root / "studies.parquet")
    vae_cfg = medcodi_cfg("text_vae", model={"dropout": 0.0}, max_steps=3)  # dropout draws are per rank
    vae_kwargs = {"studies": studies, "cfg": vae_cfg, "seed": 0}
    # the report diffusion model of both runs encodes with the single process's VAE (trained before the launch)
    one_vae = train_text_vae(**vae_kwargs, out_dir=root / "vae1", state_dir=root / "vae1_state")
    rd_cfg = medcodi_cfg("report_diffusion", cfg_dropout=0.5, max_steps=3, val_max_items=0)
    rd_kwargs = {"studies": studies, "embeddings": str(root / "embeddings.npz"), "vae_dir": str(root / "vae1"),
                 "cfg": rd_cfg, "prompting": "multi", "seed": 0}
    two_vae, two_rd = launch(on_two_ranks, 2, vae_kwargs, rd_kwargs, str(root))
    assert two_vae["world_size"] == 2 and one_vae["world_size"] == 1
    _compare(root / "vae2" / "diffusion_pytorch_model.safetensors", root / "vae1" / "diffusion_pytorch_model.safetensors")

    one_rd = train_report_diffusion(**rd_kwargs, out_dir=root / "rd1", state_dir=root / "rd1_state")
    assert two_rd["world_size"] == 2 and one_rd["world_size"] == 1
    _compare(root / "rd2" / "denoiser" / "diffusion_pytorch_model.safetensors",
             root / "rd1" / "denoiser" / "diffusion_pytorch_model.safetensors")
