"""Rule ingest_shard (decode_shard) on a hand-made manifest: good files land in the store, bad ones are rejected."""

import numpy as np
import pandas as pd

from cxrgen.demo.dicom_writer import write_dicom
from cxrgen.ingest import shard_of
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.stages.ingest_shard import decode_shard
from cxrgen.store import ShardStore


def _manifest(rows):
    df = pd.DataFrame(rows)
    defaults = {"source": "mimic", "patient_pid": "mimic-p1", "study_pid": "mimic-s1", "view": "PA", "sex": "U",
                "age": float("nan"), "report_findings": None, "report_impression": None, "official_split": None,
                "spacing_hint_mm": float("nan"), "bits_stored_hint": float("nan"), "file_format": "dicom",
                "reject_reason": None, "shard": 0}
    for key, value in defaults.items():
        if key not in df:
            df[key] = [value] * len(df)
        elif value is not None:
            df[key] = df[key].fillna(value)
    for col in LABEL_COLUMNS:
        df[col] = 1.0 if col == "lbl_cardiomegaly" else float("nan")
    return df


def test_ingest_shard_routes_every_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    yy, xx = np.mgrid[0:96, 0:80]
    image = ((yy + xx) / (96 + 80)).astype(np.float32)
    write_dicom(src / "good_m1.dcm", image, bits_stored=12, photometric="MONOCHROME1", pixel_spacing=(0.5, 0.5),
                phi={"PatientName": "Leak^Canary"}, uid_seed=1)
    write_dicom(src / "good_j2k.dcm", image, bits_stored=15, transfer_syntax="jpeg2000_lossless",
                imager_pixel_spacing=(1.0, 1.0), uid_seed=2)
    write_dicom(src / "ct.dcm", image, modality="CT", uid_seed=3)
    data = (src / "good_m1.dcm").read_bytes()
    (src / "truncated.dcm").write_bytes(data[: len(data) // 2])
    manifest = _manifest([
        {"image_id": "mimic-a", "rel_path": "good_m1.dcm"},
        {"image_id": "mimic-b", "rel_path": "good_j2k.dcm"},
        {"image_id": "mimic-c", "rel_path": "ct.dcm"},
        {"image_id": "mimic-d", "rel_path": "truncated.dcm"},
        {"image_id": "mimic-e", "rel_path": "orphan.dcm", "reject_reason": "missing_metadata"},
        {"image_id": "mimic-f", "rel_path": "other-shard.dcm", "shard": 1},
    ])
    index, rejections, stats = decode_shard(manifest, source="mimic", source_root=src, shard=0,
                                            store_root=tmp_path / "store", resolutions=[32, 64], geometry="pad",
                                            intensity="voi", target_spacing_mm=1.0, progress=False)
    assert list(index["image_id"]) == ["mimic-a", "mimic-b"]
    assert dict(zip(rejections["image_id"], rejections["reason"], strict=True)) == {
        "mimic-c": "wrong_modality", "mimic-d": "unreadable", "mimic-e": "missing_metadata"}
    assert stats["files"] == 5 == stats["ingested"] + stats["rejected"]
    assert (index["raw_lbl_cardiomegaly"] == 1.0).all()
    assert set(index["spacing_source"]) == {"PixelSpacing", "ImagerPixelSpacing"}
    store = ShardStore(tmp_path / "store", index, verify=True)
    a64 = store.read_id("mimic-a", 64).astype(float)
    # MONOCHROME1 was inverted back: the gradient increases towards the bottom-right in display sense
    assert a64[40, 40] < a64[50, 50]
    # pad policy: the 96x80 film keeps its aspect ratio, so the left/right margins are zero padding
    assert a64[:, 0].max() == 0 and a64[:, 32].max() > 0
    assert "Canary" not in index.to_csv()
    # the first image of the shard carries the check of the chained resampling (64 -> 32 px), the others NaN
    check = index["resample_check_max_abs"]
    assert check.notna().sum() == 1 and 0 <= check.iloc[0] <= 0.01 * 65535


def test_a_crashing_step_rejects_the_file_not_the_shard(tmp_path, monkeypatch):
    """An unexpected error in any step after decoding (a bug, not a bad file) is one UNREADABLE row."""
    import cxrgen.imaging.geometry as geometry

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        write_dicom(src / f"{i}.dcm", np.random.default_rng(i).random((64, 64)).astype(np.float32), uid_seed=i)
    real = geometry.preprocess

    def flaky(decoded, **kwargs):
        if decoded.pixels.shape == (64, 64) and decoded.pixels[0, 0] == flaky.poison:
            raise ZeroDivisionError("bug")
        return real(decoded, **kwargs)
    from cxrgen.imaging.decode import decode_image
    flaky.poison = decode_image(src / "1.dcm").pixels[0, 0]
    monkeypatch.setattr(geometry, "preprocess", flaky)
    manifest = _manifest([{"image_id": f"mimic-{i}", "rel_path": f"{i}.dcm"} for i in range(3)])
    index, rejections, stats = decode_shard(manifest, source="mimic", source_root=src, shard=0,
                                            store_root=tmp_path / "store", resolutions=[16, 32], geometry="pad",
                                            intensity="voi", target_spacing_mm=None, progress=False)
    assert list(index["image_id"]) == ["mimic-0", "mimic-2"]
    assert rejections[["image_id", "reason"]].values.tolist() == [["mimic-1", "unreadable"]]
    assert "ZeroDivisionError" in rejections["detail"].iloc[0]
    assert stats["files"] == 3 == stats["ingested"] + stats["rejected"]
    store = ShardStore(tmp_path / "store", index, verify=True)
    assert store.read_id("mimic-2", 32).shape == (32, 32)


def test_shard_assignment_is_stable_and_balanced():
    keys = [f"key-{i}" for i in range(4000)]
    shards = np.array([shard_of(k, 8) for k in keys])
    assert shards.tolist() == [shard_of(k, 8) for k in keys]
    counts = np.bincount(shards, minlength=8)
    assert counts.min() > 400 and counts.max() < 600


def test_ingest_is_deterministic(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        write_dicom(src / f"{i}.dcm", rng.random((70, 60)).astype(np.float32), bits_stored=12,
                    transfer_syntax="rle", pixel_spacing=(0.7, 0.7), uid_seed=i)
        rows.append({"image_id": f"mimic-{i}", "rel_path": f"{i}.dcm"})
    outputs = []
    for run in ("a", "b"):
        index, _, _ = decode_shard(_manifest(rows), source="mimic", source_root=src, shard=0,
                                   store_root=tmp_path / run, resolutions=[32], geometry="crop", intensity="voi",
                                   target_spacing_mm=0.5, canvas_mm=40.0, progress=False)
        outputs.append((index.to_json(), (tmp_path / run / "32px/mimic/shard-0000.bin").read_bytes()))
    assert outputs[0] == outputs[1]


def test_worker_processes_write_the_same_bytes(tmp_path):
    """decode_shard(workers=2) (the job's threads): the same index, rejections and shard bytes as one process."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(5)
    rows = []
    for i in range(5):
        write_dicom(src / f"{i}.dcm", rng.random((90, 70)).astype(np.float32), bits_stored=12,
                    pixel_spacing=(0.4, 0.4), uid_seed=i)
        rows.append({"image_id": f"mimic-{i}", "rel_path": f"{i}.dcm"})
    (src / "2.dcm").write_bytes(b"garbage")
    outputs = []
    for workers in (1, 2):
        root = tmp_path / f"w{workers}"
        index, rejections, stats = decode_shard(_manifest(rows), source="mimic", source_root=src, shard=0,
                                                store_root=root, resolutions=[16, 48], geometry="crop",
                                                intensity="voi", target_spacing_mm=0.5, progress=False,
                                                workers=workers)
        assert stats["workers"] == workers and list(rejections["image_id"]) == ["mimic-2"]
        outputs.append((index.to_json(), rejections.to_json(),
                        [(root / f"{res}px/mimic/shard-0000.bin").read_bytes() for res in (16, 48)]))
    assert outputs[0] == outputs[1]
