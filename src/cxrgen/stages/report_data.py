"""Rule ``report_data``: data report of the unified store — count reconciliation, rejections, label prevalence,
cohort mix, technical mix, sizes, storage format and resampling check, duplicates and a sample grid per source.

Writes one self-contained HTML file (figures embedded as base64 PNG, so it also works inside ``snakemake --report``),
a markdown twin (tables only) and the sample grid PNG. Privacy: it reads only shareable outputs of ``unify_store`` —
the pseudonymised index, the summary and the *source* and *reason* columns of the shareable rejection list
(``results/store/rejections.parquet``; the manifest with source paths stays under ``results/ingest/``); report texts
never reach the output.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import re
import textwrap
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless cluster nodes; set before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS  # noqa: E402
from cxrgen.privacy import AGE_BUCKETS  # noqa: E402
from cxrgen.sources.base import SEXES, SPLITS, VIEWS  # noqa: E402
from cxrgen.store.codec import blob_format  # noqa: E402
from cxrgen.store.shards import ShardStore, shard_path  # noqa: E402

log = logging.getLogger(__name__)

#: Sample grid geometry: one row per source, GRID_PER_SOURCE images per row, each cell GRID_CELL_PX square-ish.
GRID_PER_SOURCE = 6
GRID_DPI = 100
GRID_CELL_PX = 240  # cell width = image height in px; a row is GRID_ROW_PX high (image + caption)
GRID_ROW_PX = 300
GRID_LABEL_PX = 140  # left column with the source name
OK, FAIL = "✔", "✘"
_AGE_ORDER = [name for _, _, name in AGE_BUCKETS] + ["unknown"]
_MISSING = "n/a"


# --------------------------------------------------------------------------------------------------- public API


def report_data(index_path: Path | str, rejections_path: Path | str, summary_path: Path | str, *,
                store_root: Path | str, resolution: int, html_path: Path | str, grid_path: Path | str,
                markdown_path: Path | str, seed: int = 0) -> None:
    """Read the unified store's index, shareable rejection list and summary (rule ``unify_store``) and write the
    report (:func:`write_data_report`)."""
    write_data_report(pd.read_parquet(index_path), pd.read_parquet(rejections_path, columns=["source", "reason"]),
                      json.loads(Path(summary_path).read_text()), store_root=Path(store_root),
                      resolution=int(resolution), html_path=Path(html_path), grid_path=Path(grid_path),
                      markdown_path=Path(markdown_path), seed=seed)


def write_data_report(index: pd.DataFrame, rejections: pd.DataFrame, summary: dict, store_root: Path,
                      resolution: int, html_path: Path, grid_path: Path, markdown_path: Path, seed: int = 0) -> None:
    """Write the HTML report, its markdown twin and the sample grid PNG (one row per source, see
    :data:`GRID_ROW_PX`). Deterministic given ``seed``; tolerates empty frames and missing resolutions."""
    index = index.reset_index(drop=True)
    sources = _sources(index, rejections, summary)
    html_path, grid_path, markdown_path = Path(html_path), Path(grid_path), Path(markdown_path)
    for path in (html_path, grid_path, markdown_path):
        path.parent.mkdir(parents=True, exist_ok=True)

    doc = _Document("cxrgen data report")
    doc.para(f"{len(index)} images ingested from {len(sources)} source(s); "
             f"{int(summary.get('total_rejected', 0))} source files rejected; "
             f"{int(summary.get('duplicate_images_dropped', 0))} duplicate images dropped.")
    _section_counts(doc, index, rejections, summary, sources)
    _section_rejections(doc, rejections, sources)
    _section_splits(doc, index, summary, sources)
    _section_labels(doc, index)
    _section_views(doc, index, sources)
    _section_demographics(doc, index, sources)
    _section_technical(doc, index, sources)
    _section_sizes(doc, index, sources)
    _section_storage(doc, index, Path(store_root))
    _section_duplicates(doc, summary)

    grid_note = write_sample_grid(index, sources, Path(store_root), resolution, grid_path, seed=seed)
    doc.heading("Sample images")
    doc.para(grid_note)
    doc.image(grid_path.read_bytes(), "sample grid", markdown_link=os.path.relpath(grid_path, markdown_path.parent))

    html_path.write_text(doc.render_html(), encoding="utf-8")
    markdown_path.write_text(doc.render_markdown(), encoding="utf-8")
    log.info("data report: %s, %s, %s", html_path, markdown_path, grid_path)


def write_sample_grid(index: pd.DataFrame, sources: list[str], store_root: Path, resolution: int, grid_path: Path,
                      seed: int = 0, per_source: int = GRID_PER_SOURCE) -> str:
    """Random training images per source (any split if a source has no training images), read from the store.
    One row per entry of ``sources`` (a text placeholder for a source without images). Returns a one-line note."""
    used_res = _pick_resolution(index, resolution)
    n_rows = max(len(sources), 1)
    width_px = GRID_LABEL_PX + per_source * GRID_CELL_PX
    fig = plt.figure(figsize=(width_px / GRID_DPI, n_rows * GRID_ROW_PX / GRID_DPI), dpi=GRID_DPI)
    store = ShardStore(store_root, index) if used_res is not None and len(index) else None
    unreadable = 0
    if not sources:
        fig.text(0.5, 0.5, "no sources", ha="center", va="center")
    for r, source in enumerate(sources):
        row_bottom = 1 - (r + 1) / n_rows
        fig.text(GRID_LABEL_PX / 2 / width_px, row_bottom + 0.5 / n_rows, source, ha="center", va="center",
                 fontsize=11, weight="bold", rotation=90)
        positions = _sample_positions(index, source, seed, per_source)
        if not positions:
            fig.text((GRID_LABEL_PX + per_source * GRID_CELL_PX / 2) / width_px, row_bottom + 0.5 / n_rows,
                     "no ingested images", ha="center", va="center", fontsize=10, color="0.4")
        for c, pos in enumerate(positions):
            ax = fig.add_axes((
                (GRID_LABEL_PX + c * GRID_CELL_PX + 4) / width_px, row_bottom + 4 / (n_rows * GRID_ROW_PX),
                (GRID_CELL_PX - 8) / width_px, (GRID_CELL_PX - 8) / (n_rows * GRID_ROW_PX)))
            ax.set_xticks([])
            ax.set_yticks([])
            image = _read_or_none(store, pos, used_res)
            if image is None:
                unreadable += 1
                ax.text(0.5, 0.5, "not readable", ha="center", va="center", transform=ax.transAxes, color="0.4")
            else:
                ax.imshow(image, cmap="gray", vmin=0, vmax=65535, interpolation="antialiased")
            ax.set_title(_caption(index.iloc[pos]), fontsize=7, loc="left", pad=2)
    if store is not None:
        store.close()
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(grid_path, dpi=GRID_DPI, format="png", metadata={"Software": None})
    plt.close(fig)

    if used_res is None:
        note = "No stored resolution found in the index: the grid has placeholders only."
    elif used_res != resolution:
        note = f"Resolution {resolution}px is not in the store; shown at {used_res}px."
    else:
        note = f"Up to {per_source} random training images per source at {used_res}px (seed {seed})."
    if unreadable:
        note += f" {unreadable} image(s) could not be read from the store."
    return note


# --------------------------------------------------------------------------------------------------- sections


def _section_counts(doc: _Document, index: pd.DataFrame, rejections: pd.DataFrame, summary: dict,
                    sources: list[str]) -> None:
    doc.heading("Images per source and count reconciliation")
    doc.para("Every source file ends either in the index or in the rejection manifest: files seen = ingested + "
             "rejected. The check also compares the summary with the index and rejection files themselves. "
             "Metadata rows without a file are listed apart (they are not files on disk).")
    per_source = summary.get("sources", {})
    index_counts = _col(index, "source").value_counts()
    rej_reason = _col(rejections, "reason")
    rej_counts = _col(rejections, "source")[rej_reason != "missing_file"].value_counts()
    rows = []
    for source in sources:
        s = per_source.get(source)
        n_index, n_rej = int(index_counts.get(source, 0)), int(rej_counts.get(source, 0))
        if s is None:
            rows.append([source, _MISSING, n_index, n_rej, _MISSING, _MISSING, FAIL + " not in summary"])
            continue
        ok = (s["files_seen"] == s["ingested"] + s["rejected"] and s["ingested"] == n_index
              and s["rejected"] == n_rej)
        rows.append([source, s["files_seen"], s["ingested"], s["rejected"], s.get("metadata_rows_without_file", 0),
                     s.get("patients", 0), OK if ok else f"{FAIL} index has {n_index}, rejections {n_rej}"])
    table = pd.DataFrame(rows, columns=["source", "files seen", "ingested", "rejected", "metadata rows without file",
                                        "patients", "reconciled"]).set_index("source")
    if len(table):
        numeric = table.drop(columns="reconciled").apply(pd.to_numeric, errors="coerce")
        all_ok = all(str(v).startswith(OK) for v in table["reconciled"])
        total = [int(numeric[c].sum()) for c in numeric.columns] + [OK if all_ok else FAIL]
        table.loc["total"] = total
    doc.table(table)


def _section_rejections(doc: _Document, rejections: pd.DataFrame, sources: list[str]) -> None:
    doc.heading("Rejections by reason")
    if not len(rejections):
        doc.para("No rejections.")
        return
    table = pd.crosstab(_col(rejections, "reason").fillna(_MISSING), _col(rejections, "source"))
    table = table.reindex(columns=[s for s in sources if s in table.columns], fill_value=0)
    table["total"] = table.sum(axis=1)
    table.index.name = "reason"
    doc.table(table)


def _section_splits(doc: _Document, index: pd.DataFrame, summary: dict, sources: list[str]) -> None:
    doc.heading("Splits")
    split, patient, source_col = _col(index, "split"), _col(index, "patient_pid"), _col(index, "source")
    rows = {}
    for source in sources + ["all"]:
        in_source = source_col == source if source != "all" else pd.Series(True, index=index.index)
        row = {}
        for s in SPLITS:
            mask = in_source & (split == s)
            row[f"{s} images"] = int(mask.sum())
            row[f"{s} patients"] = int(patient[mask].nunique())
        rows[source] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "source"
    doc.table(table)
    leaks = int((split.groupby(patient).nunique() > 1).sum()) if len(index) else 0
    leaks_summary = int(summary.get("patients_in_more_than_one_split", 0))
    mark = OK if leaks == 0 and leaks_summary == 0 else FAIL
    doc.para(f"{mark} patients in more than one split: {leaks} in the index ({leaks_summary} in the summary).")


def _section_labels(doc: _Document, index: pd.DataFrame) -> None:
    doc.heading("Label prevalence per split (raw labels)")
    doc.para("Raw CheXpert-convention labels before the label policy: positive (1), uncertain (-1) and blank "
             "(not mentioned / not annotated). Percentages are of the split's images.")
    split = _col(index, "split")
    kinds = {"pos": lambda v: v == 1.0, "unc": lambda v: v == -1.0, "blank": np.isnan}
    fractions = {k: np.full((len(CHEXPERT_LABELS), len(SPLITS)), np.nan) for k in kinds}
    table = pd.DataFrame(index=pd.Index(CHEXPERT_LABELS, name="label"))
    for j, s in enumerate(SPLITS):
        mask = (split == s).to_numpy()
        n = int(mask.sum())
        for i, col in enumerate(LABEL_COLUMNS):
            values = pd.to_numeric(_col(index, "raw_" + col), errors="coerce").to_numpy(dtype=float)[mask]
            for kind, test in kinds.items():
                count = int(test(values).sum())
                fractions[kind][i, j] = count / n if n else np.nan
                table.loc[CHEXPERT_LABELS[i], f"{s} {kind}"] = f"{count} ({100 * count / n:.1f}%)" if n else "–"
    fig, axes = plt.subplots(1, 3, figsize=(11, 5.2), sharey=True)
    for ax, (kind, title) in zip(axes, (("pos", "positive"), ("unc", "uncertain"), ("blank", "blank")), strict=True):
        values = fractions[kind]
        ax.imshow(np.nan_to_num(values, nan=0.0), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(SPLITS)), SPLITS)
        ax.set_title(f"{title} (fraction)")
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if np.isnan(v) or v < 0.5 else "black")
    axes[0].set_yticks(range(len(CHEXPERT_LABELS)), CHEXPERT_LABELS, fontsize=8)
    fig.tight_layout()
    doc.figure(fig, "label prevalence heatmap")
    doc.table(table)


def _section_views(doc: _Document, index: pd.DataFrame, sources: list[str]) -> None:
    doc.heading("View mix per source")
    table = _crosstab(index, "view", sources, order=VIEWS)
    doc.figure(_stacked_bars(table, "images"), "view mix per source")
    doc.table(table)


def _section_demographics(doc: _Document, index: pd.DataFrame, sources: list[str]) -> None:
    doc.heading("Sex and age mix per source")
    sex = _crosstab(index, "sex", sources, order=SEXES)
    age = _crosstab(index, "age_bucket", sources, order=_AGE_ORDER)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 * max(len(sources), 1) + 1.6))
    _stacked_bars(sex, "fraction of images", ax=axes[0])
    _stacked_bars(age, "fraction of images", ax=axes[1])
    axes[0].set_title("sex")
    axes[1].set_title("age bucket")
    fig.tight_layout()
    doc.figure(fig, "sex and age mix")
    doc.table(sex)
    doc.table(age)


def _section_technical(doc: _Document, index: pd.DataFrame, sources: list[str]) -> None:
    doc.heading("Technical mix")
    doc.para("Whitelisted technical fields of the decoded files (DICOM header or raster container).")
    for column in ("modality", "photometric", "bits_stored", "transfer_syntax", "spacing_source"):
        doc.table(_crosstab(index, column, sources), caption=column)


def _section_sizes(doc: _Document, index: pd.DataFrame, sources: list[str]) -> None:
    doc.heading("Original size and pixel spacing")
    height = pd.to_numeric(_col(index, "orig_height"), errors="coerce")
    width = pd.to_numeric(_col(index, "orig_width"), errors="coerce")
    spacing = pd.to_numeric(_col(index, "orig_spacing_mm"), errors="coerce")
    long_side = np.fmax(height, width)
    source_col = _col(index, "source")
    rows = {}
    for source in sources:
        mask = source_col == source
        row = {"images": int(mask.sum())}
        for name, values in (("height px", height[mask]), ("width px", width[mask])):
            row[f"{name} (min/median/max)"] = _spread(values, "{:.0f}")
        row["spacing mm (min/median/max)"] = _spread(spacing[mask], "{:.3f}")
        row["spacing unknown"] = int(spacing[mask].isna().sum())
        rows[source] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "source"

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    colours = plt.get_cmap("tab10")
    for ax, values in ((axes[0], long_side), (axes[1], spacing)):
        known = values.dropna()
        if not len(known):
            continue
        bins = np.histogram_bin_edges(known, bins=40)  # shared bins: sources comparable within a panel
        for k, source in enumerate(sources):  # one colour per source in both panels
            chosen = values[source_col == source].dropna()
            if len(chosen):
                ax.hist(chosen, bins=bins, histtype="step", color=colours(k % 10), label=source)
    axes[0].set_xlabel("original long side (px)")
    axes[1].set_xlabel("original pixel spacing (mm)")
    for ax in axes:
        ax.set_ylabel("images")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    doc.figure(fig, "original size and spacing")
    doc.table(table)


#: blobs whose format the storage section reads (the first bytes of each), spread evenly over the index
STORAGE_SAMPLE = 200


def _section_storage(doc: _Document, index: pd.DataFrame, store_root: Path) -> None:
    doc.heading("Storage and resampling")
    resolutions = _stored_resolutions(index)
    if not len(index) or not resolutions:
        doc.para("No stored images.")
        return
    store = ShardStore(store_root, index)
    positions = np.unique(np.linspace(0, len(index) - 1, min(STORAGE_SAMPLE, len(index))).astype(int))
    rows = {}
    for res in resolutions:
        formats: dict[str, int] = {}
        for position in positions:
            if pd.isna(index.at[position, f"offset_{res}"]):
                continue
            try:
                name = blob_format(store.read_blob(int(position), res)[:16])
            except OSError:
                name = "unreadable"
            formats[name] = formats.get(name, 0) + 1
        nbytes = pd.to_numeric(_col(index, f"nbytes_{res}"), errors="coerce")
        rows[f"{res} px"] = {"blob formats (sampled)": ", ".join(f"{k}: {v}" for k, v in sorted(formats.items())),
                             "mean bytes/image": f"{nbytes.mean():,.0f}" if nbytes.notna().any() else _MISSING}
    store.close()
    doc.para("Lossless 16-bit blobs in shard files. `cxrz-1`: byte planes (after a horizontal delta for images of "
             "more than 256² pixels) in one Zstandard frame (written since issue 16); `png`: 16-bit PNG (stores "
             f"written before). Formats read from the first bytes of up to {STORAGE_SAMPLE} blobs per resolution.")
    doc.table(pd.DataFrame(rows).T.rename_axis("resolution"))
    _para_reduced_decode(doc, index)
    checks = pd.to_numeric(_col(index, "resample_check_max_abs"), errors="coerce").dropna()
    if len(resolutions) < 2:
        return
    if not len(checks):
        doc.para("Resampling: no chained-resampling check in the index (a store ingested before issue 16, where "
                 "every resolution was resampled from the film).")
        return
    doc.para(f"Resampling: the largest resolution is Lanczos-resampled from the film and each smaller one from it "
             f"(issue 16; before, every resolution came from the film, which changes the smaller resolutions' "
             f"pixels slightly). Checked against resampling from the film on the first image of every shard "
             f"({len(checks)} images): max abs difference {int(checks.max())} of 65535 levels "
             f"({checks.max() / 65535:.3%} of the range), median of the per-image maxima {checks.median():.0f}.")


def _para_reduced_decode(doc: _Document, index: pd.DataFrame) -> None:
    """How many JPEG 2000 films were decoded at a reduced resolution level, and their check against a full decode."""
    factors = pd.to_numeric(_col(index, "decode_reduction"), errors="coerce")
    reduced = factors[factors > 1]
    if not len(reduced):
        return
    counts = ", ".join(f"{int(k)}× ({v})" for k, v in reduced.value_counts().sort_index().items())
    checks = pd.to_numeric(_col(index, "reduced_decode_check_max_abs"), errors="coerce").dropna()
    text = (f"JPEG 2000: {len(reduced)} of {len(index)} films were decoded at a reduced wavelet resolution level "
            f"(film pixels per decoded pixel: {counts}; issue 16, `ingest.reduced_decode`), which still has at least "
            "1.25× the pixels of the largest resolution per axis and costs ~4× less CPU per level. This changes the stored "
            "pixels slightly. ")
    if len(checks):
        text += (f"Checked against decoding the full film on the first such image of every shard ({len(checks)} "
                 f"images): max abs difference {int(checks.max())} of 65535 levels ({checks.max() / 65535:.2%} of "
                 f"the range), median of the per-image maxima {checks.median():.0f}.")
    else:
        text += "No check against a full decode is in the index."
    doc.para(text)


def _section_duplicates(doc: _Document, summary: dict) -> None:
    doc.heading("Duplicates")
    records = pd.DataFrame(summary.get("duplicates", []))
    n = int(summary.get("duplicate_images_dropped", len(records)))
    doc.para(f"{n} pixel-identical image(s) dropped (the copy of the higher-priority source is kept).")
    if len(records) and {"source", "duplicate_of_source"} <= set(records.columns):
        table = records.groupby(["source", "duplicate_of_source"]).size().rename("images dropped").reset_index()
        table = table.rename(columns={"source": "dropped from", "duplicate_of_source": "kept in"})
        doc.table(table.set_index("dropped from"))


# --------------------------------------------------------------------------------------------------- helpers


def _sources(index: pd.DataFrame, rejections: pd.DataFrame, summary: dict) -> list[str]:
    names = set(summary.get("sources", {})) | set(_col(index, "source").dropna()) | set(
        _col(rejections, "source").dropna())
    return sorted(str(n) for n in names)


def _col(frame: pd.DataFrame, name: str) -> pd.Series:
    """Column or an all-missing series (empty parts of the store may lack columns)."""
    if name in frame.columns:
        return frame[name]
    return pd.Series([None] * len(frame), index=frame.index, dtype="object")


def _crosstab(index: pd.DataFrame, column: str, sources: list[str], order=None) -> pd.DataFrame:
    values = _col(index, column).map(lambda v: _MISSING if v is None or v != v else str(v))
    table = pd.crosstab(values, _col(index, "source")) if len(index) else pd.DataFrame()
    present = list(table.index)
    rows = [v for v in (order or []) if v in present] + sorted((v for v in present if v not in (order or [])),
                                                               key=_natural_key)
    table = table.reindex(index=rows, columns=sources, fill_value=0).T
    table.index.name = "source"
    table.columns.name = None
    return table.astype(int)


def _natural_key(value: str) -> tuple:
    """Numbers first, in numeric order ("8" before "16"), then text; the missing marker last."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (2 if value == _MISSING else 1, 0.0, value)


def _stacked_bars(table: pd.DataFrame, xlabel: str, ax=None):
    """Horizontal stacked bars of row fractions; returns the figure."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(8, 0.6 * max(len(table), 1) + 1.4))
    fig = ax.figure
    totals = table.sum(axis=1).replace(0, np.nan)
    left = np.zeros(len(table))
    colours = plt.get_cmap("tab10")
    for k, column in enumerate(table.columns):
        frac = (table[column] / totals).fillna(0).to_numpy()
        ax.barh(range(len(table)), frac, left=left, color=colours(k % 10), label=str(column))
        left += frac
    ax.set_yticks(range(len(table)), [f"{s} (n={int(n)})" for s, n in table.sum(axis=1).items()])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of " + xlabel if own else xlabel)
    if len(table.columns):
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=min(len(table.columns), 6),
                  frameon=False)
    if own:
        fig.tight_layout()
    return fig


def _spread(values: pd.Series, fmt: str) -> str:
    values = values.dropna()
    if not len(values):
        return "–"
    return "/".join(fmt.format(v) for v in (values.min(), values.median(), values.max()))


def _stored_resolutions(index: pd.DataFrame) -> list[int]:
    return sorted(int(m.group(1)) for c in index.columns if (m := re.fullmatch(r"offset_(\d+)", str(c))))


def _pick_resolution(index: pd.DataFrame, wanted: int) -> int | None:
    stored = _stored_resolutions(index)
    if not stored:
        return None
    return wanted if wanted in stored else min(stored, key=lambda r: (abs(r - wanted), -r))


def _sample_positions(index: pd.DataFrame, source: str, seed: int, n: int) -> list[int]:
    in_source = _col(index, "source") == source
    candidates = index.index[in_source & (_col(index, "split") == "train")]
    if not len(candidates):
        candidates = index.index[in_source]
    if not len(candidates):
        return []
    ordered = index.loc[candidates].sort_values("image_id").index.to_numpy()
    rng = np.random.default_rng([seed, zlib.crc32(source.encode())])  # per-source stream: rows independent
    chosen = rng.choice(len(ordered), size=min(n, len(ordered)), replace=False)
    return [int(ordered[i]) for i in sorted(chosen)]


def _read_or_none(store: ShardStore | None, position: int, resolution: int | None) -> np.ndarray | None:
    if store is None or resolution is None:
        return None
    row = store.index.iloc[position]
    if pd.isna(row.get(f"offset_{resolution}")):
        return None
    try:
        return store.read(position, resolution)
    except (OSError, ValueError) as exc:
        path = shard_path(store.root, resolution, row["source"], int(row["shard"]))
        log.warning("sample grid: cannot read image %s from %s: %s", row["image_id"], path, exc)
        return None


def _caption(row: pd.Series) -> str:
    positives = [name for name, col in zip(CHEXPERT_LABELS, LABEL_COLUMNS, strict=True)
                 if row.get("raw_" + col) == 1.0]
    text = f"{row.get('view', _MISSING)}: " + (", ".join(positives) if positives else "no positive label")
    return textwrap.fill(text, width=44, max_lines=3, placeholder=" …")


# --------------------------------------------------------------------------------------------------- rendering


class _Document:
    """Sections rendered twice: HTML (with embedded figures) and markdown (tables and text only)."""

    def __init__(self, title: str):
        self.title = title
        self._html: list[str] = []
        self._md: list[str] = [f"# {title}", ""]

    def heading(self, text: str) -> None:
        self._html.append(f"<h2>{html.escape(text)}</h2>")
        self._md += [f"## {text}", ""]

    def para(self, text: str) -> None:
        self._html.append(f"<p>{html.escape(text)}</p>")
        self._md += [text, ""]

    def table(self, table: pd.DataFrame, caption: str | None = None) -> None:
        header = [table.index.name or ""] + [str(c) for c in table.columns]
        body = [[str(i)] + [_fmt(v) for v in row] for i, row in zip(table.index, table.itertuples(index=False),
                                                                     strict=True)]
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in body)
        self._html.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        if caption:
            self._md += [f"**{caption}**", ""]
        if not body:
            self._md += ["(empty)", ""]
            return
        self._md.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
        self._md.append("|" + "|".join("---" for _ in header) + "|")
        self._md += ["| " + " | ".join(_md_cell(v) for v in r) + " |" for r in body]
        self._md.append("")

    def figure(self, fig, alt: str) -> None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
        plt.close(fig)
        self.image(buffer.getvalue(), alt)

    def image(self, png: bytes, alt: str, markdown_link: str | None = None) -> None:
        data = base64.b64encode(png).decode("ascii")
        self._html.append(f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>')
        if markdown_link:
            self._md += [f"![{alt}]({markdown_link})", ""]

    def render_html(self) -> str:
        style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
                 "table{border-collapse:collapse;margin:0.5em 0 1.5em}caption{text-align:left;font-weight:bold}"
                 "th,td{border:1px solid #ccc;padding:2px 8px;text-align:right;font-size:13px}"
                 "th:first-child,td:first-child{text-align:left}img{max-width:100%}")
        return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{style}</style></head>"
                f"<body><h1>{html.escape(self.title)}</h1>\n" + "\n".join(self._html) + "\n</body></html>\n")

    def render_markdown(self) -> str:
        return "\n".join(self._md).rstrip() + "\n"


def _fmt(value) -> str:
    if isinstance(value, float | np.floating):
        return _MISSING if np.isnan(value) else (f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}")
    return str(value)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
