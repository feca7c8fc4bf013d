from pathlib import Path

import pytest
import yaml

from cxrgen.config import (
    WHOLE_CONFIG,
    ConfigError,
    deep_merge,
    enabled_sources,
    ldm_name,
    load_config,
    load_rule_sections,
    section_for,
    validate_config,
)

ROOT = Path(__file__).resolve().parents[2]
RULE_SECTIONS = load_rule_sections(ROOT / "workflow" / "config_sections.yaml")


def base():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def test_repo_config_is_valid_and_defaults_are_filled():
    cfg = load_config(ROOT / "config.yaml")
    assert cfg["unify"]["label_policy"] == {"uncertain": "ignore", "blank": "ignore"}
    assert cfg["sources"]["mimic"]["options"] == {}
    assert enabled_sources(cfg) == ["mimic", "chexpert", "nih", "padchest", "brax", "vindr", "iuxray"]


def test_test_overlay_merges_on_top():
    cfg = load_config(ROOT / "config.yaml", ROOT / "tests/config/test.yaml")
    assert cfg["ingest"]["resolutions"] == [32, 64]
    assert cfg["sources"]["mimic"]["target_spacing_mm"] == base()["sources"]["mimic"]["target_spacing_mm"]


def test_minimal_config_gets_defaults():
    given = {"sources": {"nih": {"root": "/data/nih"}}}
    cfg = validate_config(given)
    assert cfg["ingest"]["geometry"] == "pad"
    assert cfg["ingest"]["resolutions"] == [256, 1024]
    assert cfg["sources"]["nih"]["shards"] == 1  # a default behind a $ref (definitions/source)
    assert cfg["unify"]["label_policy"]["uncertain"] == "ignore"  # a defaulted section gets its own keys' defaults
    assert given == {"sources": {"nih": {"root": "/data/nih"}}}  # the caller's dict is not modified
    cfg["ingest"]["resolutions"].append(8)
    assert validate_config(given)["ingest"]["resolutions"] == [256, 1024]  # defaults are copies, not the schema's


def test_variants_default_to_the_ablation_and_flags_to_false():
    cfg = validate_config({"sources": {"nih": {}}})
    defaults = {"lnfs": False, "avatls": False, "dkim": False, "conditioning": "text", "enabled": True}
    assert cfg["variants"]["cheff"] == defaults
    assert cfg["variants"]["diffcxr-dkim"] == {**defaults, "dkim": True}
    assert list(cfg["variants"]) == ["cheff", "diffcxr-lnfs", "diffcxr-avatls", "diffcxr-dkim", "diffcxr"]
    demo = load_config(ROOT / "config.yaml")
    assert list(demo["variants"]) == ["cheff", "diffcxr"] and demo["variants"]["diffcxr"]["dkim"]
    everything = load_config(ROOT / "config.yaml", *(ROOT / "config/full" / f"{name}.yaml" for name in
                                                     ("all", "cheff", "diffcxr", "medcodi", "ddlcxr")))
    enabled = {name for name, flags in everything["variants"].items() if flags["enabled"]}
    assert enabled == set(cfg["variants"]) | {"cheff-uncond"}


def test_ldm_of_a_variant_is_named_by_its_training_flags():
    names = {name: ldm_name(flags) for name, flags in validate_config({"sources": {"nih": {}}})["variants"].items()}
    assert names == {"cheff": "cheff", "diffcxr-lnfs": "diffcxr-lnfs", "diffcxr-avatls": "diffcxr-avatls",
                     "diffcxr-dkim": "cheff", "diffcxr": "diffcxr"}  # DKIM is an adapter on the cheff LDM
    assert ldm_name({"lnfs": True, "avatls": True, "dkim": False}) == "diffcxr"  # shares diffcxr's LDM
    assert ldm_name({"conditioning": "none"}) == "cheff-uncond"  # Cheff's unconditional SDM


def test_unconditional_variant_takes_no_diffcxr_mechanism_and_a_disabled_variant_is_no_pool():
    with pytest.raises(ConfigError, match=r"variants\.uncond.*\['dkim'\]"):
        validate_config({"sources": {"nih": {}}, "variants": {"uncond": {"conditioning": "none", "dkim": True}}})
    with pytest.raises(ConfigError, match="downstream.variant"):
        validate_config({"sources": {"nih": {}}, "variants": {"cheff": {"enabled": False}, "other": {}}})


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"ingest": {"geometry": "squash"}}, ["'ingest.geometry'", "'pad'", "'crop'"]),
        ({"unify": {"label_policy": {"uncertain": "maybe"}}}, ["unify.label_policy.uncertain", "ones", "zeros"]),
        ({"sources": {"mimic": {"shrads": 3}}}, ["shrads", "under 'sources.mimic'", "shards"]),
        ({"sources": {"openi": {}}}, ["openi", "iuxray"]),
        ({"bogus_key": 1}, ["bogus_key", "at the top level"]),
        ({"ingest": {"resolutions": [8]}}, ["ingest.resolutions.0"]),
        ({"demo": {"images": {"nihh": 3}}}, ["demo.images", "nihh"]),
        ({"variants": {"Diff CXR": {}}}, ["'variants'", "'Diff CXR'", "^[a-z0-9][a-z0-9_-]*$"]),
        ({"variants": {"real": {}}}, ["'variants'", "'real'", "reconstruction"]),
        ({"variants": {"mine": {"lnfz": True}}}, ["lnfz", "under 'variants.mine'", "avatls", "dkim", "lnfs"]),
        ({"variants": {"mine": {"dkim": "yes"}}}, ["variants.mine.dkim", "boolean"]),
        ({"downstream": {"variant": "diffcxr-lnfs"}}, ["'downstream.variant'", "'diffcxr-lnfs'", "'cheff', 'diffcxr'"]),
        ({"generate": {"variants": ["cheff"]}}, ["variants", "under 'generate'"]),  # the old list is gone
    ],
)
def test_errors_name_the_key_and_allowed_values(patch, expected):
    with pytest.raises(ConfigError) as err:
        validate_config(deep_merge(base(), patch))
    for text in expected:
        assert text in str(err.value)


@pytest.mark.parametrize(("overlay", "changed_rules"), [
    ({"variants": {"diffcxr-mine": {"lnfs": True}}}, set()),  # only the new variant's jobs (tests/workflow)
    ({"generate": {"steps": 7}}, {"generate"}),
    ({"generate": {"n_per_finding": 7}}, {"build_prompts"}),
    ({"generate": {"sets": ["test_reports"]}}, {"build_prompts", "generate"}),
    ({"ldm": {"sample_grid": {"steps": 7}}}, {"sample_ldm_grid"}),  # a picture of the trained model: no retraining
    ({"dkim": {"sample_grid": {"columns": 7}}}, {"sample_dkim_grid"}),
    ({"ldm": {"views": ["PA"]}}, {"train_ldm", "train_dkim.ldm_cfg"}),
    ({"ldm": {"lr": 1e-3}}, {"train_ldm"}),
    ({"evaluator": {"views": ["PA"]}}, {"train_evaluator"}),
    ({"evaluator": {"lr": 1e-3}}, {"train_evaluator", "run_downstream.evaluator_cfg",
                                   "run_view_downstream.evaluator_cfg"}),
    ({"downstream": {"seeds": [5]}}, set()),
    # run_downstream gets the job's own experiment in common.smk; the per-view utility table entry names the three
    # experiments and its rule narrows further to the job's own (medcodi_utility_experiment_cfg)
    ({"downstream": {"scarcity": {"total": 7}}}, {"run_view_downstream.experiment_cfg"}),
    ({"downstream": {"views": ["PA"]}}, {"run_downstream"}),
    ({"evaluation": {"fidelity": {"min_per_class": 5}}}, {"evaluate_fidelity", "evaluate_medcodi_images"}),
    ({"evaluation": {"memorisation": {"pairs_shown": 2}}}, {"evaluate_memorisation"}),
    ({"evaluation": {"memorisation": {"max_train": 50}}}, {"evaluate_memorisation", "extract_real_features"}),
    ({"clip": {"squeeze": {"max_steps": 7}}}, {"train_clip_avatls"}),
    ({"clip": {"max_steps": 7}}, {"train_clip", "train_clip_avatls"}),
    ({"sr": {"finetune": {"max_steps": 7}}}, {"finetune_sr"}),
    ({"sr": {"base": {"max_steps": 7}}}, {"train_sr"}),
    ({"sr": {"batch_size": 7}}, {"train_sr", "finetune_sr"}),
])
def test_rules_get_only_the_config_keys_they_read(overlay, changed_rules):
    base = validate_config({"sources": {"nih": {}}})
    changed = validate_config(deep_merge(base, overlay))
    narrowed = [rule for rule, entry in RULE_SECTIONS.items() if entry["section"] != WHOLE_CONFIG]
    assert {rule for rule in narrowed
            if section_for(base, RULE_SECTIONS, rule) != section_for(changed, RULE_SECTIONS, rule)} == changed_rules
    for rule in set(RULE_SECTIONS) - set(narrowed):  # write_summary records the whole config
        assert section_for(changed, RULE_SECTIONS, rule) == changed


def test_rule_sections_table_names_existing_keys(tmp_path):
    config = validate_config({"sources": {"nih": {}}})
    for rule in RULE_SECTIONS:
        assert section_for(config, RULE_SECTIONS, rule)  # every include/exclude names a key of its section
    bad = tmp_path / "sections.yaml"
    bad.write_text("train_ldm: {sections: ldm}\n")
    with pytest.raises(ConfigError, match="'train_ldm' needs 'section'"):
        load_rule_sections(bad)


def test_narrowed_sections_keep_subkeys_and_name_unknown_rules():
    from cxrgen.config import narrow

    config = validate_config({"sources": {"nih": {}}})
    real = section_for(config, RULE_SECTIONS, "extract_real_features")
    assert real["memorisation"] == {"max_train": config["evaluation"]["memorisation"]["max_train"]}
    assert set(section_for(config, RULE_SECTIONS, "evaluate_fidelity")) == {"fidelity", "bootstrap"}
    assert "squeeze" not in section_for(config, RULE_SECTIONS, "train_clip")
    assert "finetune" not in section_for(config, RULE_SECTIONS, "train_sr")
    with pytest.raises(KeyError, match="unknown rule 'evaluate_fid'.*evaluate_fidelity"):
        section_for(config, RULE_SECTIONS, "evaluate_fid")
    with pytest.raises(KeyError, match="evaluate_fidelity.fidelity is missing"):
        narrow({"bootstrap": {}}, ["fidelity", "bootstrap"], where="evaluate_fidelity")
