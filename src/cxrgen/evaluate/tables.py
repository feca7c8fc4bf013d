"""Result tables of the evaluation twice: a self-contained HTML page (shown inside ``snakemake --report``) and a
markdown fragment (collected into ``results/summary.md``). Every table carries its protocol lines.
"""

from __future__ import annotations

import html
import math
import os
import re
from pathlib import Path

import pandas as pd

DEMO_CAVEAT = ("Demo numbers are not comparable with paper numbers: they come from phantom radiographs, CPU-sized "
               "models, a few hundred training steps and small n; only numbers computed under one protocol "
               "(backbone, n, resolution, reference split) can be compared with each other.")


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        if value != 0 and (abs(value) < 10 ** -(digits - 1) or abs(value) >= 10**5):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}f}"
    return str(value)


def with_ci(entry: dict | None, digits: int = 3, scale: float = 1.0) -> str:
    """``value [low, high]`` of an ``{value, ci_low, ci_high}`` dict."""
    if not entry or entry.get("value") is None:
        return "–"

    def s(v):
        return fmt(None if v is None else v * scale, digits)

    if entry.get("ci_low") is None:
        return s(entry["value"])
    return f"{s(entry['value'])} [{s(entry['ci_low'])}, {s(entry['ci_high'])}]"


class Fragment:
    """A titled section: paragraphs, protocol lists, tables and figure links."""

    def __init__(self, title: str):
        self.title = title
        self._md: list[str] = [f"# {title}", ""]
        self._html: list[str] = []

    def para(self, text: str) -> None:
        self._md += [text, ""]
        self._html.append(f"<p>{html.escape(text)}</p>")

    def heading(self, text: str) -> None:
        self._md += [f"## {text}", ""]
        self._html.append(f"<h2>{html.escape(text)}</h2>")

    def protocol(self, items: dict[str, str]) -> None:
        self._md += ["Protocol:", ""] + [f"- {k}: {v}" for k, v in items.items()] + [""]
        lis = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in items.items())
        self._html.append(f"<div class='protocol'>Protocol<ul>{lis}</ul></div>")

    def table(self, frame: pd.DataFrame, caption: str | None = None) -> None:
        columns = [str(c) for c in frame.columns]
        rows = [[fmt(v) for v in row] for row in frame.itertuples(index=False)]
        if caption:
            self._md += [f"**{caption}**", ""]
        self._md.append("| " + " | ".join(_md_cell(c) for c in columns) + " |")
        self._md.append("|" + "|".join("---" for _ in columns) + "|")
        self._md += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
        self._md.append("")
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td{_align(v)}>{html.escape(v)}</td>" for v in row) + "</tr>"
                       for row in rows)
        self._html.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, path: Path | str, markdown_dir: Path | str, alt: str) -> None:
        """A markdown link to a figure file (relative to the markdown file); the HTML page does not embed it (the
        figure is its own report entry)."""
        self._md += [f"![{alt}]({os.path.relpath(path, markdown_dir)})", ""]

    def markdown(self) -> str:
        return "\n".join(self._md).rstrip() + "\n"

    def html(self) -> str:
        style = ("body{font-family:sans-serif;margin:1em 2em;color:#222}"
                 "table{border-collapse:collapse;margin:0.5em 0 1.5em}caption{text-align:left;font-weight:bold;"
                 "padding-bottom:4px}th,td{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:right}"
                 "th:first-child,td:first-child,td.t{text-align:left}.protocol{background:#f5f5f5;padding:4px 8px;"
                 "font-size:13px}")
        return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{style}</style></head><body>"
                f"<h1>{html.escape(self.title)}</h1>\n" + "\n".join(self._html) + "\n</body></html>\n")

    def write(self, html_path: Path | str | None, markdown_path: Path | str | None) -> None:
        for path, text in ((html_path, self.html), (markdown_path, self.markdown)):
            if path is not None:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).write_text(text(), encoding="utf-8")


def _align(cell: str) -> str:
    """Text cells align left, numbers (and "value [low, high]") right."""
    return "" if re.match(r"^[-+–∞\d.]", cell) else " class='t'"


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def rebase_links(markdown: str, from_dir: Path, to_dir: Path) -> str:
    """Relative links of a markdown text written in ``from_dir``, rewritten to work from ``to_dir``."""

    def fix(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"^[a-z]+:|^/|^#", target):
            return match.group(0)
        return match.group(1) + os.path.relpath(Path(from_dir) / target, to_dir) + match.group(3)

    return _LINK.sub(fix, markdown)


def demote_headings(markdown: str, top: int = 2) -> str:
    """Shift every heading so the fragment's highest heading has level ``top`` (fragments written with ``#`` or
    ``##`` tops end up as sibling sections of the summary)."""
    levels = [len(m) for m in re.findall(r"^(#+) ", markdown, flags=re.M)]
    if not levels:
        return markdown
    shift = top - min(levels)
    return re.sub(r"^(#+) ", lambda m: "#" * max(1, len(m.group(1)) + shift) + " ", markdown, flags=re.M)


def summary_markdown(fragments: list[Path | str], summary_dir: Path | str, *, demo: bool,
                     header: dict[str, str]) -> str:
    """The text of ``results/summary.md`` (written into ``summary_dir``): a header (run facts), the comparability
    caveat, then every fragment as a ``##`` section (headings shifted, see :func:`demote_headings`) with relative links
    rebased to ``summary_dir``."""
    lines = ["# cxrgen summary", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()] + [""]
    lines += [("**This run used the embedded demo corpus.** " if demo else "") + DEMO_CAVEAT, ""]
    lines += ["Full report with figures: `snakemake --report results/report.html`.", ""]
    for fragment in fragments:
        fragment = Path(fragment)
        text = fragment.read_text(encoding="utf-8")
        lines += [demote_headings(rebase_links(text, fragment.parent, Path(summary_dir))).rstrip(), ""]
    return "\n".join(lines).rstrip() + "\n"
