"""JPEG 2000 at a reduced resolution level (issue 16): codestream header, exact level-0 decoding, sample centring of
the reduced levels, and the reduced decode through decode_image / preprocess / decode_shard."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.encaps import generate_frames

from cxrgen.demo.dicom_writer import write_dicom
from cxrgen.imaging import j2k
from cxrgen.imaging.decode import decode_image
from cxrgen.imaging.errors import RejectedImage
from cxrgen.imaging.geometry import film_reduction_room, preprocess
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.stages.ingest_shard import REDUCED_CHECK_COLUMN, REDUCTION_COLUMN, decode_shard


def _frame(path: Path) -> bytes:
    return next(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))


def _ramp_film(path: Path, rows: int = 300, cols: int = 260, **kwargs) -> np.ndarray:
    """A lossless J2K film whose stored values are a linear ramp along the columns; returns the stored values."""
    xx = np.broadcast_to(np.arange(cols, dtype=np.float64), (rows, cols))
    yy = np.broadcast_to(np.arange(rows, dtype=np.float64)[:, None], (rows, cols))
    image = (0.1 + 0.6 * xx / cols + 0.2 * yy / rows).astype(np.float32)
    write_dicom(path, image, bits_stored=12, transfer_syntax="jpeg2000_lossless", pixel_spacing=(0.2, 0.2),
                uid_seed=7, **kwargs)
    return pydicom.dcmread(path).pixel_array


def _room(resolutions, policy="pad", canvas_mm=None):
    def room(rows, cols, spacing):
        return film_reduction_room((rows, cols), spacing, target_spacing_mm=None, policy=policy, canvas_mm=canvas_mm,
                                   resolutions=resolutions)
    return room


def test_header_of_a_real_codestream(pydicom_data_dir):
    ds = pydicom.dcmread(pydicom_data_dir / "RG1_J2KR.dcm")
    header = j2k.read_header(_frame(pydicom_data_dir / "RG1_J2KR.dcm"))
    assert (header.height, header.width) == (ds.Rows, ds.Columns) == (1955, 1841)
    assert header.components == 1 and not header.signed and header.origin == (0, 0)
    assert header.precision == ds.BitsStored and header.levels >= 2
    assert j2k.usable_levels(header) == header.levels


def test_header_rejects_what_is_not_a_plain_codestream(pydicom_data_dir):
    frame = _frame(pydicom_data_dir / "RG1_J2KR.dcm")
    assert j2k.read_header(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + frame) is None  # a JP2 box, not a codestream
    assert j2k.read_header(frame[:20]) is None  # SIZ cut short
    assert j2k.read_header(b"") is None
    header = j2k.read_header(frame)
    for unusable in (replace(header, signed=True), replace(header, components=3), replace(header, origin=(1, 0)),
                     replace(header, precision=24), None):
        assert j2k.usable_levels(unusable) == 0


def test_level_zero_is_pydicoms_decode(pydicom_data_dir, tmp_path):
    """Pillow scales samples to its mode's range; decode_level undoes it exactly (15-bit real CR, 12-bit film)."""
    real = pydicom_data_dir / "RG1_J2KR.dcm"
    np.testing.assert_array_equal(j2k.decode_level(_frame(real), 0), pydicom.dcmread(real).pixel_array)
    stored = _ramp_film(tmp_path / "ramp.dcm")
    np.testing.assert_array_equal(j2k.decode_level(_frame(tmp_path / "ramp.dcm"), 0), stored)


def test_reduced_levels_are_centred_on_even_film_samples(tmp_path):
    """A linear ramp survives the 5/3 low-pass: level 1 sample j equals film sample 2j (away from the borders), which
    is what film_to_level's half-pixel offset encodes."""
    stored = _ramp_film(tmp_path / "ramp.dcm").astype(np.int64)
    level1 = j2k.decode_level(_frame(tmp_path / "ramp.dcm"), 1).astype(np.int64)
    assert level1.shape == (150, 130)
    inner = (slice(4, -4), slice(4, -4))
    assert np.abs(level1[inner] - stored[::2, ::2][inner]).max() <= 1
    assert np.abs(level1[inner] - stored[1::2, 1::2][inner]).mean() > 1  # the odd samples are not what it holds
    assert j2k.film_to_level(0.5, 2) == 0.5 and j2k.film_to_level(2.5, 2) == 1.5
    with pytest.raises(ValueError, match="cannot decode level"):
        j2k.decode_level(_frame(tmp_path / "ramp.dcm"), 40)


def test_reduction_room_per_geometry():
    assert film_reduction_room((3000, 2400), None, target_spacing_mm=None, policy="pad", canvas_mm=None,
                               resolutions=[256, 1024]) == pytest.approx(3000 / 1024, rel=1e-3)
    assert film_reduction_room((3000, 2400), None, target_spacing_mm=None, policy="crop", canvas_mm=None,
                               resolutions=[256, 1024]) == pytest.approx(2400 / 1024)
    # a 200 mm canvas on a 0.1 mm film: 2000 film pixels per 512 output pixels
    assert film_reduction_room((3000, 2400), (0.1, 0.1), target_spacing_mm=None, policy="pad", canvas_mm=200.0,
                               resolutions=[512]) == pytest.approx(2000 / 512)


def test_decode_image_reduces_only_with_room(tmp_path):
    path = tmp_path / "ramp.dcm"
    _ramp_film(path)
    full = decode_image(path)
    assert full.reduction == 1 and full.film_shape == (300, 260)
    assert decode_image(path, reduction_room=_room([160])).reduction == 1  # level 1 (150 px) would upsample
    # 300/64 = 4.7 film pixels per output pixel: level 1 (2.3 left for Lanczos), not level 2 (1.17 < 1.25 left)
    assert decode_image(path, reduction_room=_room([64])).reduction == 2
    reduced = decode_image(path, reduction_room=_room([32]))  # 9.4 per output pixel: level 2
    assert reduced.reduction == 4 and reduced.pixels.shape == (75, 65)
    assert reduced.film_shape == (300, 260) and reduced.meta["decode_reduction"] == 4
    assert reduced.spacing_mm == full.spacing_mm == (0.2, 0.2)
    # the same window maps the same values: a smooth film's outputs agree closely with the full decode
    for resolutions in ([64], [16, 64], [32, 48]):
        a = preprocess(full, target_spacing_mm=None, policy="pad", resolutions=resolutions)
        b = preprocess(decode_image(path, reduction_room=_room(resolutions)), target_spacing_mm=None, policy="pad",
                       resolutions=resolutions)
        for size in resolutions:
            assert a[size].shape == b[size].shape == (size, size)
            assert np.abs(a[size].astype(np.int64) - b[size]).max() <= 0.01 * 65535


def test_decode_image_keeps_full_decode_for_other_films(tmp_path):
    image = np.linspace(0.1, 0.9, 300 * 260, dtype=np.float32).reshape(300, 260)
    write_dicom(tmp_path / "rle.dcm", image, transfer_syntax="rle", uid_seed=1)
    assert decode_image(tmp_path / "rle.dcm", reduction_room=_room([64])).reduction == 1
    write_dicom(tmp_path / "signed.dcm", image, transfer_syntax="jpeg2000_lossless", signed=True,
                uid_seed=2)
    assert decode_image(tmp_path / "signed.dcm", reduction_room=_room([64])).reduction == 1


def test_a_broken_codestream_falls_back_to_the_full_decoder(tmp_path, monkeypatch):
    path = tmp_path / "ramp.dcm"
    _ramp_film(path)

    def broken(codestream, level):
        raise RuntimeError("OpenJPEG failed")

    monkeypatch.setattr(j2k, "decode_level", broken)
    decoded = decode_image(path, reduction_room=_room([64]))
    assert decoded.reduction == 1 and decoded.pixels.shape == (300, 260)


def test_decode_shard_records_the_reduction_and_checks_one_image(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_dicom(src / "a_native.dcm", np.full((300, 260), 0.5, np.float32) + np.eye(300, 260, dtype=np.float32) * .3,
                uid_seed=3)
    _ramp_film(src / "b_j2k.dcm")
    _ramp_film(src / "c_j2k.dcm")
    rows = [{"image_id": f"mimic-{name[0]}", "rel_path": name} for name in ("a_native.dcm", "b_j2k.dcm", "c_j2k.dcm")]
    manifest = pd.DataFrame(rows).assign(
        source="mimic", patient_pid="mimic-p1", study_pid="mimic-s1", view="PA", sex="U", age=float("nan"),
        report_findings=None, report_impression=None, official_split=None, spacing_hint_mm=float("nan"),
        bits_stored_hint=float("nan"), file_format="dicom", reject_reason=None, shard=0,
        **{col: float("nan") for col in LABEL_COLUMNS})
    kwargs = dict(source="mimic", source_root=src, shard=0, resolutions=[16, 32], geometry="pad", intensity="voi",
                  target_spacing_mm=None, progress=False)
    index, _, _ = decode_shard(manifest, store_root=tmp_path / "reduced", **kwargs)
    assert list(index[REDUCTION_COLUMN]) == [1, 4, 4]
    assert list(index["orig_height"]) == [300, 300, 300]
    # the first image of the shard is not reduced: the first reduced one carries the check
    check = index[REDUCED_CHECK_COLUMN]
    assert check.isna().tolist() == [True, False, True] and 0 <= check.iloc[1] <= 0.01 * 65535
    full, _, _ = decode_shard(manifest, store_root=tmp_path / "full", reduced_decode=False, **kwargs)
    assert list(full[REDUCTION_COLUMN]) == [1, 1, 1] and full[REDUCED_CHECK_COLUMN].isna().all()
    assert full.loc[0, "sha256_32"] == index.loc[0, "sha256_32"]  # films without reduction: identical blobs


def test_a_codestream_without_its_end_marker_is_left_to_the_full_decoder(tmp_path, pydicom_data_dir, monkeypatch):
    frame = _frame(pydicom_data_dir / "RG1_J2KR.dcm")
    assert j2k.ends_complete(frame) and j2k.ends_complete(frame + b"\0")
    assert not j2k.ends_complete(frame[: len(frame) // 2])
    path = tmp_path / "ramp.dcm"
    _ramp_film(path)
    ds = pydicom.dcmread(path)
    cut = _frame(path)
    cut = cut[: len(cut) * 3 // 4]
    ds.PixelData = pydicom.encaps.encapsulate([cut + b"\0" * (len(cut) % 2)])
    ds.save_as(tmp_path / "cut.dcm")
    # a decoder that would happily return the reduced level of the cut stream (OpenJPEG may, for some progressions)
    monkeypatch.setattr(j2k, "decode_level", lambda codestream, level: np.arange(75 * 65, dtype=np.uint16).reshape(75, 65))
    try:
        decoded = decode_image(tmp_path / "cut.dcm", reduction_room=_room([32]))
    except RejectedImage:
        return  # the full decoder rejected it: fine, the reduced path did not accept it
    assert decoded.reduction == 1
