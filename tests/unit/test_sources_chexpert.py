"""CheXpert: demo writer layout + adapter on the demo corpus and on a hand-made minimal release."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sources_helpers import demo_corpus_fixture, file_digests, files_listed_once, image_modes

from cxrgen.demo.common import DemoContext
from cxrgen.demo.layouts import chexpert as demo
from cxrgen.demo.sampling import read_shipped
from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS, label_column
from cxrgen.sources.base import get_adapter
from cxrgen.sources.chexpert import scan_chexpert

N, SEED, DOWNSCALE, BAD = 25, 3, 8.0, 0.16  # 4 bad files: one of each kind
RELEASE = "CheXpert-v1.0-small"
HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
          "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,"
          "Support Devices")


def _ctx(seed: int = SEED) -> DemoContext:
    return DemoContext(seed=seed, downscale=DOWNSCALE, bad_fraction=BAD)


corpus = demo_corpus_fixture("chexpert", N, _ctx())


def _csv(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / RELEASE / name, dtype=str, keep_default_na=False)


def test_layout_and_real_rows(corpus):
    root, _, _ = corpus
    assert sorted(p.name for p in (root / RELEASE).iterdir()) == ["train", "train.csv", "valid", "valid.csv"]
    for name in ("train.csv", "valid.csv"):
        assert (root / RELEASE / name).read_text().splitlines()[0] == HEADER
    train = _csv(root, "train.csv")
    assert train["Path"].str.match(rf"{RELEASE}/train/patient\d{{5}}/study\d+/view\d_(frontal|lateral)\.jpg$").all()
    shipped = set(read_shipped("chexpert_train.csv.gz").to_csv(index=False).splitlines()[1:])
    assert set(train.to_csv(index=False).splitlines()[1:]) <= shipped  # train rows are real rows, unchanged
    valid = _csv(root, "valid.csv")
    assert len(valid) >= 1 and valid["Path"].str.match(rf"{RELEASE}/valid/patient6454\d/study\d+/view\d_").all()
    assert set(valid[list(CHEXPERT_LABELS)].to_numpy().ravel()) <= {"0.0", "1.0"}
    with Image.open(next((root / RELEASE / "train").rglob("*.jpg"))) as im:
        assert im.format == "JPEG" and im.size == (demo.film_size(DOWNSCALE)[1], demo.film_size(DOWNSCALE)[0])


def test_every_file_once_and_bad_files(corpus):
    root, _, manifest = corpus
    files_listed_once(root, manifest, "*.jpg")
    assert len(manifest) == N
    assert manifest["reject_reason"].value_counts().to_dict() == {"missing_file": 1, "missing_metadata": 1}
    modes, broken = image_modes(root, manifest.loc[manifest["reject_reason"].isna(), "rel_path"])
    assert broken == 1 and modes.count("RGB") == 1 and set(modes) == {"L", "RGB"}


def test_labels_ids_views_and_splits(corpus):
    root, _, manifest = corpus
    rows = pd.concat([_csv(root, "train.csv").assign(split="train"), _csv(root, "valid.csv").assign(split="test")])
    kept = manifest[manifest["reject_reason"] != "missing_metadata"].set_index("source_key")
    assert set(kept.index) == set(rows["Path"])
    for row in rows.to_dict("records"):
        got = kept.loc[row["Path"]]
        for label in CHEXPERT_LABELS:
            cell = row[label]
            expected = np.nan if cell == "" else float(cell)
            assert got[label_column(label)] == expected or (np.isnan(expected) and np.isnan(got[label_column(label)]))
        patient, study = row["Path"].split("/")[2:4]
        assert got["patient_id"] == patient and got["study_id"] == f"{patient}/{study}"
        view = "LATERAL" if row["Frontal/Lateral"] == "Lateral" else row["AP/PA"]
        assert got["view"] == view and got["official_split"] == row["split"]
        assert got["sex"] == {"Male": "M", "Female": "F"}[row["Sex"]] and got["age"] == float(row["Age"])
        assert np.isnan(got["spacing_hint_mm"]) and got["file_format"] == "jpg"
    labels = kept[list(LABEL_COLUMNS)]
    assert (labels == -1).any().any() and labels.isna().any().any()  # uncertain and blank survive
    assert kept["patient_id"].value_counts().max() >= 2


def test_root_may_be_the_release_folder(corpus):
    root, _, manifest = corpus
    inner = scan_chexpert(root / RELEASE, {})
    assert sorted(inner["rel_path"]) == sorted(p.removeprefix(f"{RELEASE}/") for p in manifest["rel_path"])
    matched = inner["reject_reason"].isna()
    assert set(inner.loc[matched, "source_key"]) == set(manifest.loc[manifest["reject_reason"].isna(), "source_key"])


def test_writer_is_deterministic(corpus, tmp_path):
    root, _, _ = corpus
    demo.write(tmp_path / "again", N, _ctx())
    assert file_digests(tmp_path / "again") == file_digests(root)


def test_minimal_hand_made_release(tmp_path):
    release = tmp_path / "CheXpert-v1.0-small"
    release.mkdir()
    blank14 = "," * 13
    (release / "train.csv").write_text(
        HEADER + "\n"
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0\n"
        "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Male,87,Frontal,PA,,,-1.0,1.0,,-1.0,-1.0,,"
        "-1.0,,-1.0,,1.0,\n"
        "CheXpert-v1.0-small/train/patient00002/study2/view2_lateral.jpg,Male,87,Lateral,," + blank14 + "\n"
        "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Unknown,0,Frontal,LL," + blank14 + "\n")
    (release / "valid.csv").write_text(
        HEADER + "\n"
        "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,"
        "0.0,1.0,1.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n")
    for rel in ("train/patient00001/study1/view1_frontal.jpg", "train/patient00002/study2/view1_frontal.jpg",
                "train/patient00003/study1/view1_frontal.jpg", "valid/patient64541/study1/view1_frontal.jpg",
                "train/patient00009/study1/view1_frontal.jpg"):  # the last has no row; the lateral has no file
        (release / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(release / rel, format="JPEG")
    m = get_adapter("chexpert")(tmp_path, {}).set_index("rel_path")
    assert len(m) == 6
    p = "CheXpert-v1.0-small/"
    assert m.loc[p + "train/patient00009/study1/view1_frontal.jpg", "reject_reason"] == "missing_metadata"
    lateral = m.loc[p + "train/patient00002/study2/view2_lateral.jpg"]
    assert lateral["reject_reason"] == "missing_file" and lateral["view"] == "LATERAL"
    assert lateral[list(LABEL_COLUMNS)].isna().all()
    first = m.loc[p + "train/patient00001/study1/view1_frontal.jpg"]
    assert first[["lbl_no_finding", "lbl_pneumothorax", "lbl_support_devices"]].tolist() == [1.0, 0.0, 1.0]
    assert np.isnan(first["lbl_cardiomegaly"]) and first["sex"] == "F" and first["view"] == "AP"
    second = m.loc[p + "train/patient00002/study2/view1_frontal.jpg"]
    assert second[["lbl_cardiomegaly", "lbl_lung_opacity", "lbl_atelectasis", "lbl_fracture"]].tolist() == [
        -1.0, 1.0, -1.0, 1.0]
    assert second["view"] == "PA" and second["study_id"] == "patient00002/study2"
    odd = m.loc[p + "train/patient00003/study1/view1_frontal.jpg"]
    assert odd["view"] == "UNKNOWN" and odd["sex"] == "U"  # "Frontal" + "LL" disagree
    val = m.loc[p + "valid/patient64541/study1/view1_frontal.jpg"]
    assert val["official_split"] == "test" and val["lbl_enlarged_cardiomediastinum"] == 1.0
    assert set(m.loc[m["reject_reason"] != "missing_metadata", "official_split"]) == {"train", "test"}
