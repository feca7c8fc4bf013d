"""MIMIC-CXR: demo writer in the real layout -> adapter; plus a hand-made layout pinning the real CSV conventions."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from sources_helpers import demo_corpus_fixture, write_twice

from cxrgen.demo.badfiles import bad_kind_of
from cxrgen.demo.common import DemoContext
from cxrgen.sources.base import get_adapter
from cxrgen.sources.mimic import parse_report_sections

demo = demo_corpus_fixture("mimic", 20, DemoContext(seed=3, downscale=10, bad_fraction=0.3))


def test_every_image_file_appears_once_and_bad_files_are_flagged(demo):
    root, _, df = demo
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.dcm"))
    present = df[df["reject_reason"] != "missing_file"]
    assert sorted(present["rel_path"]) == on_disk
    assert df["source_key"].is_unique
    missing = df[df["reject_reason"] == "missing_file"]
    assert len(missing) >= 1 and not any((root / p).exists() for p in missing["rel_path"])
    orphans = df[df["reject_reason"] == "missing_metadata"]
    assert len(orphans) >= 1 and all((root / p).exists() for p in orphans["rel_path"])
    kinds = Counter(bad_kind_of(root / p) for p in on_disk)
    assert {"truncated", "no_pixels", "multi_frame", "non_chest"} <= set(kinds)


def test_labels_splits_views_and_reports_follow_the_csvs(demo):
    root, _, df = demo
    ok = df[df["reject_reason"].isna()]
    labels = pd.read_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", dtype={"subject_id": str, "study_id": str})
    assert list(labels.columns[:2]) == ["subject_id", "study_id"] and list(labels.columns[2:]) == sorted(
        labels.columns[2:])
    by_study = labels.set_index("study_id")
    for row in ok.itertuples():
        assert np.allclose(row.lbl_pleural_effusion, by_study.loc[row.study_id, "Pleural Effusion"], equal_nan=True)
        assert np.allclose(row.lbl_no_finding, by_study.loc[row.study_id, "No Finding"], equal_nan=True)
    assert set(np.unique(labels.iloc[:, 2:].to_numpy(dtype=float)[~np.isnan(labels.iloc[:, 2:].to_numpy(float))])) \
        <= {1.0, 0.0, -1.0}
    meta = pd.read_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", dtype=str).set_index("dicom_id")
    expected_view = meta.loc[ok["source_key"], "ViewPosition"].map({"PA": "PA", "AP": "AP", "LL": "LATERAL",
                                                                     "LATERAL": "LATERAL"})
    assert list(ok["view"]) == list(expected_view)
    split = pd.read_csv(root / "mimic-cxr-2.0.0-split.csv.gz", dtype=str).set_index("dicom_id")["split"]
    assert list(ok["official_split"]) == list(split.loc[ok["source_key"]].map({"train": "train", "validate": "val",
                                                                               "test": "test"}))
    assert ok.groupby("patient_id")["official_split"].nunique().max() == 1  # splits are per subject
    assert ok["patient_id"].astype(int).between(10_000_000, 19_999_999).all()
    assert (ok["report_findings"].notna() | ok["report_impression"].notna()).all()
    assert (ok["sex"] == "U").all() and ok["age"].isna().all()
    study = ok.iloc[0]
    text = (root / Path(study["rel_path"]).parent.with_suffix(".txt")).read_text()
    assert text.lstrip().startswith("FINAL REPORT") and "EXAMINATION:" in text and "XXXX" not in text


def test_phi_is_in_the_written_headers(demo):
    root, ctx, df = demo
    ok = df[df["reject_reason"].isna()]
    for row in ok[[bad_kind_of(root / p) is None for p in ok["rel_path"]]].itertuples():
        ds = pydicom.dcmread(root / row.rel_path, stop_before_pixels=True)
        assert str(ds.PatientName) in ctx.phi.canaries and ds.InstitutionName in ctx.phi.canaries
        assert ds.PatientID == row.patient_id and ds.BodyPartExamined == "CHEST"


def test_same_seed_writes_identical_files(tmp_path):
    first, second = write_twice("mimic", tmp_path, 4, seed=11)
    assert first == second and len(first) >= 4 + 3


def test_report_sections_tolerate_missing_and_merged_headers():
    assert parse_report_sections(" FINAL REPORT\n INDICATION: x\n\n IMPRESSION: \n\n No acute process.\n") == {
        "findings": None, "impression": "No acute process."}
    both = parse_report_sections(" FINDINGS AND IMPRESSION:\n Clear lungs.\n  No effusion.\n")
    assert both == {"findings": "Clear lungs. No effusion.", "impression": "Clear lungs. No effusion."}
    assert parse_report_sections("free text without headers") == {"findings": None, "impression": None}


def test_hand_made_layout_pins_the_real_conventions(tmp_path):
    study_dir = tmp_path / "files" / "p10" / "p10000032"
    (study_dir / "s50414267").mkdir(parents=True)
    (study_dir / "s50414267" / "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.dcm").write_bytes(b"x")
    (study_dir / "s50414267" / "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962.dcm").write_bytes(b"x")
    (study_dir / "s50414267.txt").write_text(
        "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  ___F\n"
        " \n FINDINGS: \n \n There is no focal consolidation, pleural effusion or\n pneumothorax.\n \n"
        " IMPRESSION: \n \n No acute cardiopulmonary process.\n")
    meta = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
            "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
            "PatientOrientationCodeSequence_CodeMeaning\n"
            "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,"
            "21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect\n"
            "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,"
            "21800506,213014.531,CHEST (PA AND LAT),lateral,Erect\n"
            "deadbeef-00000000-00000000-00000000-00000000,10000032,50414267,CHEST (PA AND LAT),,3056,2544,"
            "21800506,213014.531,CHEST (PA AND LAT),,Erect\n")
    with gzip.open(tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as f:
        f.write(meta)
    (tmp_path / "mimic-cxr-2.0.0-chexpert.csv").write_text(
        "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,"
        "Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices\n"
        "10000032,50414267,,,0.0,,,,,,1.0,-1.0,,,0.0,\n")
    (tmp_path / "mimic-cxr-2.0.0-split.csv").write_text(
        "dicom_id,study_id,subject_id,split\n02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,50414267,10000032,validate\n"
        "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,50414267,10000032,test\n")
    df = get_adapter("mimic")(tmp_path, {}).set_index("source_key")
    pa = df.loc["02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"]
    assert (pa["view"], pa["official_split"], pa["patient_id"], pa["study_id"]) == ("PA", "val", "10000032", "50414267")
    assert pa["lbl_no_finding"] == 1.0 and pa["lbl_pleural_effusion"] == -1.0 and pa["lbl_pneumothorax"] == 0.0
    assert np.isnan(pa["lbl_cardiomegaly"])
    assert pa["report_findings"] == "There is no focal consolidation, pleural effusion or pneumothorax."
    assert pa["report_impression"] == "No acute cardiopulmonary process."
    assert df.loc["174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "view"] == "LATERAL"
    absent = df.loc["deadbeef-00000000-00000000-00000000-00000000"]
    assert absent["reject_reason"] == "missing_file" and absent["view"] == "UNKNOWN"
    assert absent["rel_path"] == "files/p10/p10000032/s50414267/deadbeef-00000000-00000000-00000000-00000000.dcm"
