"""Rule ``report_avatls``: report retrieval with and without the AVA-TLS squeeze, as a markdown fragment
(:mod:`cxrgen.report.avatls`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cxrgen.report.avatls import avatls_markdown


def _clip_metrics(model_dir: Path | str) -> dict:
    path = Path(model_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {model_dir} is not a finished CLIP model directory")
    return json.loads(path.read_text())


def report_avatls(*, baseline_dir: Path | str, avatls_dir: Path | str, out_path: Path | str) -> str:
    """Write :func:`~cxrgen.report.avatls.avatls_markdown` of the two CLIP model directories to ``out_path``
    (atomically); returns the text."""
    text = avatls_markdown(_clip_metrics(baseline_dir), _clip_metrics(avatls_dir))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out_path)
    return text
