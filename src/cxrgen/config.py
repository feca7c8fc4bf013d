"""Configuration: JSON-schema validation with defaults and error messages that name the key and the allowed values.

The schema ships inside the package (``cxrgen/schemas/config.schema.yaml``); the Snakefile validates with the same
function so a wrong key or value fails before any job runs.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SOURCE_NAMES = ("mimic", "chexpert", "nih", "padchest", "brax", "vindr", "iuxray")


class ConfigError(ValueError):
    pass


def load_schema() -> dict:
    """The main schema plus one fragment per pipeline stage (``schemas/stages/<key>.yaml`` = schema of config key
    ``<key>``), so each stage documents and validates its own section."""
    folder = resources.files("cxrgen").joinpath("schemas")
    schema = yaml.safe_load(folder.joinpath("config.schema.yaml").read_text())
    stages = folder.joinpath("stages")
    if stages.is_dir():
        for fragment in sorted(stages.iterdir(), key=lambda f: f.name):
            if fragment.name.endswith(".yaml"):
                schema["properties"][fragment.name.removesuffix(".yaml")] = yaml.safe_load(fragment.read_text())
    return schema


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _explain(error: jsonschema.ValidationError) -> str:
    key = _key_path(error)
    if error.validator == "enum":
        return f"config key '{key}' = {error.instance!r} is not allowed; allowed values: {error.validator_value}"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = f"under '{key}'" if error.absolute_path else "at the top level"
        return f"unknown config key(s) {extra} {where}; allowed keys: {allowed}"
    if error.validator == "propertyNames":
        allowed = error.schema["propertyNames"].get("enum")
        return f"config key '{key}' has an unknown entry {error.instance!r}; allowed: {allowed}"
    return f"config key '{key}': {error.message}"


def _fill_defaults(instance: Any, schema: dict, root: dict) -> Any:
    if "$ref" in schema:
        ref = schema["$ref"].removeprefix("#/").split("/")
        target = root
        for part in ref:
            target = target[part]
        return _fill_defaults(instance, target, root)
    if isinstance(instance, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in instance and "default" in sub:
                instance[name] = copy.deepcopy(sub["default"])
            if name in instance:
                instance[name] = _fill_defaults(instance[name], sub, root)
    return instance


def validate_config(config: dict) -> dict:
    """Validate and return a copy with defaults filled in. Raises ConfigError naming the key and allowed values."""
    schema = load_schema()
    filled = _fill_defaults(copy.deepcopy(config), schema, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(filled), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_explain(e) for e in errors))
    return filled


def load_config(*paths: str | Path) -> dict:
    """Merge YAML files (later ones win, recursively, like snakemake's --configfile a b) and validate."""
    merged: dict = {}
    for path in paths:
        merged = deep_merge(merged, yaml.safe_load(Path(path).read_text()) or {})
    return validate_config(merged)


def deep_merge(base: dict, overlay: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def enabled_sources(config: dict) -> list[str]:
    return [name for name in SOURCE_NAMES if name in config["sources"] and config["sources"][name]["enabled"]]


def narrow(section: dict, include: list[str] | tuple[str, ...] | None = None,
           exclude: list[str] | tuple[str, ...] = (), where: str = "section") -> dict:
    """The part of a validated config section made of ``include`` (None = every key; ``"a.b"`` = only key ``b`` of
    subsection ``a``) minus ``exclude``. A missing key raises, naming ``where``."""
    out: dict = {}
    for key in include if include is not None else [k for k in section if k not in exclude]:
        head, _, sub = key.partition(".")
        if head not in section or (sub and sub not in section[head]):
            raise KeyError(f"{where}.{key} is missing (validate the config first)")
        if sub:
            out.setdefault(head, {})[sub] = section[head][sub]
        else:
            out[head] = section[head]
    return out


def load_rule_sections(path: Path | str) -> dict[str, dict]:
    """The workflow's table of what each rule gets of its config section (``workflow/config_sections.yaml``)."""
    table = yaml.safe_load(Path(path).read_text()) or {}
    for rule, entry in table.items():
        unknown = set(entry) - {"section", "include", "exclude"}
        if "section" not in entry or unknown:
            raise ConfigError(f"{path}: entry {rule!r} needs 'section' and may have 'include'/'exclude' "
                              f"(unknown: {sorted(unknown)})")
    return table


def section_for(config: dict, table: dict[str, dict], rule: str) -> dict:
    """``rule``'s params from the whole validated config: its section narrowed by its entry in ``table``."""
    if rule not in table:
        raise KeyError(f"unknown rule {rule!r} for a narrowed config section; known: {', '.join(table)}")
    entry = table[rule]
    return narrow(config[entry["section"]], entry.get("include"), tuple(entry.get("exclude", ())),
                  where=f"{rule}: {entry['section']}")
