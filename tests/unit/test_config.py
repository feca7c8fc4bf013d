from pathlib import Path

import pytest
import yaml

from cxrgen.config import ConfigError, deep_merge, enabled_sources, load_config, load_rule_sections, validate_config

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
    cfg = validate_config({"sources": {"nih": {"root": "/data/nih"}}})
    assert cfg["ingest"]["geometry"] == "pad"
    assert cfg["ingest"]["resolutions"] == [256, 1024]
    assert cfg["sources"]["nih"]["shards"] == 1


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
    ],
)
def test_errors_name_the_key_and_allowed_values(patch, expected):
    with pytest.raises(ConfigError) as err:
        validate_config(deep_merge(base(), patch))
    for text in expected:
        assert text in str(err.value)


@pytest.mark.parametrize(("overlay", "changed_rules"), [
    ({"evaluation": {"fidelity": {"min_per_class": 5}}}, {"evaluate_fidelity"}),
    ({"evaluation": {"memorisation": {"pairs_shown": 2}}}, {"evaluate_memorisation"}),
    ({"evaluation": {"memorisation": {"max_train": 50}}}, {"evaluate_memorisation", "extract_real_features"}),
    ({"clip": {"squeeze": {"max_steps": 7}}}, {"train_clip_avatls"}),
    ({"clip": {"max_steps": 7}}, {"train_clip", "train_clip_avatls"}),
    ({"sr": {"finetune": {"max_steps": 7}}}, {"finetune_sr"}),
    ({"sr": {"base": {"max_steps": 7}}}, {"train_sr"}),
    ({"sr": {"batch_size": 7}}, {"train_sr", "finetune_sr"}),
])
def test_rules_get_only_the_config_keys_they_read(overlay, changed_rules):
    from cxrgen.config import section_for

    base = validate_config({"sources": {"nih": {}}})
    changed = validate_config({"sources": {"nih": {}}, **overlay})
    assert {rule for rule in RULE_SECTIONS
            if section_for(base, RULE_SECTIONS, rule) != section_for(changed, RULE_SECTIONS, rule)} == changed_rules


def test_narrowed_sections_keep_subkeys_and_name_unknown_rules():
    from cxrgen.config import narrow, section_for

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
