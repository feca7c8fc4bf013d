"""Stage ``report_medcodi``: the MedCoDi-M (XGeM) report fragment ``medcodi.md`` (data, retrieval, paper Tables 2-6,
Fig. 7, computed caveats), its short summary paragraph, ``medcodi.json`` and the figures (library:
:mod:`cxrgen.report.medcodi`)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from cxrgen.report import read_section_json
from cxrgen.report.medcodi import (
    MedcodiInputs,
    fid_figure,
    hamming_figure,
    medcodi_markdown,
    medcodi_summary_json,
    missing_figure,
    summary_markdown,
)

log = logging.getLogger(__name__)


def _view_prompting(name: str) -> tuple[str, str]:
    view, _, prompting = name.partition("-")
    return view, prompting


def report_medcodi(*, studies_json: Path | str | None, encoders_metrics: Path | str | None,
                   model_metrics: dict[str, Path | str], image_evals: dict[str, Path | str],
                   report_evals: dict[str, Path | str], joint_json: Path | str | None, hamming_png: Path | str | None,
                   out_md: Path | str, out_summary: Path | str, out_json: Path | str, out_fid: Path | str,
                   out_hamming: Path | str, out_grids: dict[str, Path | str] | None = None,
                   utility_fragments: dict[str, Path | str] | None = None) -> str:
    """Write the report files. ``model_metrics``: model name -> its metrics.json; ``image_evals``: ``{view}-
    {prompting}`` -> eval json (its sample grid is the ``.png`` next to it, copied to ``out_grids[name]``);
    ``report_evals``: prompting -> eval json; ``hamming_png``: rule evaluate_joint_generation's Fig. 7 (copied; drawn
    from joint.json when absent); ``utility_fragments``: view -> rule evaluate_medcodi_utility's markdown, appended as
    the per-view utility section. Returns the markdown."""
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    inputs = MedcodiInputs(studies=read_section_json(studies_json), encoders=read_section_json(encoders_metrics),
                           models={name: read_section_json(path) for name, path in model_metrics.items()},
                           images={_view_prompting(name): read_section_json(path) for name, path in image_evals.items()},
                           reports={prompting: read_section_json(path) for prompting, path in report_evals.items()},
                           joint=read_section_json(joint_json))

    def link(path: Path | str) -> str:
        return os.path.relpath(path, out_md.parent)

    fid_figure(inputs.images, out_fid)
    if hamming_png is not None and Path(hamming_png).is_file():
        shutil.copyfile(hamming_png, out_hamming)
    else:
        hamming_figure(inputs.joint, out_hamming)
    grids = {}
    for name, target in (out_grids or {}).items():
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        source = Path(image_evals[name]).with_suffix(".png") if name in image_evals else None
        if source is not None and source.is_file():
            shutil.copyfile(source, target)
        else:
            missing_figure(target, f"sample grid {name}")
        grids[name] = link(target)
    text = medcodi_markdown(inputs, hamming_figure=link(out_hamming), fid_figure=link(out_fid), grids=grids)
    text += utility_section(utility_fragments or {})
    out_md.write_text(text, encoding="utf-8")
    Path(out_summary).write_text(summary_markdown(inputs, os.path.relpath(out_md, Path(out_summary).parent)),
                                 encoding="utf-8")
    Path(out_json).write_text(json.dumps(medcodi_summary_json(inputs), indent=1, ensure_ascii=False))
    return text


def utility_section(fragments: dict[str, Path | str]) -> str:
    """The per-view utility experiments (rule evaluate_medcodi_utility's markdown per view, headings demoted under one
    section); empty when the experiments are switched off (medcodi.utility.enabled)."""
    if not fragments:
        return ""
    parts = ["\n## Utility experiments per view (synthetic twins from the multi-prompt view LDMs)\n"]
    for view, path in fragments.items():
        body = Path(path).read_text(encoding="utf-8").strip()
        body = "\n".join("##" + line if line.startswith("#") else line for line in body.splitlines())
        parts.append(f"\n### {view}\n\n{body}\n")
    return "".join(parts)
