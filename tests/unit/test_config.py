from pathlib import Path

import pytest
import yaml

from cxrgen.config import ConfigError, deep_merge, enabled_sources, load_config, validate_config

ROOT = Path(__file__).resolve().parents[2]


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


def test_evaluation_config_gives_each_rule_only_the_keys_it_reads():
    from cxrgen.config import EVALUATION_KEYS, evaluation_config

    base = validate_config({"sources": {"nih": {}}})["evaluation"]
    changed = validate_config({"sources": {"nih": {}}, "evaluation": {"fidelity": {"min_per_class": 5}}})["evaluation"]
    for rule in EVALUATION_KEYS:
        same = evaluation_config(base, rule) == evaluation_config(changed, rule)
        assert same == (rule != "evaluate_fidelity"), rule  # only the fidelity rule's params change
    assert set(evaluation_config(base, "evaluate_fidelity")) == {"fidelity", "bootstrap"}
    with pytest.raises(KeyError, match="unknown rule 'evaluate_fid'.*evaluate_fidelity"):
        evaluation_config(base, "evaluate_fid")
