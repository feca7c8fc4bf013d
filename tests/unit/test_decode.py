"""decode_image on real shipped DICOMs and on files from cxrgen's DICOM writer."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate

from cxrgen.demo.common import PhiRegistry
from cxrgen.demo.dicom_writer import voi_lut_curve
from cxrgen.imaging.decode import DecodedImage, body_part_is_chest, decode_image
from cxrgen.imaging.errors import RejectedImage, RejectReason

META_WHITELIST = {
    "file_format", "modality", "photometric", "bits_stored", "bits_allocated", "pixel_representation",
    "transfer_syntax", "rows", "cols", "view_position", "body_part", "manufacturer", "presentation_lut_shape",
    "inverted", "rescale_slope", "rescale_intercept", "modality_lut_sequence", "window", "voi_lut_function",
    "voi_source", "intensity_mode_used", "pil_mode", "decode_reduction",
}


def _reject_reason(path, **kwargs) -> RejectReason:
    with pytest.raises(RejectedImage) as info:
        decode_image(path, **kwargs)
    return info.value.reason


# ------------------------------------------------------------------------------------------ real radiographs


@pytest.fixture(scope="module")
def rg1(pydicom_data_dir) -> dict[str, DecodedImage]:
    return {enc: decode_image(pydicom_data_dir / f"RG1_{enc}.dcm") for enc in ("UNCR", "UNCI", "J2KR", "J2KI")}


def test_rg1_all_encodings_decode_as_monochrome1_chest(rg1):
    for enc, dec in rg1.items():
        assert dec.pixels.dtype == np.float32 and dec.pixels.shape == (1955, 1841), enc
        assert 0.0 <= dec.pixels.min() < dec.pixels.max() <= 1.0
        assert dec.spacing_mm is None and dec.spacing_source is None  # PixelSpacing is [0, 0], no Imager spacing
        assert dec.meta["photometric"] == "MONOCHROME1" and dec.meta["inverted"] is True
        assert dec.meta["window"] == [15000.0, 30000.0] and dec.meta["intensity_mode_used"] == "voi"
    assert rg1["J2KR"].meta["transfer_syntax"] == "JPEG 2000 Image Compression (Lossless Only)"


def test_rg1_inverted_so_lungs_are_darker_than_mediastinum(rg1):
    img = rg1["UNCR"].pixels
    h, w = img.shape
    rows = slice(int(0.2 * h), int(0.45 * h))
    right_lung = img[rows, int(0.15 * w) : int(0.3 * w)].mean()
    left_lung = img[rows, int(0.65 * w) : int(0.8 * w)].mean()
    mediastinum = img[rows, int(0.45 * w) : int(0.53 * w)].mean()
    assert right_lung < mediastinum - 0.15 and left_lung < mediastinum - 0.15


def test_rg1_lossless_identical_lossy_close(rg1):
    np.testing.assert_array_equal(rg1["J2KR"].pixels, rg1["UNCR"].pixels)
    # UNCI is the decompressed lossy image, so it matches J2KI exactly
    np.testing.assert_array_equal(rg1["J2KI"].pixels, rg1["UNCI"].pixels)
    diff = np.abs(rg1["J2KI"].pixels - rg1["UNCR"].pixels)
    assert 0 < diff.mean() < 0.005 and diff.max() < 0.05


def test_rg1_intensity_modes(pydicom_data_dir, rg1):
    path = pydicom_data_dir / "RG1_UNCR.dcm"
    bit_depth = decode_image(path, intensity="bit_depth")
    minmax = decode_image(path, intensity="minmax")
    assert bit_depth.meta["intensity_mode_used"] == "bit_depth" and bit_depth.meta["window"] is None
    # 15-bit range 0..32767 vs window 0..30000: same ordering, different scale
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    np.testing.assert_allclose(bit_depth.pixels, 1 - stored / 32767, atol=1e-6)
    # LINEAR window (PS3.3 C.11.2.1.2.1) with c=15000, w=30000 reduces to x / 29999
    np.testing.assert_allclose(rg1["UNCR"].pixels, 1 - np.clip(stored / 29999, 0, 1), atol=1e-6)
    assert minmax.pixels.min() == 0.0 and minmax.pixels.max() == 1.0


def test_real_non_chest_and_headers_only_files_are_rejected(pydicom_data_dir, pydicom_test_files_dir):
    assert _reject_reason(pydicom_data_dir / "RG3_UNCR.dcm") == RejectReason.WRONG_BODY_PART
    assert _reject_reason(pydicom_data_dir / "RG3_J2KR.dcm") == RejectReason.WRONG_BODY_PART
    extremity = decode_image(pydicom_data_dir / "RG3_UNCR.dcm", check_body_part=False)
    assert extremity.meta["body_part"] == "EXTREMITY" and extremity.meta["bits_stored"] == 10
    assert (_reject_reason(pydicom_test_files_dir / "charset_files" / "chrJapMulti.dcm")
            == RejectReason.NO_PIXEL_DATA)
    assert _reject_reason(pydicom_data_dir / "693_UNCR.dcm") == RejectReason.WRONG_MODALITY
    assert _reject_reason(pydicom_test_files_dir / "test_files" / "CT_small.dcm") == RejectReason.WRONG_MODALITY
    assert _reject_reason(pydicom_data_dir / "emri_small_jpeg_2k_lossless_too_short.dcm") == RejectReason.UNREADABLE


# ------------------------------------------------------------------------------------------ writer round trips

LOSSLESS = ("implicit_le", "explicit_le", "rle", "jpeg2000_lossless", "jpeg_lossless", "jpegls_lossless")


@pytest.mark.parametrize(("transfer_syntax", "bits", "photometric"),
                         list(itertools.product(LOSSLESS, (8, 10, 12, 14, 15, 16), ("MONOCHROME1", "MONOCHROME2"))))
def test_lossless_round_trip(synthetic_radiograph, make_dicom, transfer_syntax, bits, photometric):
    img = synthetic_radiograph()
    path = make_dicom(pixels=img, bits_stored=bits, photometric=photometric, transfer_syntax=transfer_syntax)
    dec = decode_image(path)
    assert dec.meta["intensity_mode_used"] == "bit_depth"  # no VOI in the file: "voi" falls back
    assert dec.meta["inverted"] is (photometric == "MONOCHROME1")
    assert np.abs(dec.pixels - img).max() <= 0.5 / (2**bits - 1) + 1e-6


@pytest.mark.parametrize("bits", [10, 12, 16])
def test_lossy_jpeg2000_round_trip_is_close_and_flagged(synthetic_radiograph, make_dicom, bits):
    img = synthetic_radiograph(128, 128)
    dec = decode_image(make_dicom(pixels=img, bits_stored=bits, transfer_syntax="jpeg2000"))
    err = np.abs(dec.pixels - img)
    # the 1 % noise of the test image is mostly what a 10:1 codec drops
    assert 0 < err.mean() < 0.02 and err.max() < 0.2
    assert np.corrcoef(dec.pixels.ravel(), img.ravel())[0, 1] > 0.98
    assert dec.meta["transfer_syntax"] == "JPEG 2000 Image Compression"


INTENSITY_CASES = {
    "rescale": dict(rescale_slope=2.0, rescale_intercept=-1024.0),
    "window": dict(window="mid"),
    "window+rescale": dict(rescale_slope=0.5, rescale_intercept=100.0, window="mid"),
    "voi_lut": dict(voi_lut_sequence=True, rescale_intercept=24.0),
    "voi_lut+window": dict(voi_lut_sequence=True, window="mid"),
}


def _mid_window(bits: int, signed: bool, slope: float, intercept: float) -> tuple[float, float]:
    """A window covering the central 60 % of the representable rescaled range."""
    lo = -(2 ** (bits - 1)) if signed else 0
    hi = lo + 2**bits - 1
    a, b = lo * slope + intercept, hi * slope + intercept
    return (a + b) / 2, 0.6 * (b - a)


@pytest.mark.parametrize(("case", "bits", "photometric", "signed", "transfer_syntax"),
                         list(itertools.product(INTENSITY_CASES, (10, 12, 16), ("MONOCHROME1", "MONOCHROME2"),
                                                (False, True), ("explicit_le", "rle"))))
def test_intensity_round_trip(synthetic_radiograph, make_dicom, case, bits, photometric, signed, transfer_syntax):
    kwargs = dict(INTENSITY_CASES[case])
    slope, intercept = kwargs.get("rescale_slope", 1.0), kwargs.get("rescale_intercept", 0.0)
    if kwargs.get("window") == "mid":
        kwargs["window"] = _mid_window(bits, signed, slope, intercept)
    img = synthetic_radiograph()
    path = make_dicom(pixels=img, bits_stored=bits, photometric=photometric, signed=signed,
                      transfer_syntax=transfer_syntax, **kwargs)
    dec = decode_image(path)
    if kwargs.get("voi_lut_sequence"):
        assert dec.meta["voi_source"] == "lut_sequence"  # the LUT wins over a window
        tol = 0.75 / (2**bits - 1) + 1e-4
        # the LUT really is applied: reading the raw range instead gives the inverse LUT curve, not the image
        raw = decode_image(path, intensity="bit_depth").pixels
        raw_display = 1 - raw if photometric == "MONOCHROME1" else raw
        display = 1 - img if photometric == "MONOCHROME1" else img
        assert np.abs(voi_lut_curve(raw_display) - display).max() < tol
        assert np.abs(raw - img).max() > 0.05
    elif "window" in kwargs:
        assert dec.meta["voi_source"] == "window" and dec.meta["window"] == pytest.approx(list(kwargs["window"]))
        tol = 0.5 * slope / (kwargs["window"][1] - 1) + 1e-5
    else:
        assert dec.meta["intensity_mode_used"] == "bit_depth"
        assert dec.meta["rescale_slope"] == slope and dec.meta["rescale_intercept"] == intercept
        tol = 0.5 / (2**bits - 1) + 1e-6
    assert dec.meta["pixel_representation"] == int(signed)
    assert np.abs(dec.pixels - img).max() <= tol


def test_sigmoid_voi_function(make_dicom):
    center, width = 2048.0, 1200.0
    path = make_dicom(bits_stored=12, window=(center, width), extra={"VOILUTFunction": "SIGMOID"})
    dec = decode_image(path)
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    expected = 1.0 / (1.0 + np.exp(-4.0 * (stored - center) / width))  # PS3.3 C.11.2.1.3.1
    assert dec.meta["voi_lut_function"] == "SIGMOID"
    np.testing.assert_allclose(dec.pixels, expected, atol=1e-6)


def test_modality_lut_sequence_is_applied(synthetic_radiograph, make_dicom):
    img = synthetic_radiograph()
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = (4095 - np.arange(4096)).astype("<u2").tobytes()
    item["LUTData"].VR = "OW"
    item.ModalityLUTType = "US"
    path = make_dicom(pixels=img, bits_stored=12, extra={
        "ModalityLUTSequence": pydicom.Sequence([item]), "RescaleSlope": None, "RescaleIntercept": None,
        "RescaleType": None})
    dec = decode_image(path)
    assert dec.meta["modality_lut_sequence"] is True
    assert np.abs(dec.pixels - (1 - img)).max() <= 0.5 / 4095 + 1e-6


def test_window_missing_the_data_falls_back_to_bit_depth(synthetic_radiograph, make_dicom):
    img = synthetic_radiograph()
    dec = decode_image(make_dicom(pixels=img, bits_stored=12, extra={"WindowCenter": "60000", "WindowWidth": "10"}))
    assert dec.meta["intensity_mode_used"] == "bit_depth"
    assert np.abs(dec.pixels - img).max() <= 0.5 / 4095 + 1e-6


def test_minmax_mode_stretches(synthetic_radiograph, make_dicom):
    img = 0.3 + 0.2 * synthetic_radiograph()
    dec = decode_image(make_dicom(pixels=img), intensity="minmax")
    assert dec.pixels.min() == 0.0 and dec.pixels.max() == 1.0
    assert np.corrcoef(dec.pixels.ravel(), img.ravel())[0, 1] > 0.999


def test_unknown_intensity_mode_is_a_value_error(make_dicom):
    with pytest.raises(ValueError, match="intensity"):
        decode_image(make_dicom(), intensity="gamma")


@pytest.mark.parametrize(("photometric", "lut_shape", "inverted"), [
    ("MONOCHROME1", "INVERSE", True),  # DX convention: one inversion, not two
    ("MONOCHROME1", None, True),
    ("MONOCHROME2", "IDENTITY", False),
    ("MONOCHROME2", "INVERSE", True),
])
def test_presentation_lut_shape_inverts_once(synthetic_radiograph, make_dicom, photometric, lut_shape, inverted):
    img = synthetic_radiograph()
    # write with MONOCHROME2 stored values, then relabel: the label alone decides the decoded display sense
    path = make_dicom(pixels=img, extra={"PhotometricInterpretation": photometric,
                                         "PresentationLUTShape": lut_shape})
    dec = decode_image(path)
    assert dec.meta["inverted"] is inverted
    expected = 1 - img if inverted else img
    assert np.abs(dec.pixels - expected).max() <= 0.5 / 4095 + 1e-6


def test_dx_monochrome1_round_trip(synthetic_radiograph, make_dicom):
    img = synthetic_radiograph()
    dec = decode_image(make_dicom(pixels=img, modality="DX", photometric="MONOCHROME1"))
    assert dec.meta["presentation_lut_shape"] == "INVERSE" and dec.meta["modality"] == "DX"
    assert np.abs(dec.pixels - img).max() <= 0.5 / 4095 + 1e-6


# ------------------------------------------------------------------------------------------ rejections


@pytest.mark.parametrize(("transfer_syntax", "fraction"),
                         list(itertools.product(("explicit_le", "rle", "jpeg2000_lossless", "jpeg_lossless"),
                                                (0.01, 0.05, 0.3, 0.9, 0.999))))
def test_truncated_file_is_unreadable(make_dicom, transfer_syntax, fraction):
    path = make_dicom(transfer_syntax=transfer_syntax)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    assert _reject_reason(path) == RejectReason.UNREADABLE


def test_garbage_and_wrong_format_are_unreadable(tmp_path, make_dicom):
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not a dicom file at all" * 20)
    assert _reject_reason(garbage) == RejectReason.UNREADABLE
    assert _reject_reason(make_dicom(), file_format="png") == RejectReason.UNREADABLE
    no_preamble = tmp_path / "raw.dcm"
    no_preamble.write_bytes(make_dicom("b.dcm").read_bytes()[132:])  # force=False refuses files without "DICM"
    assert _reject_reason(no_preamble) == RejectReason.UNREADABLE


def test_missing_file_is_not_a_rejection(tmp_path):
    with pytest.raises(FileNotFoundError):
        decode_image(tmp_path / "absent.dcm")


def test_dicom_without_extension_is_sniffed(tmp_path, make_dicom):
    path = make_dicom("image_without_suffix")
    assert decode_image(path).meta["file_format"] == "dicom"


def test_multi_frame_rejected(make_dicom):
    assert _reject_reason(make_dicom(number_of_frames=2)) == RejectReason.MULTI_FRAME


def test_no_pixel_data_rejected(make_dicom):
    assert _reject_reason(make_dicom(extra={"PixelData": None})) == RejectReason.NO_PIXEL_DATA


@pytest.mark.parametrize(("shape", "constant"), [
    ((96, 80), True),
    ((20, 80), False),  # too small
    ((40, 200), False),  # aspect ratio 5
])
def test_degenerate_images_rejected(make_dicom, synthetic_radiograph, shape, constant):
    pixels = np.full(shape, 0.4) if constant else synthetic_radiograph(*shape)
    assert _reject_reason(make_dicom(pixels=pixels)) == RejectReason.DEGENERATE_IMAGE


@pytest.mark.parametrize(("modality", "ok"), [("CR", True), ("DX", True), ("DR", True), ("", True), ("CT", False),
                                              ("MR", False), ("OT", False)])
def test_modality_filter(make_dicom, modality, ok):
    path = make_dicom(modality=modality)
    if ok:
        assert decode_image(path).meta["modality"] == (modality or None)
    else:
        assert _reject_reason(path) == RejectReason.WRONG_MODALITY


@pytest.mark.parametrize(("value", "is_chest"), [
    ("CHEST", True), ("THORAX", True), ("LUNG", True), ("PORT CHEST", True), ("", True), ("chest_pa", True),
    ("TORAX", True), ("UNKNOWN", True), ("EXTREMITY", False), ("HAND", False), ("KNEE", False), ("SKULL", False),
    ("ABDOMEN", False), ("THORACIC SPINE", False), ("L-SPINE", False), ("PELVIS", False),
])
def test_body_part_rule(value, is_chest):
    assert body_part_is_chest(value) is is_chest


def test_body_part_rejection_can_be_disabled(make_dicom):
    path = make_dicom(body_part="KNEE")
    assert _reject_reason(path) == RejectReason.WRONG_BODY_PART
    assert decode_image(path, check_body_part=False).meta["body_part"] == "KNEE"


def test_unsupported_photometric_dicom(make_dicom):
    path = make_dicom(extra={"PhotometricInterpretation": "PALETTE COLOR"})
    assert _reject_reason(path) == RejectReason.UNSUPPORTED_PHOTOMETRIC


def test_transfer_syntax_without_decoder(make_dicom):
    path = make_dicom()
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video: no installed decoder
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    assert _reject_reason(path) == RejectReason.UNSUPPORTED_TRANSFER_SYNTAX


# ------------------------------------------------------------------------------------------ spacing and PHI


@pytest.mark.parametrize(("pixel", "imager", "hint", "spacing", "source"), [
    ((0.1, 0.2), (0.15, 0.15), 0.3, (0.1, 0.2), "PixelSpacing"),
    ((0.0, 0.0), (0.15, 0.16), 0.3, (0.15, 0.16), "ImagerPixelSpacing"),  # RG1-style [0, 0] is ignored
    (None, (0.143, 0.143), None, (0.143, 0.143), "ImagerPixelSpacing"),
    ((0.0, 0.0), None, 0.3, (0.3, 0.3), "hint"),
    (None, (0.0, 0.0), float("nan"), None, None),  # NaN hint from the manifest means "none"
    (None, None, None, None, None),
])
def test_spacing_precedence(make_dicom, pixel, imager, hint, spacing, source):
    dec = decode_image(make_dicom(pixel_spacing=pixel, imager_pixel_spacing=imager), spacing_hint_mm=hint)
    assert dec.spacing_mm == (pytest.approx(spacing) if spacing else None)
    assert dec.spacing_source == source


def test_phi_never_reaches_meta(make_dicom):
    registry = PhiRegistry()
    phi = registry.fake_person(np.random.default_rng(7))
    path = make_dicom(phi=phi, patient_id="PID-SECRET-123", modality="DX", window=(2048, 3000),
                      imager_pixel_spacing=(0.143, 0.143), extra={"StudyDescription": "CHEST PA secret",
                                                                  "AccessionNumber": "ACC-SECRET-9"})
    ds = pydicom.dcmread(path)
    assert str(ds.PatientName) == phi["PatientName"] and ds.PatientID == "PID-SECRET-123"  # the PHI is in the file
    dec = decode_image(path)
    assert set(dec.meta) <= META_WHITELIST
    dumped = json.dumps(dec.meta)  # also proves the meta is JSON-serialisable
    for secret in [*registry.canaries, *phi.values(), "PID-SECRET-123", "secret", "ACC-SECRET-9", ds.StudyInstanceUID,
                   ds.SOPInstanceUID]:
        assert secret.lower() not in dumped.lower()


# ------------------------------------------------------------------------------------------ PNG / JPEG


def test_png_8bit_and_spacing_hint(synthetic_radiograph, tmp_path):
    arr = (synthetic_radiograph() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    dec = decode_image(tmp_path / "a.png", spacing_hint_mm=0.143)
    np.testing.assert_allclose(dec.pixels, arr / 255.0, atol=1e-6)
    assert dec.spacing_mm == (0.143, 0.143) and dec.spacing_source == "hint"
    assert dec.meta["file_format"] == "png" and set(dec.meta) <= META_WHITELIST


@pytest.mark.parametrize(("bits_hint", "divisor"), [(12, 4095), (10, 1023), (None, 65535), (float("nan"), 65535)])
def test_png_16bit_uses_true_bit_depth(synthetic_radiograph, tmp_path, bits_hint, divisor):
    top = 1023 if bits_hint == 10 else 4095
    arr = np.rint(synthetic_radiograph() * top).astype(np.uint16)  # PadChest: 12/10-bit data in a 16-bit PNG
    Image.fromarray(arr).save(tmp_path / "b.png")
    dec = decode_image(tmp_path / "b.png", bits_stored_hint=bits_hint)
    np.testing.assert_allclose(dec.pixels, arr / divisor, atol=1e-6)


def test_rgb_raster_grey_accepted_colour_rejected(synthetic_radiograph, tmp_path):
    grey = (synthetic_radiograph() * 255).round().astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "grey.jpg", quality=95)
    dec = decode_image(tmp_path / "grey.jpg")
    assert dec.meta["file_format"] == "jpg" and np.abs(dec.pixels - grey / 255).max() < 0.06
    colour = np.stack([grey, grey // 2, 255 - grey], axis=-1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    assert _reject_reason(tmp_path / "colour.png") == RejectReason.UNSUPPORTED_PHOTOMETRIC


def test_truncated_raster_is_unreadable(synthetic_radiograph, tmp_path):
    arr = (synthetic_radiograph(256, 256) * 255).round().astype(np.uint8)
    for name in ("t.png", "t.jpg"):
        Image.fromarray(arr).save(tmp_path / name)
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        assert _reject_reason(tmp_path / name) == RejectReason.UNREADABLE


def test_constant_png_is_degenerate(tmp_path):
    Image.fromarray(np.full((64, 64), 90, dtype=np.uint8)).save(tmp_path / "c.png")
    assert _reject_reason(tmp_path / "c.png") == RejectReason.DEGENERATE_IMAGE


# ------------------------------------------------------------------------------------------ lookup tables (issue 16)


def _same_decoding(path, **kwargs) -> DecodedImage:
    fast, slow = decode_image(path, **kwargs), decode_image(path, lookup=False, **kwargs)
    assert fast.pixels.dtype == slow.pixels.dtype == np.float32
    np.testing.assert_array_equal(fast.pixels, slow.pixels)  # bit-identical, not just close
    assert fast.meta == slow.meta
    return fast


@pytest.mark.parametrize(("case", "bits", "photometric", "signed", "intensity"),
                         list(itertools.product(INTENSITY_CASES, (8, 12, 16), ("MONOCHROME1", "MONOCHROME2"),
                                                (False, True), ("voi", "bit_depth", "minmax"))))
def test_lookup_table_decoding_is_bit_identical(synthetic_radiograph, make_dicom, case, bits, photometric, signed,
                                                intensity):
    kwargs = dict(INTENSITY_CASES[case])
    if kwargs.get("window") == "mid":
        kwargs["window"] = _mid_window(bits, signed, kwargs.get("rescale_slope", 1.0),
                                       kwargs.get("rescale_intercept", 0.0))
    path = make_dicom(pixels=synthetic_radiograph(), bits_stored=bits, photometric=photometric, signed=signed,
                      **kwargs)
    _same_decoding(path, intensity=intensity)


@pytest.mark.parametrize("intensity", ["voi", "bit_depth", "minmax"])
def test_lookup_table_with_non_monotone_luts(synthetic_radiograph, make_dicom, intensity):
    """A scrambled modality LUT (not monotone: the table check must look at the codes the image really uses), a
    sigmoid window, and a window that misses the data (fallback decided on the pixels, not the table)."""
    img = synthetic_radiograph()
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = ((np.arange(4096) * 1237) % 4096).astype("<u2").tobytes()
    item["LUTData"].VR = "OW"
    item.ModalityLUTType = "US"
    scrambled = make_dicom(pixels=img, bits_stored=12, extra={
        "ModalityLUTSequence": pydicom.Sequence([item]), "RescaleSlope": None, "RescaleIntercept": None,
        "RescaleType": None})
    sigmoid = make_dicom(pixels=img, bits_stored=12, window=(2048.0, 1200.0), extra={"VOILUTFunction": "SIGMOID"})
    missing = make_dicom(pixels=img, bits_stored=12, extra={"WindowCenter": "60000", "WindowWidth": "10"})
    for path in (scrambled, sigmoid, missing):
        _same_decoding(path, intensity=intensity)
    assert _same_decoding(missing).meta["intensity_mode_used"] == "bit_depth"


def test_lookup_table_on_real_radiographs(pydicom_data_dir):
    for enc in ("UNCR", "J2KR"):
        _same_decoding(pydicom_data_dir / f"RG1_{enc}.dcm")


@pytest.mark.parametrize(("mode", "bits_hint"), [("I;16", 12.0), ("I;16", None), ("L", None), ("LA", None)])
def test_lookup_table_on_rasters(synthetic_radiograph, tmp_path, mode, bits_hint):
    img = synthetic_radiograph()
    if mode == "I;16":
        top = 4095 if bits_hint else 65535
        pil = Image.fromarray(np.rint(img * top).astype(np.uint16))
    else:
        pil = Image.fromarray(np.rint(img * 255).astype(np.uint8)).convert(mode)
    pil.save(tmp_path / "film.png")
    _same_decoding(tmp_path / "film.png", bits_stored_hint=bits_hint)
    Image.fromarray(np.full((64, 64), 7, np.uint16)).save(tmp_path / "flat.png")
    with pytest.raises(RejectedImage) as info:
        decode_image(tmp_path / "flat.png")
    assert info.value.reason == RejectReason.DEGENERATE_IMAGE


@pytest.mark.parametrize("transfer_syntax", ["jpeg2000_lossless", "rle", "jpeg_lossless"])
def test_preferred_decoder_plugin_gives_the_same_pixels(synthetic_radiograph, make_dicom, monkeypatch,
                                                        transfer_syntax):
    import cxrgen.imaging.decode as decode

    path = make_dicom(pixels=synthetic_radiograph(), bits_stored=12, transfer_syntax=transfer_syntax)
    preferred = decode_image(path)
    monkeypatch.setattr(decode, "PREFERRED_PLUGIN", "")  # pydicom's own choice
    np.testing.assert_array_equal(decode_image(path).pixels, preferred.pixels)
    monkeypatch.setattr(decode, "PREFERRED_PLUGIN", "pylibjpeg")

    def broken(self, *args, **kwargs):  # the preferred plugin fails on this file: the others still decode it
        if kwargs.get("decoding_plugin") == "pylibjpeg":
            raise RuntimeError("plugin crashed")
        return original(self, *args, **kwargs)
    original = pydicom.Dataset.pixel_array_options
    monkeypatch.setattr(pydicom.Dataset, "pixel_array_options", broken)
    np.testing.assert_array_equal(decode_image(path).pixels, preferred.pixels)
