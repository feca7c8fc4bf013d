"""The full-scale overlays (config/full/*.yaml) and the GPU-hours estimates of cxrgen.compute."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cxrgen.compute import GPU_RULES_WITH_COST, estimate_job, ldm_gflops, measure_cpu_gflops_per_s, parse_dry_run
from cxrgen.config import load_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
PAPERS = ("cheff", "diffcxr", "medcodi", "ddlcxr")


def full_config_files(paper: str) -> list[Path]:
    return [ROOT / "config.yaml", ROOT / "config/full/all.yaml", ROOT / f"config/full/{paper}.yaml"]


def leaves(tree: dict, prefix: tuple = ()):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def lookup(tree: dict, path: tuple):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return KeyError
        tree = tree[key]
    return tree


def test_every_full_scale_file_is_a_paper_overlay():
    assert sorted(p.stem for p in (ROOT / "config/full").glob("*.yaml")) == sorted(["all", *PAPERS])


@pytest.mark.parametrize("paper", PAPERS)
def test_full_scale_config_validates_and_no_demo_value_leaks(paper):
    """Every key config.yaml (the demo) sets is, in the full-scale plan of ``paper``, either back at the schema
    default (the papers' values) or set explicitly by a config/full file, for every section the plan runs."""
    cfg = load_config(*full_config_files(paper))
    defaults = validate_config({"sources": {"mimic": {}}})
    overlays = [yaml.safe_load(f.read_text()) for f in full_config_files(paper)[1:]]
    variants = [flags for flags in cfg["variants"].values() if flags["enabled"]]
    inactive = {("sources",), ("demo",), ("privacy",), ("variants",)}
    inactive |= {(branch,) for branch in ("icu", "medcodi") if not cfg[branch]["enabled"]}
    if not any(flags["dkim"] for flags in variants):
        inactive.add(("dkim",))
    demo = yaml.safe_load((ROOT / "config.yaml").read_text())
    leaked = [".".join(path) for path, _ in leaves(demo)
              if not any(path[:len(p)] == p for p in inactive)
              and lookup(cfg, path) != lookup(defaults, path)
              and all(lookup(overlay, path) is KeyError for overlay in overlays)]
    assert not leaked, f"demo values left in the {paper} full-scale plan: {leaked}"
    assert cfg["ingest"]["resolutions"] == [256, 1024]  # Cheff Table 2: LDM at 256 px, SR 256 -> 1024 px
    assert cfg["ldm"]["max_steps"] == 750_000 and cfg["ldm"]["unet"]["base_channels"] == 224  # Cheff §7.3.2


def test_full_scale_papers_switch_on_their_own_branches_and_variants():
    enabled = {}
    for paper in PAPERS:
        cfg = load_config(*full_config_files(paper))
        enabled[paper] = ({v for v, f in cfg["variants"].items() if f["enabled"]}, cfg["icu"]["enabled"],
                          cfg["medcodi"]["enabled"])
    assert enabled["cheff"] == ({"cheff", "cheff-uncond"}, False, False)
    assert enabled["diffcxr"] == ({"cheff", "diffcxr-lnfs", "diffcxr-avatls", "diffcxr-dkim", "diffcxr"}, False,
                                  False)
    assert enabled["medcodi"] == ({"cheff"}, False, True)
    assert enabled["ddlcxr"] == ({"cheff"}, True, False)


def test_every_gpu_rule_of_the_slurm_profile_has_a_cost_model():
    profile = yaml.safe_load((ROOT / "slurm/config.yaml").read_text())
    gpu_rules = {rule for rule, res in profile["set-resources"].items() if res.get("gpu") or res.get("gres")}
    assert gpu_rules and gpu_rules <= GPU_RULES_WITH_COST, gpu_rules - GPU_RULES_WITH_COST


def test_costs_follow_the_config():
    """Counted forward FLOPs (meta device) grow with the model; steps scale the GPU-hours linearly."""
    demo = load_config(ROOT / "config.yaml")
    assert 0 < ldm_gflops(demo, "none") < ldm_gflops(demo, "text")  # cross-attention costs
    full = load_config(*full_config_files("cheff"))
    assert ldm_gflops(full) > 20 * ldm_gflops(demo)
    one = estimate_job("train_ldm", {"ldm_variant": "cheff"}, full).gpu_hours
    full["ldm"]["max_steps"] *= 2
    assert estimate_job("train_ldm", {"ldm_variant": "cheff"}, full).gpu_hours == pytest.approx(2 * one)
    with pytest.raises(KeyError):
        estimate_job("no_such_rule", {}, full)
    assert 0 < measure_cpu_gflops_per_s(demo, batch_size=2, repeats=1) < 1e5  # a CPU, not a datacentre


def test_pretrained_optimus_report_vae_is_costed_as_bert_plus_gpt2():
    full = load_config(*full_config_files("medcodi"))
    gru = estimate_job("train_text_vae", {}, full).gpu_hours
    full["medcodi"]["text_vae"]["pretrained"] = "/data/optimus"  # not read: the plan needs no checkpoint
    optimus = estimate_job("train_text_vae", {}, full).gpu_hours
    assert optimus > 5 * gru  # 2 x 85M transformer weights + GPT-2's 38.6M output layer vs two 2-layer GRUs


def test_parse_dry_run_reads_rules_wildcards_and_gpus():
    text = """
rule train_ldm:
    input: results/latents
    wildcards: ldm_variant=cheff-uncond
    resources: tmpdir=<TBD>, slurm_partition=gpu, gpu=2, runtime=1440

localrule all:
    input: results/summary.md
    resources: tmpdir=<TBD>
"""
    assert parse_dry_run(text) == [("train_ldm", {"ldm_variant": "cheff-uncond"}, 2), ("all", {}, 0)]


def test_reid_probe_images_are_planned_without_sr_and_only_with_the_audit():
    from cxrgen.compute import generated_images, probe_images

    full = load_config(*full_config_files("cheff"))
    assert probe_images(full) == 2000 * 10  # CheXGenBench 2025: 2,000 training prompts x 10 seeds
    with_probe, sets = generated_images(full, "cheff")
    assert "reid_probe 20,000" in sets
    hours = estimate_job("generate", {"variant": "cheff"}, full).gpu_hours
    features = estimate_job("extract_generated_features", {"variant": "cheff"}, full).gpu_hours
    full["reid"]["enabled"] = False
    assert probe_images(full) == 0 and generated_images(full, "cheff")[0] == with_probe - 20_000
    without = estimate_job("generate", {"variant": "cheff"}, full).gpu_hours
    per_sr_image = without / (with_probe - 20_000)
    assert 0 < hours - without < 20_000 * per_sr_image  # probe images cost the LDM only, no SR
    assert estimate_job("extract_generated_features", {"variant": "cheff"}, full).gpu_hours == features
