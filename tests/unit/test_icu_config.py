"""Config section icu: paper defaults, and the cross-key rules that JSON schema cannot express."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrgen.config import ConfigError, load_config, validate_config
from cxrgen.icu.cohort import check_config

ROOT = Path(__file__).resolve().parents[2]


def test_schema_defaults_are_ddl_cxrs_cohort():
    cohort = validate_config({"sources": {"mimic": {"enabled": True, "root": None}}})["icu"]["cohort"]
    assert (cohort["min_age"], cohort["min_los_hours"], cohort["prediction_hours"]) == (18, 48, 48)
    assert cohort["image_window_hours"] == [-24, 48] and cohort["views"] == ["AP"]
    assert (cohort["min_pair_gap_hours"], cohort["min_pair_ehr_bins"], cohort["series_hours"]) == (12, 6, 48)
    check_config(cohort)


def test_demo_config_enables_the_branch_on_the_demo_tables():
    icu = load_config(ROOT / "config.yaml")["icu"]
    assert icu["enabled"] is True and icu["mimic_iv_root"] is None


def test_icu_needs_mimic_cxr_and_matching_roots():
    with pytest.raises(ConfigError, match="sources.mimic.enabled"):
        validate_config({"sources": {"nih": {"enabled": True}}, "icu": {"enabled": True}})
    with pytest.raises(ConfigError, match="icu.mimic_iv_root"):
        validate_config({"sources": {"mimic": {"enabled": True, "root": "/data/mimic-cxr"}}, "icu": {"enabled": True}})
    validate_config({"sources": {"nih": {"enabled": True}}, "icu": {"enabled": False}})


def test_series_must_cover_prediction_time_and_window():
    cohort = validate_config({"sources": {"mimic": {"enabled": True}}})["icu"]["cohort"]
    with pytest.raises(ValueError, match="icu.cohort.series_hours"):
        check_config(dict(cohort, series_hours=24))
    with pytest.raises(ValueError, match="image_window_hours"):
        check_config(dict(cohort, image_window_hours=[10, -10]))
