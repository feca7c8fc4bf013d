"""The layout rule of ``src/cxrgen/stages/``: one module per rule, and a stage never imports another stage (shared code
lives in the library), read from the source with ``ast`` so function-level imports count too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SRC = ROOT / "src" / "cxrgen"
STAGES = sorted(p for p in (SRC / "stages").glob("*.py") if p.name != "__init__.py")

# A stage never imports another stage: no exceptions left.
KNOWN_STAGE_IMPORTS: set[tuple[str, str]] = set()


# Rules that run another rule's entry function with other inputs: finetune_sr is train_sr in mode "decoded" (Cheff
# §5 fine-tunes the same model), train_clip_avatls is train_clip with the squeeze attached (Diff-CXR AVA-TLS),
# run_view_downstream is run_downstream on one view's real images and MedCoDi-M twins (MedCoDi-M utility per view).
KNOWN_RULES_WITHOUT_MODULE = {"finetune_sr", "train_clip_avatls", "run_view_downstream"}


def rule_scripts() -> dict[str, Path]:
    """Every rule of workflow/rules/*.smk with its adapter script."""
    rules = {}
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        # rules may be indented (inside `if <branch>_ENABLED:` blocks)
        for block in re.split(r"^(?=[ \t]*rule \w+:)", smk.read_text(), flags=re.M):
            name = re.match(r"\s*rule (\w+):", block)
            script = re.search(r"^[ \t]+script:\s*\n\s*\"([^\"]+)\"", block, flags=re.M)
            if name and script:
                rules[name.group(1)] = (smk.parent / script.group(1)).resolve()
    return rules


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def imported_stages(path: Path) -> set[str]:
    """Names of the stage modules ``path`` imports, at any depth (``from cxrgen.stages.x import …``,
    ``from cxrgen.stages import x``, ``import cxrgen.stages.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("cxrgen.stages."):
                found.add(node.module.split(".")[2])
            elif node.module == "cxrgen.stages":
                found.update(alias.name for alias in node.names)
            elif node.module == "cxrgen" and any(alias.name == "stages" for alias in node.names):
                found.add("*")
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[2] for alias in node.names
                         if alias.name.startswith("cxrgen.stages."))
    return found


def test_scanner_sees_every_import_form(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from cxrgen.stages.a import f\nimport cxrgen.stages.b\n\n\ndef g():\n"
                      "    from cxrgen.stages import c\n    from cxrgen import stages\n")
    assert imported_stages(module) == {"a", "b", "c", "*"}


@pytest.mark.parametrize("path", STAGES, ids=[p.stem for p in STAGES])
def test_a_stage_imports_no_other_stage(path):
    unexpected = {other for other in imported_stages(path) if (path.stem, other) not in KNOWN_STAGE_IMPORTS}
    assert not unexpected, f"stages/{path.name} imports stage module(s) {sorted(unexpected)}; move the shared code " \
                           "into the library"


def test_the_library_imports_no_stage():
    library = [p for p in SRC.rglob("*.py") if p.parent.name != "stages"]
    offenders = {(p.stem, other) for p in library for other in imported_stages(p)} - KNOWN_STAGE_IMPORTS
    assert not offenders, offenders


def test_the_known_violations_still_exist():
    """An entry fixed in the code must leave the list (so the list only ever shrinks to empty)."""
    def source(name: str) -> Path:
        stage = SRC / "stages" / f"{name}.py"
        return stage if stage.is_file() else SRC / f"{name}.py"

    present = {(name, other) for name, other in KNOWN_STAGE_IMPORTS if other in imported_stages(source(name))}
    assert present == KNOWN_STAGE_IMPORTS, f"fixed, remove from KNOWN_STAGE_IMPORTS: {KNOWN_STAGE_IMPORTS - present}"


def test_every_rule_calls_the_stage_module_named_after_it():
    rules = rule_scripts()
    assert {"train_ldm", "write_summary", "init_tracking", "extract_real_features"} <= set(rules)  # parser sanity
    elsewhere = {rule for rule, script in rules.items() if f"cxrgen.stages.{rule}" not in imported_modules(script)}
    assert elsewhere <= KNOWN_RULES_WITHOUT_MODULE, f"entry function outside stages/<rule>.py: {elsewhere}"
    assert elsewhere >= KNOWN_RULES_WITHOUT_MODULE, (
        f"moved, remove from KNOWN_RULES_WITHOUT_MODULE: {KNOWN_RULES_WITHOUT_MODULE - elsewhere}")
