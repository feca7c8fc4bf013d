"""envs/requirements.txt (what a cluster user installs) must pin exactly what pyproject.toml declares."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert match, f"not an exact pin: {line!r}"
        pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_requirements_match_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _pins(project["dependencies"] + project["optional-dependencies"]["dev"])
    env = _pins((ROOT / "envs/requirements.txt").read_text().splitlines())
    assert declared == env


def test_torch_is_pinned_exactly():
    env = _pins((ROOT / "envs/requirements.txt").read_text().splitlines())
    assert env["torch"] == "2.14.1" and env["torchvision"] == "0.29.1"


def test_conda_env_installs_the_same_requirements():
    text = (ROOT / "envs/cxrgen.yaml").read_text()
    assert "python=3.11" in text and "-r requirements.txt" in text and "-e .." in text
