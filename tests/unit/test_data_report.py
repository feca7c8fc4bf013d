"""Data report on a tiny synthetic store: counts, reasons, reconciliation marks, grid rows, no rel_path leak."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrgen.labels import LABEL_COLUMNS
from cxrgen.stages.report_data import GRID_ROW_PX, write_data_report
from cxrgen.store.shards import ShardWriter, shard_path
from cxrgen.unify import summarise

RES = 64
SECRET_PATH = "files/p10/p10999999/s55555555/0badc0de.dcm"
SECRET_DETAIL = "PatientName=Quackenbush^Ottilie"


def _index_and_store(root, rng) -> pd.DataFrame:
    rows = []
    for source, n in (("alpha", 9), ("gamma", 4)):
        with ShardWriter(shard_path(root, RES, source, 0)) as writer:
            for i in range(n):
                offset, nbytes, digest = writer.append(rng.integers(0, 65535, (RES, RES), dtype=np.uint16))
                row = {
                    "image_id": f"{source}-{i:04d}", "source": source, "patient_pid": f"{source}-p{i // 2}",
                    "study_pid": f"{source}-s{i}", "view": ("PA", "AP", "LATERAL")[i % 3], "sex": "MF"[i % 2],
                    "age_bucket": "40-59", "report_findings": None, "report_impression": None,
                    "official_split": None, "split": ("train", "train", "val", "test")[(i // 2) % 4], "shard": 0,
                    "orig_height": 2000 + i, "orig_width": 2400, "orig_spacing_mm": 0.148 if i % 2 else np.nan,
                    "spacing_source": "PixelSpacing" if i % 2 else None, "content_sha256": f"{source}{i:060d}",
                    "mean_intensity": 0.5, "modality": "CR", "photometric": "MONOCHROME1", "bits_stored": "12",
                    "transfer_syntax": "1.2.840.10008.1.2.4.90", "manufacturer": "cxrgen",
                    f"offset_{RES}": offset, f"nbytes_{RES}": nbytes, f"sha256_{RES}": digest,
                }
                for j, col in enumerate(LABEL_COLUMNS):
                    row["raw_" + col] = (1.0, 0.0, -1.0, np.nan)[(i + j) % 4]
                    row[col] = (1.0, 0.0, 1.0, 0.0)[(i + j) % 4]
                rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    index = _index_and_store(root, np.random.default_rng(0))
    rejections = pd.DataFrame([
        {"image_id": "alpha-r1", "source": "alpha", "rel_path": SECRET_PATH, "shard": 0, "reason": "wrong_modality",
         "detail": "Modality=CT"},
        {"image_id": "alpha-r2", "source": "alpha", "rel_path": "a/b.dcm", "shard": 0, "reason": "missing_file",
         "detail": ""},
        {"image_id": "beta-r1", "source": "beta", "rel_path": "x/y.png", "shard": 1, "reason": "degenerate_image",
         "detail": SECRET_DETAIL},
        {"image_id": "beta-r2", "source": "beta", "rel_path": "x/z.png", "shard": 1, "reason": "degenerate_image",
         "detail": "constant"},
        {"image_id": "beta-r3", "source": "beta", "rel_path": "x/w.png", "shard": 2, "reason": "unreadable",
         "detail": "truncated"},
    ])
    summary = summarise(index, rejections, pd.DataFrame(columns=["image_id"]))
    out = root / "report"
    paths = {"html_path": out / "data_report.html", "grid_path": out / "grid.png", "markdown_path": out / "r.md"}
    write_data_report(index, rejections, summary, root, RES, seed=3, **paths)
    return index, rejections, summary, root, paths


def test_report_files_and_counts(report):
    _, _, summary, _, paths = report
    text = paths["html_path"].read_text()
    markdown = paths["markdown_path"].read_text()
    assert summary["sources"]["alpha"]["files_seen"] == 10
    for doc in (text, markdown):
        for reason in ("wrong_modality", "missing_file", "degenerate_image", "unreadable"):
            assert reason in doc
        assert "✘" not in doc
    assert "<td>alpha</td><td>10</td><td>9</td><td>1</td><td>1</td>" in text
    assert "| alpha | 10 | 9 | 1 | 1 |" in markdown
    assert "| beta | 3 | 0 | 3 | 0 |" in markdown
    assert "| degenerate_image | 0 | 2 | 2 |" in markdown
    assert "data:image/png;base64," in text
    assert "grid.png" in markdown and "base64" not in markdown


def test_no_rejection_paths_or_details(report):
    _, rejections, _, _, paths = report
    for path in paths.values():
        content = path.read_bytes()
        for leak in list(rejections["rel_path"]) + [SECRET_DETAIL, "Quackenbush"]:
            assert leak.encode() not in content


def test_grid_has_one_row_per_source(report):
    _, _, _, _, paths = report
    with Image.open(paths["grid_path"]) as grid:
        assert grid.height == 3 * GRID_ROW_PX  # alpha, beta (no images), gamma


def test_deterministic_and_flags_mismatch(report, tmp_path):
    index, rejections, summary, root, paths = report
    again = {k: tmp_path / v.name for k, v in paths.items()}
    write_data_report(index, rejections, summary, root, RES, seed=3, **again)
    assert again["html_path"].read_bytes() == paths["html_path"].read_bytes()
    assert again["grid_path"].read_bytes() == paths["grid_path"].read_bytes()

    wrong = copy.deepcopy(summary)
    wrong["sources"]["gamma"]["ingested"] += 1
    write_data_report(index, rejections, wrong, root, 512, seed=3, **again)  # 512 px is not stored
    text = again["markdown_path"].read_text()
    assert "✘ index has 4" in text
    assert "shown at 64px" in text


def test_empty_store(tmp_path):
    empty_index = pd.DataFrame(columns=["image_id", "source", "split", "patient_pid"])
    rejections = pd.DataFrame([{"image_id": "z-1", "source": "zeta", "rel_path": SECRET_PATH, "shard": 0,
                                "reason": "unreadable", "detail": ""}])
    summary = summarise(empty_index, rejections, pd.DataFrame(columns=["image_id"]))
    paths = {"html_path": tmp_path / "r.html", "grid_path": tmp_path / "g.png", "markdown_path": tmp_path / "r.md"}
    write_data_report(empty_index, rejections, summary, tmp_path, 256, **paths)
    assert "| zeta | 1 | 0 | 1 | 0 |" in paths["markdown_path"].read_text()
    assert SECRET_PATH not in paths["html_path"].read_text()
    with Image.open(paths["grid_path"]) as grid:
        assert grid.height == GRID_ROW_PX


def test_storage_section_names_blob_formats_and_the_resampling_check(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for source, codec in (("alpha", "png"), ("gamma", "cxrz")):  # a store ingested before issue 16 next to a new one
        writers = {res: ShardWriter(shard_path(tmp_path, res, source, 0), codec=codec) for res in (32, 64)}
        for i in range(3):
            row = {"image_id": f"{source}-{i}", "source": source, "shard": 0, "split": "train",
                   "patient_pid": f"{source}-p{i}",
                   "resample_check_max_abs": 17.0 if (source, i) == ("gamma", 0) else np.nan,
                   "decode_reduction": 2 if source == "gamma" and i > 0 else 1,
                   "reduced_decode_check_max_abs": 410.0 if (source, i) == ("gamma", 1) else np.nan}
            for res, writer in writers.items():
                row[f"offset_{res}"], row[f"nbytes_{res}"], row[f"sha256_{res}"] = writer.append(
                    rng.integers(0, 65535, (res, res), dtype=np.uint16))
            rows.append(row)
        for writer in writers.values():
            writer.close()
    index = pd.DataFrame(rows)
    rejections = pd.DataFrame(columns=["image_id", "source", "rel_path", "shard", "reason", "detail"])
    summary = summarise(index, rejections, pd.DataFrame(columns=["image_id"]))
    paths = {"html_path": tmp_path / "r.html", "grid_path": tmp_path / "g.png", "markdown_path": tmp_path / "r.md"}
    write_data_report(index, rejections, summary, tmp_path, 64, **paths)
    markdown = paths["markdown_path"].read_text()
    assert "| 32 px | cxrz-1: 3, png: 3 |" in markdown and "| 64 px | cxrz-1: 3, png: 3 |" in markdown
    assert "(1 images): max abs difference 17 of 65535 levels" in markdown
    assert "JPEG 2000: 2 of 6 films were decoded at a reduced wavelet resolution level" in markdown
    assert "2× (2)" in markdown and "(1 images): max abs difference 410 of 65535 levels (0.63% of" in markdown

    before = index.drop(columns="resample_check_max_abs")
    write_data_report(before, rejections, summary, tmp_path, 64, **paths)
    assert "no chained-resampling check in the index" in paths["markdown_path"].read_text()
