"""Every rule of the parsed workflow gets only the config keys it reads (workflow/config_sections.yaml).

The workflow is parsed through Snakemake's API (no DAG, ~3 s per config); params that are functions of the
wildcards are evaluated for every existing job's wildcards, as Snakemake does when it compares a job's params with
the ones recorded for its outputs.
"""

from __future__ import annotations

import inspect
import itertools
from pathlib import Path

import pytest
import yaml

from cxrgen.config import load_config, load_rule_sections, section_for

ROOT = Path(__file__).resolve().parents[2]
RULE_SECTIONS = load_rule_sections(ROOT / "workflow" / "config_sections.yaml")
CONFIG_PARAMS = ("cfg", "config")  # and any *_cfg: params carrying a piece of the config


def _carries_config(param: str) -> bool:
    return param in CONFIG_PARAMS or param.endswith("_cfg")


def _entry(rule: str, param: str) -> str:
    return rule if param == "cfg" else f"{rule}.{param}"


# branches the demo config switches off to keep within its time budget: parsed here so their rules are checked too
EVERY_BRANCH = {"medcodi": {"utility": {"enabled": True}}}


def parsed_params(tmp_path: Path, overlay: dict | None = None) -> tuple[dict, dict]:
    """(config, {(rule, param, wildcards): value}) of the workflow parsed with config.yaml (+ ``overlay``).
    Function params taking only the wildcards are evaluated for every combination of the base config's wildcard
    values; functions of a job's input/output (paths) are left out."""
    from snakemake.api import SnakemakeApi
    from snakemake.iocontainers import Wildcards
    from snakemake.settings.types import ConfigSettings, OutputSettings, Quietness, ResourceSettings, StorageSettings

    configfiles = [ROOT / "config.yaml", tmp_path / "every_branch.yaml"]
    configfiles[-1].write_text(yaml.safe_dump(EVERY_BRANCH))
    if overlay:
        configfiles.append(tmp_path / "overlay.yaml")
        configfiles[-1].write_text(yaml.safe_dump(overlay))
    base = load_config(ROOT / "config.yaml")
    values = {"variant": list(base["variants"]), "ldm_variant": ["cheff", "diffcxr"], "source": ["mimic"],
              "shard": ["0000"], "experiment": list(base["downstream"]["experiments"]),
              "seed": [str(s) for s in base["downstream"]["seeds"]],
              "icu_arm": list(base["icu"]["evaluation"]["arms"]),
              "icu_seed": [str(s) for s in range(len(base["icu"]["evaluation"]["seeds"]))],
              "prompting": ["multi", "single"], "view": ["frontal", "lateral"]}
    found = {}
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow_api = api.workflow(snakefile=ROOT / "Snakefile", resource_settings=ResourceSettings(),
                                    config_settings=ConfigSettings(configfiles=configfiles),
                                    storage_settings=StorageSettings(), workdir=tmp_path)
        workflow = workflow_api._workflow  # parses the Snakefile; no public accessor for the rules' params
        for rule in workflow.rules:
            names = sorted(rule.wildcard_names)
            for combo in itertools.product(*(values[n] for n in names)):
                wildcards = Wildcards(fromdict=dict(zip(names, combo, strict=True)))
                for param, value in (rule.params.items() if rule.params else ()):
                    if callable(value):
                        if len(inspect.signature(value).parameters) != 1:
                            continue
                        value = value(wildcards)
                    found[(rule.name, param, combo)] = value
        config = dict(workflow.config)
    return config, found


@pytest.fixture(scope="module")
def base_params(tmp_path_factory):
    return parsed_params(tmp_path_factory.mktemp("base"))


def test_every_rule_with_config_params_is_narrowed_by_the_table(base_params):
    config, params = base_params
    carriers = {(rule, param) for rule, param, _ in params if _carries_config(param)}
    assert {"train_ldm", "generate", "build_prompts", "run_downstream"} <= {rule for rule, _ in carriers}
    assert {_entry(rule, param) for rule, param in carriers} == set(RULE_SECTIONS)  # no missing, no stale entries
    for (rule, param, combo), value in params.items():
        if not _carries_config(param):
            continue
        expected = section_for(config, RULE_SECTIONS, _entry(rule, param))
        if rule == "generate":  # minus the train twins for variants the downstream experiments do not use
            assert value == {**expected, "sets": value["sets"]} and set(value["sets"]) <= set(expected["sets"])
        elif rule == "run_downstream" and param == "cfg":  # plus its own experiment's subsection
            assert {k: v for k, v in value.items() if k in expected} == expected
            assert set(value) - set(expected) == {e for e in config["downstream"]["experiments"] if e in value}
            assert len(set(value) - set(expected)) == 1
        elif rule == "run_view_downstream" and param == "experiment_cfg":  # its own experiment's subsection only
            experiment = dict(zip(sorted(("experiment", "seed", "view")), combo, strict=True))["experiment"]
            if experiment in config["medcodi"]["utility"]["experiments"]:  # other combinations are no jobs
                assert value == expected[experiment]
        else:
            assert value == expected, (rule, param)


@pytest.mark.parametrize(("overlay", "changed"), [
    # a new variant (its own LDM, and DKIM on the cheff LDM): no existing job's params change, only the summary's
    # record of the whole config and the list of trained models (and their cards' evaluations); init_tracking's params
    # never change with the config; the sample sheet (off in the demo) shows every variant unless
    # generate.sample_sheet.variants names them
    ({"variants": {"diffcxr-lnfs": {"lnfs": True}, "diffcxr-dkim": {"dkim": True}}},
     {"write_summary", "report_training", "write_model_cards", "draw_sample_sheet"}),
    ({"generate": {"n_per_finding": 2}}, {"write_summary", "build_prompts"}),
    ({"generate": {"reid_probe": {"seeds": 2}}}, {"write_summary", "build_prompts"}),
    ({"generate": {"steps": 3}}, {"write_summary", "generate"}),
    # MedCoDi-M any-to-any images: the sampler settings regenerate the images; no LDM retrains
    ({"medcodi": {"generation": {"steps": 3}}}, {"write_summary", "generate_medcodi_images"}),
    ({"ldm": {"views": ["PA"]}}, {"write_summary", "train_ldm", "train_dkim"}),
    # the sample grids are drawn from the saved models: new grid settings retrain nothing
    ({"ldm": {"sample_grid": {"steps": 7}}}, {"write_summary", "sample_ldm_grid"}),
    ({"dkim": {"sample_grid": {"columns": 1}}}, {"write_summary", "sample_dkim_grid"}),
    ({"inpainting": {"jump_n_sample": 3}}, {"write_summary", "inpaint_images"}),
    # the report labels' scoring re-evaluates the generated reports without redrawing them
    ({"medcodi": {"report_generation": {"evaluation": {"examples": 2}}}}, {"write_summary", "evaluate_medcodi_reports"}),
    ({"evaluator": {"views": ["PA"]}, "downstream": {"seeds": [0, 1], "scarcity": {"total": 40}}},
     {"write_summary", "train_evaluator", "run_downstream:scarcity", "run_view_downstream:scarcity"}),
    ({"medcodi": {"utility": {"twins": {"n": 3}}}}, {"write_summary", "generate_medcodi_twins"}),
    # the re-identification audit's settings re-run the audits, never the verifier's training
    ({"reid": {"audit": {"pixel_resolution": 32}}}, {"write_summary", "evaluate_reidentification"}),
])
def test_changing_a_key_changes_only_the_params_of_rules_that_read_it(tmp_path, base_params, overlay, changed):
    _, before = base_params
    _, after = parsed_params(tmp_path, overlay)
    differing = set()
    for (rule, param, combo), value in before.items():
        if after[(rule, param, combo)] != value:
            # combo = (experiment, seed[, view]): the downstream jobs are named by their experiment
            differing.add(f"{rule}:{combo[0]}" if rule in ("run_downstream", "run_view_downstream") else rule)
    assert differing == changed
