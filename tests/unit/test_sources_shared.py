"""Helpers shared by all demo writers and adapters: the bad-file planner, tree listing, key merge, manifest finish."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrgen.demo.badfiles import DICOM_FILM_MIX, IMAGE_FILE_MIX, plan_bad_files
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.sources.files import finish_manifest, list_files, merge_on_key


def test_planner_covers_every_kind_of_a_mix_once_per_cycle():
    rng = np.random.default_rng(0)
    dicom = plan_bad_files(range(20), 0.3, rng, DICOM_FILM_MIX)
    assert len(dicom) == 6 and sorted(dicom.values()) == sorted(DICOM_FILM_MIX.kinds)
    keys = [f"img{i:02d}.png" for i in range(25)]
    image = plan_bad_files(keys, 0.16, np.random.default_rng(0), IMAGE_FILE_MIX)
    assert list(image.values()) == list(IMAGE_FILE_MIX.kinds)  # fixed start, in key order
    assert list(image) == sorted(image) and set(image) <= set(keys)
    assert plan_bad_files(keys, 0.16, np.random.default_rng(0), IMAGE_FILE_MIX) == image


def test_planner_count_rules_and_no_draw_when_nothing_is_bad():
    # 0.1 * 25 = 2.5: the DICOM writers round (half to even, at least one), the image writers round up
    assert len(plan_bad_files(range(25), 0.1, np.random.default_rng(1), DICOM_FILM_MIX)) == 2
    assert len(plan_bad_files(range(25), 0.1, np.random.default_rng(1), IMAGE_FILE_MIX)) == 3
    assert len(plan_bad_files(range(5), 0.01, np.random.default_rng(1), DICOM_FILM_MIX)) == 1
    rng = np.random.default_rng(2)
    assert plan_bad_files(range(25), 0.0, rng, DICOM_FILM_MIX) == {} and plan_bad_files([], 0.5, rng, IMAGE_FILE_MIX) == {}
    assert rng.integers(10**9) == np.random.default_rng(2).integers(10**9)


def test_listing_skips_top_folders_and_matches_suffixes_case_insensitively(tmp_path):
    for rel in ("a/B.DCM", "a/c.dcm.txt", "reports/x.dcm", "deep/reports/y.dcm", "z.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    listed = list_files(tmp_path, (".dcm",), skip_top_dirs=("reports",))
    assert listed["rel_path"].tolist() == ["a/B.DCM", "deep/reports/y.dcm"]
    assert listed["name"].tolist() == ["B.DCM", "y.dcm"]


def test_merge_flags_and_finish_fills_unknown_columns():
    disk = pd.DataFrame({"rel_path": ["f/a.dcm", "f/b.dcm"], "source_key": ["a", "b"]})
    meta = pd.DataFrame({"source_key": ["b", "c"], "patient_id": ["p1", "p2"]})
    df = merge_on_key(disk, meta).set_index("source_key")
    assert df["reject_reason"].fillna("ok").to_dict() == {"a": "missing_metadata", "b": "ok", "c": "missing_file"}
    df = df.reset_index()
    df.loc[df["rel_path"].isna(), "rel_path"] = "f/c.dcm"
    df["patient_id"] = df["patient_id"].fillna(df["source_key"])
    df["study_id"] = df["patient_id"]
    df["file_format"] = "dicom"
    df["view"] = "PA"  # a column the adapter sets is kept
    for col in LABEL_COLUMNS:
        df[col] = np.nan
    manifest = finish_manifest(df, "demo")
    assert manifest["rel_path"].tolist() == ["f/a.dcm", "f/b.dcm", "f/c.dcm"]
    assert (manifest["source"] == "demo").all() and (manifest["view"] == "PA").all()
    assert (manifest["sex"] == "U").all() and manifest["age"].isna().all()
    assert manifest["official_split"].isna().all() and manifest["spacing_hint_mm"].isna().all()
    empty = finish_manifest(merge_on_key(disk.iloc[:0], meta.iloc[:0]), "demo")
    assert empty.empty and empty["age"].dtype == np.float64
