import numpy as np
import pandas as pd
import pytest

from cxrgen.ingest import REJECTION_COLUMNS, SHAREABLE_REJECTION_COLUMNS
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.stages.unify_store import unify, unify_store
from cxrgen.unify import assign_splits, find_duplicates, summarise


def _index(n_patients=400, images_per_patient=3, source="padchest", official=None, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for i in range(images_per_patient):
            rows.append({"image_id": f"{source}-{p}-{i}", "source": source, "patient_pid": f"{source}-p{p}",
                         "official_split": official(p, i) if official else None,
                         "content_sha256": f"{source}{p}{i}", "shard": 0})
    df = pd.DataFrame(rows)
    for col in LABEL_COLUMNS:
        df["raw_" + col] = rng.choice([1.0, 0.0, -1.0, np.nan], len(df))
    return df


def test_patient_wise_and_fractions():
    index = _index()
    split = assign_splits(index, 0.1, 0.2, seed=7)
    per_patient = split.groupby(index["patient_pid"]).nunique()
    assert per_patient.max() == 1
    shares = split.value_counts(normalize=True)
    assert abs(shares["test"] - 0.2) < 0.06 and abs(shares["val"] - 0.1) < 0.05


def test_deterministic_and_seed_dependent():
    index = _index()
    a = assign_splits(index, 0.1, 0.1, seed=1)
    assert a.equals(assign_splits(index.sample(frac=1, random_state=3), 0.1, 0.1, seed=1).loc[a.index])
    assert not a.equals(assign_splits(index, 0.1, 0.1, seed=2))


def test_official_test_and_val_are_honoured():
    # MIMIC-like: patients 0-39 official test; 40-59 validate; patient 60 has one test image among train images
    def official(p, i):
        if p < 40 or (p == 60 and i == 2):
            return "test"
        return "val" if p < 60 else "train"

    index = _index(official=official, source="mimic")
    split = assign_splits(index, 0.1, 0.1, seed=0)
    patient = index["patient_pid"].str.slice(len("mimic-p")).astype(int)
    assert (split[patient < 40] == "test").all()
    assert (split[(patient >= 40) & (patient < 60)] == "val").all()
    assert (split[patient == 60] == "test").all()  # strictest official level wins for the whole patient
    assert (split[patient > 60] == "train").all()  # source defines all roles: nothing else is held out


def test_official_test_only_source_draws_val_but_no_extra_test():
    index = _index(official=lambda p, i: "test" if p < 50 else "train", source="nih")
    split = assign_splits(index, 0.2, 0.2, seed=0)
    patient = index["patient_pid"].str.slice(len("nih-p")).astype(int)
    assert (split[patient < 50] == "test").all()
    assert (split[patient >= 50] != "test").all()
    assert (split[patient >= 50] == "val").mean() > 0.1


def test_duplicates_keep_priority_source():
    a = _index(5, 1, source="nih")
    b = _index(5, 1, source="padchest")
    b.loc[2, "content_sha256"] = a.loc[3, "content_sha256"]
    b.loc[4, "content_sha256"] = b.loc[0, "content_sha256"]  # within-source duplicate
    dups = find_duplicates(pd.concat([b, a]), ["nih", "padchest"])
    assert set(dups["image_id"]) == {"padchest-2-0", "padchest-4-0"}
    assert dups.set_index("image_id").loc["padchest-2-0", "duplicate_of"] == "nih-3-0"


def test_unify_end_to_end_reconciles(tmp_path):
    a = _index(30, 2, source="nih")
    b = _index(20, 2, source="vindr")
    b.loc[0, "content_sha256"] = a.loc[0, "content_sha256"]
    rej = pd.DataFrame({"image_id": ["x1", "x2", "x3"], "source": ["nih", "nih", "vindr"], "rel_path": ["a", "b", "c"],
                        "shard": [0, 0, 0], "reason": ["unreadable", "missing_file", "wrong_modality"],
                        "detail": ["", "", ""]})
    paths = []
    for i, part in enumerate((a, b)):
        paths.append(tmp_path / f"i{i}.parquet")
        part.to_parquet(paths[-1])
    rej.to_parquet(tmp_path / "r.parquet")
    index, rejections, summary = unify(paths, [tmp_path / "r.parquet"], label_policy={"uncertain": "ones",
                                       "blank": "zeros"}, val_fraction=0.1, test_fraction=0.1,
                                       source_priority=["nih", "vindr"], seed=0)
    assert len(index) == 60 + 40 - 1
    assert summary["sources"]["nih"] == summary["sources"]["nih"] | {"files_seen": 61, "ingested": 60, "rejected": 1,
                                                                     "metadata_rows_without_file": 1}
    assert summary["sources"]["vindr"]["files_seen"] == 41  # 39 ingested + 1 wrong modality + 1 duplicate
    assert summary["sources"]["vindr"]["rejected_by_reason"]["duplicate"] == 1
    assert summary["patients_in_more_than_one_split"] == 0
    assert set(np.unique(index[list(LABEL_COLUMNS)].to_numpy())) <= {0.0, 1.0}
    assert set(rejections["reason"]) == {"unreadable", "missing_file", "wrong_modality", "duplicate"}


def test_unify_store_keeps_source_paths_out_of_the_store(tmp_path):
    """The store (index, summary, splits, rejection list) is shareable: source paths, which embed dataset ids, and
    decoder details go only to the ingestion-private rejection manifest."""
    a = _index(10, 2, source="mimic")
    a.to_parquet(tmp_path / "i.parquet")
    subject_path = "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.dcm"
    pd.DataFrame({"image_id": ["mimic-x1", "mimic-x2"], "source": ["mimic", "mimic"],
                  "rel_path": [subject_path, "files/p11/p11000011/s51000011/gone.dcm"], "shard": [0, 0],
                  "reason": ["unreadable", "missing_file"],
                  "detail": [f"UnidentifiedImageError: cannot identify image file '/data/{subject_path}'", ""]},
                 ).to_parquet(tmp_path / "r.parquet")
    store, private = tmp_path / "store", tmp_path / "ingest"
    store.mkdir()
    summary = unify_store(
        [tmp_path / "i.parquet"], [tmp_path / "r.parquet"], label_policy={"uncertain": "ones", "blank": "zeros"},
        val_fraction=0.1, test_fraction=0.1, source_priority=["mimic"], seed=0, labeler_sources=[],
        index_path=store / "index.parquet", rejections_path=store / "rejections.parquet",
        rejection_manifest_path=private / "rejections.parquet", summary_path=store / "summary.json",
        splits_dir=store / "splits")
    assert summary["total_rejected"] == 1
    shared = pd.read_parquet(store / "rejections.parquet")
    assert tuple(shared.columns) == SHAREABLE_REJECTION_COLUMNS
    assert sorted(shared["reason"]) == ["missing_file", "unreadable"]
    manifest = pd.read_parquet(private / "rejections.parquet")
    assert tuple(manifest.columns) == REJECTION_COLUMNS and subject_path in set(manifest["rel_path"])
    for path in store.rglob("*"):
        if path.is_file():
            text = pd.read_parquet(path).to_csv() if path.suffix == ".parquet" else path.read_text()
            assert "10000032" not in text and "50414267" not in text and "11000011" not in text, path


def test_summarise_counts_every_file_once():
    index = _index(3, 2).assign(split="train")
    rejections = pd.DataFrame({"source": ["padchest"] * 2, "reason": ["unreadable", "unreadable"]})
    s = summarise(index, rejections, pd.DataFrame())
    assert s["sources"]["padchest"]["files_seen"] == 8


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.7, 0.4)])
def test_impossible_fractions(fractions):
    with pytest.raises(ValueError, match="val_fraction"):
        assign_splits(_index(3, 1), *fractions, seed=0)
