"""NIH ChestX-ray14: demo writer layout + adapter on the demo corpus and on a hand-made minimal release."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sources_helpers import demo_corpus_fixture, file_digests, files_listed_once, image_modes

from cxrgen.demo.common import DemoContext
from cxrgen.demo.layouts import nih as demo
from cxrgen.demo.sampling import read_shipped
from cxrgen.labels import LABEL_COLUMNS, label_column
from cxrgen.sources.base import get_adapter
from cxrgen.sources.files import join_files
from cxrgen.sources.nih import nih_metadata, scan_nih

N, SEED, DOWNSCALE, BAD = 25, 7, 8.0, 0.16  # BAD * N = 4 bad files: one of each kind


def _ctx(seed: int = SEED) -> DemoContext:
    return DemoContext(seed=seed, downscale=DOWNSCALE, bad_fraction=BAD)


corpus = demo_corpus_fixture("nih", N, _ctx())


def test_layout_is_the_release_layout(corpus):
    root, _, _ = corpus
    assert sorted(p.name for p in root.iterdir()) == ["BBox_List_2017.csv", "Data_Entry_2017_v2020.csv", "images",
                                                      "test_list.txt", "train_val_list.txt"]
    header = (root / "Data_Entry_2017_v2020.csv").read_text().splitlines()[0]
    assert header == ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                      "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
    assert (root / "BBox_List_2017.csv").read_text().startswith("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    # CSV lines are real rows of the shipped table, byte for byte
    shipped = set(read_shipped("Data_Entry_2017_v2020.csv.gz").to_csv(index=False).splitlines()[1:])
    lines = (root / "Data_Entry_2017_v2020.csv").read_text().splitlines()[1:]
    assert len(lines) == N - 1 and set(lines) <= shipped  # the orphan's row is left out


def test_every_file_on_disk_appears_exactly_once(corpus):
    root, _, manifest = corpus
    files_listed_once(root, manifest, "*.png")
    assert len(manifest) == N  # N-1 metadata rows (one without file) + one orphan file


def test_bad_files_are_flagged_or_left_for_the_decoder(corpus):
    root, _, manifest = corpus
    reasons = manifest["reject_reason"].value_counts(dropna=False).to_dict()
    assert reasons == {None: N - 2, "missing_file": 1, "missing_metadata": 1}
    orphan = manifest.loc[manifest["reject_reason"] == "missing_metadata"].iloc[0]
    assert (root / orphan["rel_path"]).is_file() and np.isnan(orphan[list(LABEL_COLUMNS)].astype(float)).all()
    assert not (root / manifest.loc[manifest["reject_reason"] == "missing_file", "rel_path"].iloc[0]).exists()
    modes, broken = image_modes(root, manifest.loc[manifest["reject_reason"].isna(), "rel_path"])
    assert broken == 1  # the truncated PNG: ingestion rejects it as unreadable
    assert modes.count("RGB") == 1 and set(modes) == {"L", "RGB"}


def test_labels_ids_views_and_spacing_follow_the_csv(corpus):
    root, _, manifest = corpus
    table = pd.read_csv(root / "Data_Entry_2017_v2020.csv").set_index("Image Index")
    kept = manifest[manifest["reject_reason"] != "missing_metadata"].set_index("source_key")
    assert set(kept.index) == set(table.index)
    mapping = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Effusion": "Pleural Effusion",
               "Pneumothorax": "Pneumothorax", "Edema": "Edema", "Pleural_Thickening": "Pleural Other",
               "Pneumonia": "Pneumonia"}
    size = round(1024 / DOWNSCALE)
    for key, row in table.iterrows():
        got = kept.loc[key]
        findings = set(row["Finding Labels"].split("|"))
        for nih_name, label in mapping.items():
            assert got[label_column(label)] == float(nih_name in findings), (key, nih_name)
        assert got[label_column("Lung Lesion")] == float(bool(findings & {"Mass", "Nodule"}))
        assert got[label_column("No Finding")] == float(findings == {"No Finding"})
        assert np.isnan(got[label_column("Fracture")]) and np.isnan(got[label_column("Support Devices")])
        assert got["patient_id"] == str(row["Patient ID"]) and got["study_id"] == key
        assert got["view"] == row["View Position"] and got["sex"] == row["Patient Gender"]
        assert got["age"] == row["Patient Age"]
        expected = row["OriginalImagePixelSpacing[x"] * row["OriginalImage[Width"] / size
        assert got["spacing_hint_mm"] == pytest.approx(expected)
    assert kept["patient_id"].value_counts().max() >= 2  # whole patients were sampled
    assert (kept[label_column("No Finding")] == 0).sum() >= N // 2  # findings dominate


def test_official_split_is_patient_wise_and_matches_the_lists(corpus):
    root, _, manifest = corpus
    test = set((root / "test_list.txt").read_text().split())
    train_val = set((root / "train_val_list.txt").read_text().split())
    kept = manifest[manifest["reject_reason"] != "missing_metadata"]
    assert not test & train_val and test | train_val == set(kept["source_key"])
    assert set(kept["official_split"]) == {"train", "test"}
    assert (kept.groupby("patient_id")["official_split"].nunique() == 1).all()
    assert set(kept.loc[kept["official_split"] == "test", "source_key"]) == test


def test_writer_is_deterministic(corpus, tmp_path):
    root, _, _ = corpus
    demo.write(tmp_path / "again", N, _ctx())
    assert file_digests(tmp_path / "again") == file_digests(root)
    demo.write(tmp_path / "other", N, _ctx(SEED + 1))
    assert (tmp_path / "other" / "Data_Entry_2017_v2020.csv").read_bytes() != (
        root / "Data_Entry_2017_v2020.csv").read_bytes()


def _png(path: Path, width: int = 8, height: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((height, width), np.uint8)).save(path)


def test_minimal_hand_made_release(tmp_path):
    (tmp_path / "Data_Entry_2017_v2020.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
        "00000001_000.png,Effusion|Infiltration,0,1,57,M,PA,2500,2048,0.143,0.143\n"
        "00000001_001.png,Consolidation,1,1,58,M,AP,3056,2544,0.139,0.139\n"
        "00000002_000.png,No Finding,0,2,80,F,PA,2992,2991,0.143,0.143\n"
        "00000003_000.png,Hernia,0,3,41,F,PA,2500,2048,0.168,0.168\n")
    (tmp_path / "test_list.txt").write_text("00000002_000.png\n")
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n")
    # Kaggle-style nesting, a stray copy of one image, an orphan, and 00000003_000.png missing
    for rel in ("images_001/images/00000001_000.png", "images_001/images/00000001_001.png",
                "images_002/images/00000002_000.png", "images/00000002_000.png", "images/99999999_000.png"):
        _png(tmp_path / rel, width=1024)
    m = get_adapter("nih")(tmp_path, {}).set_index("rel_path")
    assert len(m) == 6
    assert m.loc["images/00000002_000.png", "reject_reason"] is None  # the copy at the release location wins
    assert m.loc["images_002/images/00000002_000.png", "reject_reason"] == "missing_metadata"
    assert m.loc["images/99999999_000.png", "reject_reason"] == "missing_metadata"
    assert m.loc["images/00000003_000.png", "reject_reason"] == "missing_file"
    first = m.loc["images_001/images/00000001_000.png"]
    assert first["spacing_hint_mm"] == pytest.approx(0.143 * 2500 / 1024)
    assert (first["lbl_pleural_effusion"], first["lbl_lung_opacity"], first["lbl_no_finding"]) == (1.0, 1.0, 0.0)
    assert first["official_split"] == "train" and first["patient_id"] == "1"
    consolidation = m.loc["images_001/images/00000001_001.png"]
    assert consolidation["lbl_consolidation"] == 1.0 and np.isnan(consolidation["lbl_lung_opacity"])
    assert consolidation["view"] == "AP"
    normal = m.loc["images/00000002_000.png"]
    assert normal["lbl_no_finding"] == 1.0 and normal["official_split"] == "test" and normal["sex"] == "F"
    assert normal[["lbl_cardiomegaly", "lbl_lung_opacity", "lbl_pneumothorax"]].tolist() == [0.0, 0.0, 0.0]
    hernia = m.loc["images/00000003_000.png"]  # no CheXpert counterpart: every mapped label negative
    assert hernia["lbl_no_finding"] == 0.0 and hernia["official_split"] is None
    # the png width option overrides the header probe
    assert scan_nih(tmp_path, {"png_width": 512}).set_index("rel_path").loc[
        "images/00000002_000.png", "spacing_hint_mm"] == pytest.approx(0.143 * 2992 / 512)


def test_full_scale_table_maps_labels_and_is_fast():
    """The real 112,120-row table through the adapter's metadata/join code, with a simulated listing."""
    table = read_shipped("Data_Entry_2017_v2020.csv.gz")
    names = table["Image Index"]
    start = time.perf_counter()
    meta = nih_metadata(table, set(names[::4]), set(names) - set(names[::4]), 1024)
    manifest = join_files(meta, pd.DataFrame({"rel_path": "images/" + names, "name": names}), "name", "nih")
    elapsed = time.perf_counter() - start
    assert len(manifest) == 112_120 and manifest["reject_reason"].isna().all()
    positives = (manifest[list(LABEL_COLUMNS)] == 1).sum()
    # counts of offline-data.md: No Finding 60,361, Effusion 13,317, Infiltration 19,894, Pneumothorax 5,302
    assert positives[label_column("No Finding")] == 60_361
    assert positives[label_column("Pleural Effusion")] == 13_317
    assert positives[label_column("Lung Opacity")] == 19_894
    assert positives[label_column("Pneumothorax")] == 5_302
    assert elapsed < 20, elapsed
