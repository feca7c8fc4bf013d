"""The model layer has no import cycle: the diffusion and DKIM modules do not import each other, and nothing in
cxrgen.models imports the layers above it (cxrgen.pipeline assembles the cascade, cxrgen.stages run it)."""

import ast
import subprocess
import sys
from pathlib import Path

import cxrgen

PACKAGE = Path(cxrgen.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """Every module a source file imports anywhere (top level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_diffusion_and_dkim_do_not_import_each_other():
    assert not any(m.startswith("cxrgen.models.dkim") for m in _imported_modules(PACKAGE / "models/diffusion.py"))
    assert not any(m.startswith("cxrgen.models.diffusion") for m in _imported_modules(PACKAGE / "models/dkim.py"))
    for module, other in (("cxrgen.models.diffusion", "cxrgen.models.dkim"),
                          ("cxrgen.models.dkim", "cxrgen.models.diffusion")):
        code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('cxrgen')))"
        loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        assert other not in loaded and "cxrgen.pipeline" not in loaded and "cxrgen.stages" not in loaded, loaded


def test_the_model_layer_never_imports_the_layers_above():
    for path in sorted((PACKAGE / "models").glob("*.py")):
        upward = {m for m in _imported_modules(path) if m.startswith(("cxrgen.pipeline", "cxrgen.stages"))}
        assert not upward, f"{path.name} imports {upward}"
