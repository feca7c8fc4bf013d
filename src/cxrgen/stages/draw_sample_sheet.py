"""Sample sheet of generated variants (Cheff's figures: unconditional and report-conditioned samples side by side):
one row per variant, read back from its generated store (rule generate) at the store's highest resolution, which is
x_HR (1024 px at full scale: LDM at 256 px, SR 256 -> 1024)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from cxrgen.report.figures import save_grid
from cxrgen.store import ShardStore


def sheet_rows(index: pd.DataFrame, columns: int) -> list[int]:
    """Positions of the images a row shows: the class-balanced set's first image per distinct prompt (one per
    finding, in prompt order; an unconditional LDM ignores them, so its row is the same seeds without text), topped
    up with the store's first images."""
    picked: list[int] = []
    if "set" in index and (index["set"] == "class_balanced").any():
        balanced = index[index["set"] == "class_balanced"]
        picked = list(balanced.drop_duplicates("prompt").index[:columns])
    for position in range(len(index)):
        if len(picked) >= columns:
            break
        if position not in picked:
            picked.append(position)
    return picked


def draw_sample_sheet(*, stores: dict[str, Path | str], columns: int, out_png: Path | str,
                      out_json: Path | str) -> dict:
    """``stores``: variant -> generated store root (``index.parquet`` + shards), in row order. Writes the sheet PNG
    and a JSON naming each row's image ids, prompts and the resolution shown. Returns that JSON's content."""
    tiles, meta = [], {"resolution": None, "rows": {}}
    for variant, root in stores.items():
        index = pd.read_parquet(Path(root) / "index.parquet")
        resolution = max(int(c.removeprefix("offset_")) for c in index.columns if c.startswith("offset_"))
        if meta["resolution"] not in (None, resolution):
            raise ValueError(f"store {root} holds {resolution} px, the other rows {meta['resolution']} px")
        meta["resolution"] = resolution
        index = index[index[f"offset_{resolution}"].notna()].reset_index(drop=True)  # reid_probe rows: no SR
        store = ShardStore(root, index)
        positions = sheet_rows(index, columns)
        row = [torch.from_numpy(store.read_float(p, resolution) * 2 - 1)[None, None] for p in positions]
        store.close()
        row += [torch.full((1, 1, resolution, resolution), -1.0)] * (columns - len(row))
        tiles += row
        meta["rows"][variant] = [{"image_id": str(index.at[p, "image_id"]), "prompt": str(index.at[p, "prompt"])}
                                 for p in positions]
    save_grid(torch.cat(tiles), list(stores), columns, out_png)
    Path(out_json).write_text(json.dumps(meta, indent=2))
    return meta
