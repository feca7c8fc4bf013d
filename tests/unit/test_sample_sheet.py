"""Rule draw_sample_sheet's stage: one row per generated variant, at the stores' highest resolution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrgen.stages.draw_sample_sheet import draw_sample_sheet, sheet_rows
from cxrgen.store import ShardWriter, shard_path


def write_store(root: Path, sets: list[str], prompts: list[str], resolutions=(8, 32), value=1000) -> Path:
    rows = [{"image_id": f"{root.name}-{i}", "source": "synthetic", "shard": 0, "set": s, "prompt": p}
            for i, (s, p) in enumerate(zip(sets, prompts, strict=True))]
    for res in resolutions:
        with ShardWriter(shard_path(root, res, "synthetic", 0)) as writer:
            for i, row in enumerate(rows):
                offset, nbytes, sha = writer.append(np.full((res, res), value + i, dtype=np.uint16))
                row.update({f"offset_{res}": offset, f"nbytes_{res}": nbytes, f"sha256_{res}": sha})
    pd.DataFrame(rows).to_parquet(root / "index.parquet", index=False)
    return root


def test_rows_take_one_image_per_balanced_prompt_then_the_first_images():
    index = pd.DataFrame({"set": ["test_reports", "class_balanced", "class_balanced", "class_balanced", "x"],
                          "prompt": ["r", "edema", "edema", "effusion", "y"]})
    assert sheet_rows(index, 2) == [1, 3]          # one per finding
    assert sheet_rows(index, 4) == [1, 3, 0, 2]    # topped up in store order
    assert sheet_rows(index.drop(columns="set"), 3) == [0, 1, 2]


def test_sheet_reads_every_row_at_the_highest_resolution(tmp_path):
    sets = ["class_balanced"] * 3
    stores = {"cheff-uncond": write_store(tmp_path / "uncond", sets, ["a", "b", "c"]),
              "cheff": write_store(tmp_path / "cond", sets, ["a", "a", "c"], value=40000)}
    meta = draw_sample_sheet(stores=stores, columns=3, out_png=tmp_path / "sheet.png", out_json=tmp_path / "m.json")
    assert meta["resolution"] == 32
    assert [r["image_id"] for r in meta["rows"]["cheff-uncond"]] == ["uncond-0", "uncond-1", "uncond-2"]
    assert [r["prompt"] for r in meta["rows"]["cheff"]] == ["a", "c", "a"]
    assert json.loads((tmp_path / "m.json").read_text()) == meta
    assert Image.open(tmp_path / "sheet.png").size[0] > 0
    write_store(tmp_path / "low", sets, ["a", "b", "c"], resolutions=(8, 16))
    with pytest.raises(ValueError, match="16 px"):
        draw_sample_sheet(stores={**stores, "low": tmp_path / "low"}, columns=2, out_png=tmp_path / "x.png",
                          out_json=tmp_path / "x.json")
