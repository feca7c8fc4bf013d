"""Rule ``write_summary``: ``results/summary.md``, every headline table for terminal readers, from the markdown
fragments of the report stages. Imports no torch (it runs after everything and must start fast)."""

from __future__ import annotations

from pathlib import Path

from cxrgen.evaluate.tables import summary_markdown
from cxrgen.train.tracking import config_digest


def write_summary(*, fragments: list[Path | str], out_path: Path | str, demo: bool, config: dict) -> str:
    """Write the summary (run facts from ``config``, the comparability caveat, then the fragments) to ``out_path``;
    returns its text."""
    header = {"seed": str(config.get("seed")), "config digest": config_digest(config),
              "store resolutions": ", ".join(f"{r} px" for r in config["ingest"]["resolutions"]),
              "variants": ", ".join(config.get("variants", {"cheff": {}}))}
    out_path = Path(out_path)
    text = summary_markdown(fragments, out_path.parent, demo=demo, header=header)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text, encoding="utf-8")
    return text
