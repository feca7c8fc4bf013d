"""Configuration: JSON-schema validation with defaults and error messages that name the key and the allowed values.

The schema ships inside the package (``cxrgen/schemas/config.schema.yaml``); the Snakefile validates with the same
function so a wrong key or value fails before any job runs.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path

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
    if "propertyNames" in error.relative_schema_path:  # the name of an entry, not its value
        names = error.schema
        allowed = (names["enum"] if error.validator == "enum" else
                   f"names other than {names['not']['enum']}" if error.validator == "not" else
                   f"names matching {names.get('pattern')} of at most {names.get('maxLength')} characters")
        return f"config key '{key}' has an entry named {error.instance!r}, which is not allowed; allowed: {allowed}"
    return f"config key '{key}': {error.message}"


def _with_defaults(validator_class):
    """``validator_class`` that also fills in each missing property's ``default`` while it validates (the
    extension pattern from jsonschema's FAQ): defaults are inserted before the properties are descended into, so a
    defaulted section gets its own keys' defaults, and ``$ref`` targets are resolved by jsonschema itself."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if validator.is_type(instance, "object"):
            for name, subschema in properties.items():
                if name not in instance and isinstance(subschema, dict) and "default" in subschema:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": properties_with_defaults})


DefaultFillingValidator = _with_defaults(jsonschema.Draft202012Validator)


def _check_references(config: dict) -> list[str]:
    """Cross-key rules JSON schema cannot express: a key naming an entry of another section."""
    problems = []
    variant = config.get("downstream", {}).get("variant")
    if variant is not None and not config.get("variants", {}).get(variant, {}).get("enabled", True):
        problems.append(f"config key 'downstream.variant' = {variant!r} names a variant with enabled false")
    if variant is not None and variant not in config.get("variants", {}):
        problems.append(f"config key 'downstream.variant' = {variant!r} is not a defined variant; "
                        f"defined variants (key 'variants'): {sorted(config.get('variants', {}))}")
    for name, flags in config.get("variants", {}).items():
        mechanisms = [k for k in ("lnfs", "avatls", "dkim") if flags.get(k)]
        if flags.get("conditioning") == "none" and mechanisms:
            problems.append(f"config key 'variants.{name}': conditioning 'none' (Cheff's unconditional LDM) takes no "
                            f"Diff-CXR mechanism, but {mechanisms} are true; allowed: conditioning 'text' with them")
    enabled = [name for name, flags in config.get("variants", {}).items() if flags.get("enabled", True)]
    sheet = config.get("generate", {}).get("sample_sheet", {}).get("variants", [])
    if set(sheet) - set(enabled):
        problems.append(f"config key 'generate.sample_sheet.variants' names {sorted(set(sheet) - set(enabled))}, "
                        f"not enabled variants; enabled variants (key 'variants'): {enabled}")
    if not any(flags.get("enabled", True) for flags in config.get("variants", {}).values()):
        problems.append("config key 'variants': every variant has enabled false; enable at least one")
    mimic = config.get("sources", {}).get("mimic", {})
    if config.get("icu", {}).get("enabled") and not mimic.get("enabled"):
        problems.append("config key 'icu.enabled' = True needs MIMIC-CXR (key 'sources.mimic.enabled' = true): the ICU "
                        "cohort's images and splits come from the MIMIC-CXR part of the store; or set icu.enabled: false")
    if config.get("icu", {}).get("enabled") and config["icu"].get("mimic_iv_root") is None and mimic.get("root"):
        problems.append(f"config key 'icu.mimic_iv_root' = None (the demo MIMIC-IV tables) does not describe the real "
                        f"MIMIC-CXR of 'sources.mimic.root' = {mimic['root']!r}: set icu.mimic_iv_root to the MIMIC-IV "
                        f"root (the folder holding hosp/ and icu/)")
    return problems


def validate_config(config: dict) -> dict:
    """Validate and return a copy with defaults filled in. Raises ConfigError naming the key and allowed values."""
    filled = copy.deepcopy(config)
    validator = DefaultFillingValidator(load_schema())
    errors = sorted(validator.iter_errors(filled), key=lambda e: [str(p) for p in e.absolute_path])
    problems = [_explain(e) for e in errors] or _check_references(filled)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return filled


def ldm_name(variant: dict) -> str:
    """The LDM a variant samples, named by the training-time mechanisms in its flags: an LDM is defined by
    (``lnfs``, ``avatls``) alone, since DKIM is an adapter trained on a frozen LDM and used at sampling time. No
    mechanism = ``cheff`` (the report-conditioned LDM), both = ``diffcxr``, one = ``diffcxr-<flag>``; variants with
    the same two flags share one LDM (``results/models/ldm/<name>``) and its DKIM adapter (``models/dkim/<name>``).
    ``conditioning: none`` = ``cheff-uncond``, Cheff's unconditional LDM (no Diff-CXR flag allowed)."""
    if variant.get("conditioning", "text") == "none":
        return "cheff-uncond"
    lnfs, avatls = bool(variant.get("lnfs")), bool(variant.get("avatls"))
    if lnfs and avatls:
        return "diffcxr"
    if lnfs or avatls:
        return "diffcxr-lnfs" if lnfs else "diffcxr-avatls"
    return "cheff"


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


WHOLE_CONFIG = "*"


def load_rule_sections(path: Path | str) -> dict[str, dict]:
    """The workflow's table of what each rule gets of the config (``workflow/config_sections.yaml``): entries keyed
    ``<rule>`` (its ``cfg`` param) or ``<rule>.<param>`` (any other param), each ``{section, include, exclude}``;
    section ``*`` is the whole config."""
    table = yaml.safe_load(Path(path).read_text()) or {}
    for key, entry in table.items():
        unknown = set(entry) - {"section", "include", "exclude"}
        if "section" not in entry or unknown:
            raise ConfigError(f"{path}: entry {key!r} needs 'section' and may have 'include'/'exclude' "
                              f"(unknown: {sorted(unknown)})")
    return table


def section_for(config: dict, table: dict[str, dict], rule: str) -> dict:
    """The params entry ``rule`` (``<rule>`` or ``<rule>.<param>``) of ``table`` from the whole validated config:
    its section narrowed by the entry."""
    if rule not in table:
        raise KeyError(f"unknown rule {rule!r} for a narrowed config section; known: {', '.join(table)}")
    entry = table[rule]
    section = config if entry["section"] == WHOLE_CONFIG else config[entry["section"]]
    return narrow(section, entry.get("include"), tuple(entry.get("exclude", ())),
                  where=f"{rule}: {entry['section']}")
