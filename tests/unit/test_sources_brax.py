"""BRAX: demo writer (CheXpert rows re-keyed BRAX-style) -> adapter; hand-made spreadsheet pinning conventions."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pydicom
from sources_helpers import demo_corpus_fixture, write_twice

from cxrgen.demo.badfiles import bad_kind_of
from cxrgen.demo.common import DemoContext
from cxrgen.labels import CHEXPERT_LABELS, label_column
from cxrgen.sources.base import get_adapter
from cxrgen.sources.brax import image_key, parse_age

demo = demo_corpus_fixture("brax", 20, DemoContext(seed=3, downscale=10, bad_fraction=0.3))


def test_every_image_file_appears_once_and_bad_files_are_flagged(demo):
    root, _, df = demo
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.dcm"))
    assert sorted(df.loc[df["reject_reason"] != "missing_file", "rel_path"]) == on_disk
    assert df["source_key"].is_unique
    assert (df["reject_reason"] == "missing_file").sum() >= 1
    assert (df["reject_reason"] == "missing_metadata").sum() >= 1
    kinds = Counter(bad_kind_of(root / p) for p in on_disk)
    assert {"truncated", "no_pixels", "multi_frame", "non_chest"} <= set(kinds)


def test_labels_views_demographics_follow_the_spreadsheet(demo):
    root, ctx, df = demo
    sheet = pd.read_csv(root / "master_spreadsheet_update.csv", index_col=0, dtype={"PatientAge": str})
    sheet["key"] = sheet["DicomPath"].map(image_key)
    sheet = sheet.set_index("key")
    ok = df[df["reject_reason"].isna()].set_index("source_key")
    assert len(ok) >= 10
    for key, row in ok.iterrows():
        real = sheet.loc[key]
        for name in CHEXPERT_LABELS:
            assert np.allclose(row[label_column(name)], real[name], equal_nan=True)
        assert row["view"] == {"PA": "PA", "AP": "AP", "L": "LATERAL"}.get(real["ViewPosition"], "UNKNOWN")
        assert row["sex"] == (real["PatientSex"] if real["PatientSex"] in ("M", "F") else "U")
        assert row["patient_id"] == real["PatientID"] and row["study_id"].startswith(real["PatientID"] + "_")
        if bad_kind_of(root / row["rel_path"]) == "truncated":
            continue
        ds = pydicom.dcmread(root / row["rel_path"], stop_before_pixels=True)
        assert str(ds.PatientName) in ctx.phi.canaries and ds.PatientID == real["PatientID"]
    assert ok["age"].dropna().between(2.5, 87.5).all()


def test_same_seed_writes_identical_files(tmp_path):
    first, second = write_twice("brax", tmp_path, 3, seed=5)
    assert first == second and len(first) == 4


def test_hand_made_layout_pins_the_real_conventions(tmp_path):
    rel = ("id_a8319cca-34351e63-024eb674-e34030b6-80bb3f40/Study_64491075.55988256.27027861.57546766.84854567/"
           "Series_12173925.70934735.79756216.27080791.76608566")
    png = f"images/{rel}/image-22690942-78813103-68555148-48389446-07160114.png"
    (tmp_path / png).parent.mkdir(parents=True)
    (tmp_path / png).write_bytes(b"png")
    labels = ",".join(CHEXPERT_LABELS)
    (tmp_path / "master_spreadsheet_update.csv").write_text(
        f",PatientID,AccessionNumber,DicomPath,PngPath,PatientSex,PatientAge,StudyDate,{labels},ViewPosition,Rows,"
        "Columns,Manufacturer\n"
        f"0,id_a8319cca-34351e63-024eb674-e34030b6-80bb3f40,12345,Anonymized_DICOMs/{rel}/"
        f"image-22690942-78813103-68555148-48389446-07160114.dcm,{png}.suffix,O,85 or more,20150101,"
        ",,1.0,,,-1.0,,,,0.0,,,,1.0,L,3000,2500,1\n"
        f"1,id_a8319cca-34351e63-024eb674-e34030b6-80bb3f40,12345,x.dcm,images/{rel}/image-1-2-3-4-5.png,F,40,"
        "20150101,1.0,,,,,,,,,,,,,,AP LLD,3000,2500,1\n")
    df = get_adapter("brax")(tmp_path, {}).set_index("rel_path")
    row = df.loc[png]
    assert row["file_format"] == "png" and pd.isna(row["reject_reason"])
    assert (row["view"], row["sex"], row["age"]) == ("LATERAL", "U", 87.5)
    assert row["study_id"] == "id_a8319cca-34351e63-024eb674-e34030b6-80bb3f40_12345"
    assert row["lbl_cardiomegaly"] == 1.0 and row["lbl_edema"] == -1.0 and row["lbl_pneumothorax"] == 0.0
    assert np.isnan(row["lbl_no_finding"])
    other = df.loc[f"images/{rel}/image-1-2-3-4-5.png"]
    assert (other["reject_reason"], other["view"], other["age"]) == ("missing_file", "UNKNOWN", 42.5)
    assert parse_age("85 or more") == 87.5 and np.isnan(parse_age(None))
