"""VinDr-CXR (Kaggle VinBigData layout): demo writer with real 3-reader rows -> adapter; reader-threshold labels."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pydicom
from sources_helpers import demo_corpus_fixture, write_twice

from cxrgen.demo.badfiles import bad_kind_of
from cxrgen.demo.common import DemoContext, txrv_data_dir
from cxrgen.sources.base import get_adapter

demo = demo_corpus_fixture("vindr", 20, DemoContext(seed=3, downscale=10, bad_fraction=0.3))


def test_every_image_file_appears_once_and_bad_files_are_flagged(demo):
    root, _, df = demo
    on_disk = sorted(p.relative_to(root).as_posix() for p in (root / "train").glob("*.dicom"))
    assert sorted(df.loc[df["reject_reason"] != "missing_file", "rel_path"]) == on_disk
    assert df["source_key"].is_unique and (df["patient_id"] == df["source_key"]).all()
    assert (df["reject_reason"] == "missing_file").sum() >= 1
    assert (df["reject_reason"] == "missing_metadata").sum() >= 1
    kinds = Counter(bad_kind_of(root / p) for p in on_disk)
    assert {"truncated", "no_pixels", "multi_frame", "non_chest"} <= set(kinds)
    assert (df["view"] == "PA").all() and (df.loc[df["reject_reason"].isna(), "official_split"] == "train").all()


def test_csv_keeps_real_readers_and_boxes_scale_to_the_demo_film(demo):
    root, ctx, df = demo
    written = pd.read_csv(root / "train.csv")
    real = pd.read_csv(txrv_data_dir() / "vinbigdata-train.csv.gz")
    assert list(written.columns) == list(real.columns)
    ok = df[df["reject_reason"].isna()]
    sound = ok[[bad_kind_of(root / p) is None for p in ok["rel_path"]]]
    for image_id in sound["source_key"]:
        mine = written[written["image_id"] == image_id].reset_index(drop=True)
        theirs = real[real["image_id"] == image_id].reset_index(drop=True)
        assert list(mine["class_name"]) == list(theirs["class_name"]) and mine["rad_id"].nunique() == 3
        ds = pydicom.dcmread(root / "train" / f"{image_id}.dicom")
        boxes = mine.dropna(subset=["x_min"])
        assert (boxes["x_max"] <= ds.Columns - 1).all() and (boxes["y_max"] <= ds.Rows - 1).all()
        ratio = (boxes["x_max"] - boxes["x_min"]) / (theirs.loc[boxes.index, "x_max"] - theirs.loc[boxes.index, "x_min"])
        assert np.allclose(ratio[theirs.loc[boxes.index, "x_max"] - theirs.loc[boxes.index, "x_min"] > 100],
                           1 / ctx.downscale, atol=0.02)
        assert str(ds.PatientName) in ctx.phi.canaries
    assert (ok["lbl_no_finding"] == 0).sum() >= 5  # half the sample carries findings


def test_labels_use_the_reader_threshold(tmp_path):
    (tmp_path / "train").mkdir()
    for image_id in ("a1", "b2"):
        (tmp_path / "train" / f"{image_id}.dicom").write_bytes(b"x")
    (tmp_path / "train.csv").write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
        "a1,Nodule/Mass,8,R9,557.0,2352.0,675.0,2484.0\n"
        "a1,Nodule/Mass,8,R10,550.0,2350.0,670.0,2480.0\n"
        "a1,Pleural effusion,10,R9,20.0,250.0,330.0,640.0\n"
        "a1,No finding,14,R11,,,,\n"
        "b2,ILD,5,R17,1347.0,245.0,2188.0,2169.0\n"
        "b2,No finding,14,R8,,,,\n"
        "b2,No finding,14,R7,,,,\n"
        "c3,No finding,14,R1,,,,\nc3,No finding,14,R2,,,,\nc3,No finding,14,R3,,,,\n")
    one = get_adapter("vindr")(tmp_path, {}).set_index("source_key")
    assert one.loc["a1", "lbl_lung_lesion"] == 1.0 and one.loc["a1", "lbl_pleural_effusion"] == 1.0
    assert one.loc["a1", "lbl_no_finding"] == 0.0 and one.loc["a1", "lbl_cardiomegaly"] == 0.0
    assert np.isnan(one.loc["a1", "lbl_edema"]) and np.isnan(one.loc["a1", "lbl_support_devices"])
    assert one.loc["b2", "lbl_no_finding"] == 0.0  # ILD is a finding even though it maps to no CheXpert label
    assert one.loc["c3", "lbl_no_finding"] == 1.0 and one.loc["c3", "reject_reason"] == "missing_file"
    two = get_adapter("vindr")(tmp_path, {"vindr_min_readers": 2}).set_index("source_key")
    assert two.loc["a1", "lbl_lung_lesion"] == 1.0 and two.loc["a1", "lbl_pleural_effusion"] == 0.0
    assert two.loc["b2", "lbl_no_finding"] == 1.0


def test_same_seed_writes_identical_files(tmp_path):
    first, second = write_twice("vindr", tmp_path, 3, seed=5)
    assert first == second and len(first) == 4
