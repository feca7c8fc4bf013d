"""Checks before diffusers' ``from_pretrained`` on a cxrgen model directory, so a wrong or missing directory fails with
a message that says what it is and which rule writes the right one (instead of diffusers' hub-lookup errors)."""

from __future__ import annotations

import json
from pathlib import Path


def require_model_dir(path: Path | str, cls: type, how_to_make: str, config_name: str = "config.json") -> dict:
    """The saved config of a ``cls`` directory; FileNotFoundError / ValueError naming ``how_to_make`` otherwise."""
    path = Path(path)
    config_file = path / config_name
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a {cls.__name__} directory (no {config_name}); {how_to_make}")
    config = json.loads(config_file.read_text())
    if config.get("_class_name") != cls.__name__:
        raise ValueError(f"{path} holds a {config.get('_class_name')!r}, not a {cls.__name__}; {how_to_make}")
    return config


def load_strict(cls, path: Path | str, how_to_make: str):
    """``cls.from_pretrained(path)`` offline that raises, like ``load_state_dict(strict=True)``, on missing or
    unexpected weights (diffusers only warns) and on mis-shaped ones."""
    require_model_dir(path, cls, how_to_make)
    if not any(Path(path).glob("*.safetensors")):
        raise FileNotFoundError(f"{path} has a {cls.__name__} config but no safetensors weights; {how_to_make}")
    model, info = cls.from_pretrained(path, local_files_only=True, low_cpu_mem_usage=False, output_loading_info=True)
    kinds = {"missing_keys": "Missing key(s)", "unexpected_keys": "Unexpected key(s)",
             "mismatched_keys": "Mismatched key(s)", "error_msgs": "Errors"}
    problems = [f"{label}: {sorted(map(str, info[kind]))}" for kind, label in kinds.items() if info.get(kind)]
    if problems:
        raise RuntimeError(f"Error(s) in loading {cls.__name__} from {path}: {'; '.join(problems)}")
    return model.eval()
