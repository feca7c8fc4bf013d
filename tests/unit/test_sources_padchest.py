"""PadChest: demo writer layout + adapter on the demo corpus, the label policy, and a hand-made minimal release."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sources_helpers import demo_corpus_fixture, file_digests, files_listed_once

from cxrgen.demo.common import DemoContext
from cxrgen.demo.layouts import padchest as demo
from cxrgen.demo.sampling import read_shipped
from cxrgen.labels import LABEL_COLUMNS, label_column
from cxrgen.sources.base import get_adapter
from cxrgen.sources.padchest import CSV_NAME, padchest_labels, scan_padchest

N, SEED, DOWNSCALE, BAD = 25, 11, 8.0, 0.16  # 4 bad files: one of each kind
CHANGED_COLUMNS = ("Rows_DICOM", "Columns_DICOM", "SpatialResolution_DICOM")


def _ctx(seed: int = SEED) -> DemoContext:
    return DemoContext(seed=seed, downscale=DOWNSCALE, bad_fraction=BAD)


corpus = demo_corpus_fixture("padchest", N, _ctx())


def _table(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / CSV_NAME, dtype=str, keep_default_na=False)


def test_csv_rows_are_real_except_the_scaled_geometry(corpus):
    root, _, _ = corpus
    table = _table(root)
    shipped = read_shipped(f"{CSV_NAME}.gz").set_index("ImageID")
    assert table.columns[0] == "Unnamed: 0" and len(table.columns) == 36  # the unnamed index column is kept
    table = table.rename(columns={"Unnamed: 0": ""}).set_index("ImageID")
    real = shipped.loc[table.index]
    same = [c for c in table.columns if c not in CHANGED_COLUMNS]
    assert (table[same] == real[same]).all().all()
    assert (table["Rows_DICOM"].astype(int) == (real["Rows_DICOM"].astype(float) / DOWNSCALE).round()).all()
    has = real["SpatialResolution_DICOM"] != "None"
    assert has.any() and (~has).any()
    assert np.allclose(table.loc[has, "SpatialResolution_DICOM"].astype(float),
                       real.loc[has, "SpatialResolution_DICOM"].astype(float) * DOWNSCALE)


def test_every_file_once_and_bad_files(corpus):
    root, _, manifest = corpus
    files_listed_once(root, manifest, "*.png")
    assert len(manifest) == N
    assert manifest["reject_reason"].value_counts().to_dict() == {"missing_file": 1, "missing_metadata": 1}
    table = _table(root).set_index("ImageID")
    modes, broken = [], 0
    for row in manifest[manifest["reject_reason"].isna()].itertuples():
        assert row.rel_path == f"{table.loc[row.source_key, 'ImageDir']}/{row.source_key}"
        try:
            with Image.open(root / row.rel_path) as im:
                pixels = np.asarray(im)
                modes.append(im.mode)
        except OSError:
            broken += 1
            continue
        if im.mode == "I;16":
            assert pixels.dtype == np.uint16 and pixels.max() <= 2 ** row.bits_stored_hint - 1
            assert pixels.shape == (int(table.loc[row.source_key, "Rows_DICOM"]),
                                    int(table.loc[row.source_key, "Columns_DICOM"]))
    assert broken == 1 and modes.count("RGB") == 1 and set(modes) == {"I;16", "RGB"}


def test_ids_views_spacing_and_labels_follow_the_csv(corpus):
    root, _, manifest = corpus
    table = _table(root).set_index("ImageID")
    kept = manifest[manifest["reject_reason"] != "missing_metadata"].set_index("source_key")
    assert set(kept.index) == set(table.index)
    views = {"PA": "PA", "L": "LATERAL", "AP": "AP", "AP_horizontal": "AP"}
    for key, row in table.iterrows():
        got = kept.loc[key]
        assert got["patient_id"] == row["PatientID"] and got["study_id"] == row["StudyID"]
        assert got["view"] == views.get(row["Projection"], "UNKNOWN")
        assert got["bits_stored_hint"] == float(row["BitsStored_DICOM"])
        spacing = row["SpatialResolution_DICOM"]
        assert (np.isnan(got["spacing_hint_mm"]) if spacing == "None" else got["spacing_hint_mm"] == float(spacing))
        assert got["age"] == int(row["StudyDate_DICOM"][:4]) - float(row["PatientBirth"])
        assert got["report_findings"] is None and got["official_split"] is None
        terms = {t.strip() for t in row["Labels"].strip("[]").replace("'", "").split(",")}
        if "pleural effusion" in terms:
            assert got[label_column("Pleural Effusion")] == 1.0
        if terms == {"normal"}:
            assert got[list(LABEL_COLUMNS)].tolist() == [1.0] + [0.0] * 13
    assert kept["patient_id"].value_counts().max() >= 2
    assert (kept[list(LABEL_COLUMNS[1:])] == 1).any(axis=1).sum() >= N // 2  # findings dominate


def test_keep_report_option(corpus):
    root, _, _ = corpus
    with_text = scan_padchest(root, {"keep_report": True})
    kept = with_text[with_text["reject_reason"] != "missing_metadata"].set_index("source_key")
    table = _table(root).set_index("ImageID")
    assert (kept["report_findings"] == table.loc[kept.index, "Report"].str.strip()).all()


def test_writer_is_deterministic(corpus, tmp_path):
    root, _, _ = corpus
    demo.write(tmp_path / "again", N, _ctx())
    assert file_digests(tmp_path / "again") == file_digests(root)


def test_label_policy():
    labels = pd.Series([
        "['normal']",
        "['pleural effusion', 'NSG tube', 'COPD signs']",
        "['unchanged']",
        "['unchanged', ' cardiomegaly']",
        "['normal', 'cardiomegaly']",
        "['hydropneumothorax', 'callus rib fracture']",
        "['exclude']",
        "[]",
        None,
        "['normal', 'pacemaker']",
        "['scoliosis']",
        "['', 'suboptimal study']",
    ])
    raw = padchest_labels(labels)
    col = {name: label_column(name) for name in ("No Finding", "Cardiomegaly", "Pleural Effusion", "Pneumothorax",
                                                 "Fracture", "Support Devices", "Edema")}
    assert raw.iloc[0].tolist() == [1.0] + [0.0] * 13
    assert raw.iloc[1][[col["Pleural Effusion"], col["Support Devices"], col["No Finding"], col["Edema"]]].tolist() == [
        1.0, 1.0, 0.0, 0.0]
    for i in (2, 6, 7, 8, 11):  # nothing informative: every label blank
        assert raw.iloc[i].isna().all(), labels[i]
    assert raw.iloc[3][col["Cardiomegaly"]] == 1.0 and raw.iloc[3][col["No Finding"]] == 0.0
    assert np.isnan(raw.iloc[3][col["Edema"]])  # "unchanged": unmentioned findings unknown
    assert raw.iloc[4][[col["No Finding"], col["Cardiomegaly"]]].tolist() == [0.0, 1.0]
    assert raw.iloc[5][[col["Pneumothorax"], col["Pleural Effusion"], col["Fracture"]]].tolist() == [1.0, 1.0, 1.0]
    assert raw.iloc[9][[col["No Finding"], col["Support Devices"]]].tolist() == [1.0, 1.0]
    assert raw.iloc[10].tolist() == [0.0] * 14  # an unmapped finding: complete report, no CheXpert finding
    assert not (raw == -1).any().any()


def test_phantom_laterality_from_localisations():
    assert demo.padchest_findings("[['pleural effusion', 'loc left', 'loc costophrenic angle']]") == {
        "Pleural Effusion": "left"}
    assert demo.padchest_findings("['nodule', 'loc right']") == {"Lung Lesion": "right"}  # flat single sentence
    both = "[['pneumonia', 'loc right'], ['pneumonia', 'loc left'], ['cardiomegaly']]"
    assert demo.padchest_findings(both) == {"Pneumonia": "bilateral", "Cardiomegaly": ""}
    assert demo.padchest_findings("[['normal'], ['scoliosis']]") == {}


def test_minimal_hand_made_release(tmp_path):
    header = (",ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,PatientSex_DICOM,Projection,"
              "SpatialResolution_DICOM,BitsStored_DICOM,Report,Labels\n")
    (tmp_path / CSV_NAME).write_text(
        header
        + "0,a_1.png,0,20140915,S1,P1,1930.0,F,PA,None,12, sin hallazg patolog edad pacient .,['normal']\n"
        + "1,a_2.png,0,20140915,S1,P1,1930.0,F,L,0.143,12, sin hallazg .,['normal']\n"
        + "2,b_1.png,54,20150101,S2,P2,1950.0,M,AP_horizontal,0.2,10, derram pleural .,\"['pleural effusion', 'loc left']\"\n"
        + "3,c_1.png,7,20150101,S3,P3,,O,COSTAL,None,12,,['exclude']\n")
    for rel in ("0/a_1.png", "a_2.png", "54/b_1.png", "9/zz.png"):  # a_2 flattened to the root; c_1 missing
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / rel)
    m = get_adapter("padchest")(tmp_path, {}).set_index("source_key")
    assert len(m) == 5
    assert m.loc["a_1.png", "view"] == "PA" and np.isnan(m.loc["a_1.png", "spacing_hint_mm"])
    assert m.loc["a_2.png", "rel_path"] == "a_2.png" and m.loc["a_2.png", "view"] == "LATERAL"
    assert m.loc["a_2.png", "spacing_hint_mm"] == 0.143 and m.loc["a_1.png", "age"] == 84.0
    b = m.loc["b_1.png"]
    assert (b["view"], b["bits_stored_hint"], b["sex"], b["patient_id"], b["study_id"]) == ("AP", 10.0, "M", "P2", "S2")
    assert b["lbl_pleural_effusion"] == 1.0 and b["lbl_no_finding"] == 0.0 and b["report_findings"] is None
    c = m.loc["c_1.png"]
    assert (c["reject_reason"], c["rel_path"], c["view"], c["sex"]) == ("missing_file", "7/c_1.png", "UNKNOWN", "U")
    assert np.isnan(c["age"]) and c[list(LABEL_COLUMNS)].isna().all()
    assert m.loc["9/zz.png", "reject_reason"] == "missing_metadata"
