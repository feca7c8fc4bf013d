"""Rule ``write_model_cards``: at the end of the DAG, every trained model's card (written next to its weights by the
trainer, :mod:`cxrgen.train.model_card`) completed with the evaluation results that concern it, as
``results/reports/model_cards/<model>.md``, and an index that the summary links. Imports no torch: it only reads JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cxrgen.train.model_card import (
    CARD_JSON,
    CardContext,
    build_card,
    card_file_name,
    complete_card,
    render_markdown,
)

log = logging.getLogger(__name__)


def write_model_cards(*, models: dict[str, Path | str], evaluations: dict[str, dict[str, Path | str]], demo: bool,
                      out_dir: Path | str, index_path: Path | str) -> dict[str, Path]:
    """``models``: model name -> published model directory; ``evaluations``: model name -> {label: evaluation json}
    (the metric harness' outputs that measured that model); ``demo``: the run used the embedded demo corpus.
    Writes ``<out_dir>/<card_file_name(model)>`` per model and the index ``index_path`` (links relative to it).
    Returns model name -> card path."""
    out_dir, index_path = Path(out_dir), Path(index_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, rows = {}, []
    for name, model_dir in models.items():
        model_dir = Path(model_dir)
        card_path = model_dir / CARD_JSON
        if card_path.is_file():
            card = json.loads(card_path.read_text())
            note = ""
        else:  # a model published before its trainer wrote cards: what its directory tells
            log.warning("%s has no %s (published before model cards); rerun its trainer for the full card",
                        name, CARD_JSON)
            card = build_card(CardContext(name, {}, {}, None), model_dir)
            note = " (no training-time card: data digests and config unknown)"
        card = complete_card(card, evaluations.get(name, {}), demo=demo)
        path = out_dir / card_file_name(name)
        path.write_text(render_markdown(card), encoding="utf-8")
        written[name] = path
        rows.append(_index_row(name, card, path.relative_to(index_path.parent).as_posix() if path.is_relative_to(
            index_path.parent) else path.as_posix(), note))
    lines = ["# Model cards", "",
             "Every trained model's card: data and split digests, config hash, training steps and time, metrics with "
             "their protocol, the evaluation results that concern it, intended use and limits"
             + (" (demo-scale models on synthetic phantoms: not for clinical use)." if demo
                else " (not for clinical use)."), "",
             "| model | kind | paper | steps | config sha256 | evaluations |", "|---|---|---|---|---|---|", *rows, ""]
    index_path.parent.mkdir(parents=True, exist_ok=True)
    index_path.write_text("\n".join(lines), encoding="utf-8")
    return written


def _index_row(name: str, card: dict, link: str, note: str) -> str:
    model, training = card["model"], card.get("training", {})
    digest = (training.get("config_sha256") or "")[:12]
    evaluations = ", ".join(card.get("evaluation", {})) or "—"
    return (f"| [{name}]({link}){note} | {model.get('kind', '')} | {model.get('paper', '')} | "
            f"{training.get('steps', '—')} | {f'`{digest}`' if digest else '—'} | {evaluations} |")
