"""The demo DICOM writer: valid files (read back by pydicom and by an independent reader, GDCM), determinism,
stored-value conventions, PHI and the escape hatches used to build deliberately bad files."""

from __future__ import annotations

import gdcm
import numpy as np
import pydicom
import pytest
from pydicom import uid as dcm_uid

from cxrgen.demo.common import PhiRegistry
from cxrgen.demo.dicom_writer import TRANSFER_SYNTAXES, make_uid, write_dicom


@pytest.mark.parametrize("transfer_syntax", sorted(TRANSFER_SYNTAXES))
def test_files_are_conformant_part10_and_gdcm_readable(make_dicom, transfer_syntax):
    path = make_dicom(transfer_syntax=transfer_syntax, pixel_spacing=(0.14, 0.15))
    assert path.read_bytes()[128:132] == b"DICM"
    ds = pydicom.dcmread(path)  # force=False: needs preamble and file meta
    assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[transfer_syntax]
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == dcm_uid.ComputedRadiographyImageStorage
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert dcm_uid.UID(ds.SOPInstanceUID).is_valid and dcm_uid.UID(ds.StudyInstanceUID).is_valid
    for keyword in ("PatientName", "PatientID", "StudyDate", "AccessionNumber", "ReferringPhysicianName"):
        assert keyword in ds  # type-2 attributes present (empty allowed)
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (96, 80, 16, 12, 11)
    reader = gdcm.ImageReader()  # an independent parser and codec stack
    reader.SetFileName(str(path))
    assert reader.Read()
    image = reader.GetImage()
    assert image.GetDimension(0) == 80 and image.GetDimension(1) == 96
    # GDCM-encoded syntaxes keep only our header: no GDCM-invented attributes
    assert "ImagerPixelSpacing" not in ds and ds.file_meta.ImplementationVersionName == "CXRGEN_DEMO"
    compressed = transfer_syntax not in ("implicit_le", "explicit_le")
    assert ds.file_meta.TransferSyntaxUID.is_compressed is compressed
    assert ds.get("LossyImageCompression", "00") == ("01" if transfer_syntax == "jpeg2000" else "00")


@pytest.mark.parametrize("transfer_syntax", ["explicit_le", "rle", "jpeg_lossless", "jpeg2000"])
def test_deterministic_bytes_and_uids(make_dicom, transfer_syntax):
    a = make_dicom("a.dcm", transfer_syntax=transfer_syntax, uid_seed=("mimic", 1))
    b = make_dicom("b.dcm", transfer_syntax=transfer_syntax, uid_seed=("mimic", 1))
    c = make_dicom("c.dcm", transfer_syntax=transfer_syntax, uid_seed=("mimic", 2))
    assert a.read_bytes() == b.read_bytes()
    assert pydicom.dcmread(a).SOPInstanceUID != pydicom.dcmread(c).SOPInstanceUID
    assert pydicom.dcmread(a).StudyInstanceUID == make_uid(("mimic", 1), "study")


def test_default_uids_derive_from_name_and_pixels(tmp_path, synthetic_radiograph):
    img = synthetic_radiograph()
    for name in ("x.dcm", "y.dcm"):
        write_dicom(tmp_path / name, img)
    (tmp_path / "again").mkdir()
    write_dicom(tmp_path / "again" / "x.dcm", img)
    uids = {p: pydicom.dcmread(tmp_path / p).SOPInstanceUID for p in ("x.dcm", "y.dcm", "again/x.dcm")}
    assert uids["x.dcm"] == uids["again/x.dcm"] != uids["y.dcm"]


def test_explicit_study_and_sop_uids(make_dicom):
    ds = pydicom.dcmread(make_dicom(study_instance_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5"))
    assert ds.StudyInstanceUID == "1.2.3.4" and ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.5"


def test_stored_values_follow_photometric_and_rescale(make_dicom, synthetic_radiograph):
    img = synthetic_radiograph()
    mono2 = pydicom.dcmread(make_dicom("m2.dcm", pixels=img, bits_stored=12)).pixel_array
    mono1 = pydicom.dcmread(make_dicom("m1.dcm", pixels=img, bits_stored=12, photometric="MONOCHROME1")).pixel_array
    np.testing.assert_array_equal(mono2, np.rint(img * 4095))
    np.testing.assert_array_equal(mono1, 4095 - mono2)  # MONOCHROME1: bright display = low stored value
    # a window is inverted in rescaled units: stored = ((display - 0.5) * (w - 1) + c - 0.5 - b) / m
    ds = pydicom.dcmread(make_dicom("w.dcm", pixels=img, bits_stored=12, rescale_slope=2.0, rescale_intercept=-1000.0,
                                    window=(2000.0, 4000.0)))
    expected = np.rint(((img - 0.5) * 3999 + 1999.5 + 1000.0) / 2.0)
    np.testing.assert_array_equal(ds.pixel_array, expected)
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (2.0, -1000.0)
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (2000.0, 4000.0)


def test_signed_storage(make_dicom, synthetic_radiograph):
    img = synthetic_radiograph()
    ds = pydicom.dcmread(make_dicom(pixels=img, bits_stored=12, signed=True))
    assert ds.PixelRepresentation == 1
    np.testing.assert_array_equal(ds.pixel_array, np.rint(img * 4095) - 2048)


def test_dx_header(make_dicom):
    ds = pydicom.dcmread(make_dicom(modality="DX", photometric="MONOCHROME1", imager_pixel_spacing=(0.15, 0.15)))
    assert ds.SOPClassUID == dcm_uid.DigitalXRayImageStorageForPresentation
    assert ds.PresentationLUTShape == "INVERSE" and ds.PresentationIntentType == "FOR PRESENTATION"
    assert ds.PixelIntensityRelationshipSign == 1 and ds.ImagerPixelSpacing == [0.15, 0.15]
    ds2 = pydicom.dcmread(make_dicom("b.dcm", modality="DX"))
    assert ds2.PresentationLUTShape == "IDENTITY" and ds2.PixelIntensityRelationshipSign == -1


def test_phi_and_headers_written(make_dicom):
    phi = PhiRegistry().fake_person(np.random.default_rng(3))
    ds = pydicom.dcmread(make_dicom(phi=phi, patient_id="P1", body_part="PORT CHEST", view_position="AP"))
    for keyword, value in phi.items():
        assert str(ds[keyword].value) == value
    assert (ds.PatientID, ds.BodyPartExamined, ds.ViewPosition) == ("P1", "PORT CHEST", "AP")


def test_multi_frame_and_extra_overrides(make_dicom, synthetic_radiograph):
    ds = pydicom.dcmread(make_dicom("mf.dcm", number_of_frames=3))
    assert ds.NumberOfFrames == 3 and ds.pixel_array.shape == (3, 96, 80)
    stack = np.stack([synthetic_radiograph(seed=s) for s in range(2)])
    assert pydicom.dcmread(make_dicom("st.dcm", pixels=stack)).pixel_array.shape == (2, 96, 80)
    ds = pydicom.dcmread(make_dicom("x.dcm", extra={"PixelData": None, "Manufacturer": "ACME", "ViewPosition": None}))
    assert "PixelData" not in ds and "ViewPosition" not in ds and ds.Manufacturer == "ACME"


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(transfer_syntax="jpeg_baseline"), "transfer_syntax"),
    (dict(bits_stored=13), "bits_stored"),
    (dict(photometric="RGB"), "photometric"),
    (dict(rescale_slope=0.0), "slope"),
    (dict(window=(-500.0, 100.0)), "outside"),  # unsigned stored values cannot reach a negative window
    (dict(voi_lut_sequence=True, rescale_slope=2.0), "slope"),
])
def test_invalid_arguments(tmp_path, synthetic_radiograph, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_dicom(tmp_path / "x.dcm", synthetic_radiograph(), **kwargs)


def test_pixels_out_of_range_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_dicom(tmp_path / "x.dcm", np.full((40, 40), 1.5))
