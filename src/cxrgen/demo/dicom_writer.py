"""Write standards-conformant CR/DX DICOM files from a [0, 1] display-sense image (demo corpora and tests).

Stored values are chosen so that :func:`cxrgen.imaging.decode.decode_image` gives the image back: with a window it
inverts the window (``intensity="voi"``), with a VOI LUT Sequence it inverts the LUT, otherwise it inverts the
bit-depth mapping (``"bit_depth"``, also what ``"voi"`` falls back to); MONOCHROME1 stores inverted values and the
rescale is undone before storing. Encoding: pydicom for native/RLE/JPEG 2000, python-gdcm for JPEG Lossless SV1 and
JPEG-LS (pydicom 3 has no encoder for those without extra packages).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

TRANSFER_SYNTAXES: dict[str, str] = {
    "implicit_le": dcm_uid.ImplicitVRLittleEndian,
    "explicit_le": dcm_uid.ExplicitVRLittleEndian,
    "rle": dcm_uid.RLELossless,
    "jpeg2000_lossless": dcm_uid.JPEG2000Lossless,
    "jpeg2000": dcm_uid.JPEG2000,
    "jpeg_lossless": dcm_uid.JPEGLosslessSV1,
    "jpegls_lossless": dcm_uid.JPEGLSLossless,
}
LOSSLESS_SYNTAXES = ("implicit_le", "explicit_le", "rle", "jpeg2000_lossless", "jpeg_lossless", "jpegls_lossless")
BITS_STORED = (8, 10, 12, 14, 15, 16)
_SOP_CLASSES = {
    "CR": dcm_uid.ComputedRadiographyImageStorage,
    "DX": dcm_uid.DigitalXRayImageStorageForPresentation,
    "DR": dcm_uid.DigitalXRayImageStorageForPresentation,
}
# row and column directions of a conventionally displayed chest film (RG1, a PA, carries "L", "F")
_PATIENT_ORIENTATION = {"PA": ["L", "F"], "AP": ["R", "F"], "LL": ["P", "F"], "LATERAL": ["P", "F"], "RL": ["A", "F"]}
J2K_LOSSY_RATIO = 10  # compression ratio of the lossy JPEG 2000 layer (RG1_J2KI in pydicom-data is ~11:1)


def voi_lut_curve(t: np.ndarray) -> np.ndarray:
    """Monotone, visibly non-linear VOI LUT shape on [0, 1] written for ``voi_lut_sequence=True``."""
    return 0.5 * t + 0.5 * t**2


def _voi_lut_curve_inverse(y: np.ndarray) -> np.ndarray:
    return (-1.0 + np.sqrt(1.0 + 8.0 * y)) / 2.0


def make_uid(*entropy: object) -> str:
    """Deterministic UID under pydicom's root from any hashable description."""
    return dcm_uid.generate_uid(entropy_srcs=[repr(e) for e in entropy])


def write_dicom(
    path: Path,
    pixels01: np.ndarray,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    transfer_syntax: str = "explicit_le",
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    voi_lut_sequence: bool = False,
    pixel_spacing: tuple | None = None,
    imager_pixel_spacing: tuple | None = None,
    modality: str = "CR",
    body_part: str | None = "CHEST",
    view_position: str | None = "PA",
    patient_id: str = "",
    phi: dict[str, str] | None = None,
    presentation_lut_shape: str | None = None,
    number_of_frames: int = 1,
    extra: dict | None = None,
    study_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    uid_seed: object = None,
    signed: bool = False,
) -> None:
    """Write ``pixels01`` ((H, W) or (frames, H, W) floats in [0, 1], bright = bone) as one DICOM file.

    ``window`` is (center, width) in rescaled units; ``phi`` maps DICOM keywords to fake PHI strings; ``extra`` maps
    keywords to values set last (None deletes the element), e.g. to build deliberately broken files. UIDs derive from
    ``uid_seed`` (default: a hash of path name and pixels), so files are byte-identical across runs."""
    path = Path(path)
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}, got {transfer_syntax!r}")
    if bits_stored not in BITS_STORED:
        raise ValueError(f"bits_stored must be one of {BITS_STORED}, got {bits_stored}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if rescale_slope <= 0:
        raise ValueError("rescale_slope must be > 0")
    frames = _frames(pixels01, number_of_frames)

    stored = _stored_values(frames, bits_stored, photometric, rescale_slope, rescale_intercept, window,
                            voi_lut_sequence, signed)
    if uid_seed is None:
        uid_seed = (path.name, hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest())
    ds = _header(modality, uid_seed, study_instance_uid, sop_instance_uid)
    ts = TRANSFER_SYNTAXES[transfer_syntax]
    ds.file_meta.TransferSyntaxUID = dcm_uid.ExplicitVRLittleEndian  # native first, compressed below

    ds.PatientID = patient_id
    ds.BodyPartExamined = body_part if body_part is not None else ""
    ds.ViewPosition = view_position if view_position is not None else ""
    ds.PatientOrientation = _PATIENT_ORIENTATION.get((view_position or "").upper(), "")
    if modality.upper() in ("DX", "DR"):
        _add_dx_modules(ds, photometric, body_part)
        if presentation_lut_shape is None:  # DX: INVERSE iff MONOCHROME1 (PS3.3 C.8.11.3.1.1)
            presentation_lut_shape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    if presentation_lut_shape is not None:
        ds.PresentationLUTShape = presentation_lut_shape
    ds.RescaleSlope = _ds_str(rescale_slope)
    ds.RescaleIntercept = _ds_str(rescale_intercept)
    ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter = _ds_str(window[0])
        ds.WindowWidth = _ds_str(window[1])
    if voi_lut_sequence:
        ds.VOILUTSequence = Sequence([_voi_lut_item(bits_stored, rescale_slope, rescale_intercept, signed)])
    if pixel_spacing is not None:
        ds.PixelSpacing = [_ds_str(v) for v in pixel_spacing]
    if imager_pixel_spacing is not None:
        ds.ImagerPixelSpacing = [_ds_str(v) for v in imager_pixel_spacing]
    for keyword, value in (phi or {}).items():
        setattr(ds, keyword, value)

    n = stored.shape[0]
    ds.set_pixel_data(stored if n > 1 else stored[0], photometric, bits_stored, generate_instance_uid=False)
    if n > 1:
        ds.NumberOfFrames = n
    _encode(ds, ts, transfer_syntax)
    for keyword, value in (extra or {}).items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# --------------------------------------------------------------------------------------------------- pieces


def _ds_str(value: float) -> str:
    """A DS string of at most 16 characters."""
    text = f"{float(value):.10g}"
    return text if len(text) <= 16 else f"{float(value):.8g}"


def _frames(pixels01: np.ndarray, number_of_frames: int) -> np.ndarray:
    arr = np.asarray(pixels01, dtype=np.float64)
    if arr.ndim == 2:
        arr = np.repeat(arr[None], max(1, int(number_of_frames)), axis=0)
    elif arr.ndim != 3:
        raise ValueError(f"pixels01 must be (H, W) or (frames, H, W), got shape {arr.shape}")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise ValueError("pixels01 must be finite and within [0, 1]")
    return arr


def _stored_values(frames: np.ndarray, bits: int, photometric: str, slope: float, intercept: float,
                   window: tuple[float, float] | None, voi_lut: bool, signed: bool) -> np.ndarray:
    """Invert display -> VOI -> rescale -> stored, round, and check the result is representable."""
    lo = -(2 ** (bits - 1)) if signed else 0
    hi = lo + 2**bits - 1
    display = 1.0 - frames if photometric == "MONOCHROME1" else frames
    if voi_lut:
        # the LUT spans the whole modality-LUT output range, see _voi_lut_item
        stored = lo + _voi_lut_curve_inverse(display) * (hi - lo)
    elif window is not None:
        center, width = float(window[0]), float(window[1])
        if width <= 1:
            raise ValueError("window width must be > 1")
        # inverse of PS3.3 C.11.2.1.2.1 (LINEAR): y = ((x - (c - 0.5)) / (w - 1) + 0.5)
        rescaled = (display - 0.5) * (width - 1) + center - 0.5
        stored = (rescaled - intercept) / slope
    else:
        stored = lo + display * (hi - lo)
    stored = np.rint(stored)
    if stored.min() < lo or stored.max() > hi:
        raise ValueError(f"window {window} with rescale ({slope}, {intercept}) needs stored values outside "
                         f"[{lo}, {hi}] of {bits} bits")
    if bits == 8:  # BitsAllocated 8
        return stored.astype(np.int8 if signed else np.uint8)
    return stored.astype(np.int16 if signed else np.uint16)


def _voi_lut_item(bits: int, slope: float, intercept: float, signed: bool) -> Dataset:
    """VOI LUT (16-bit output) covering the whole modality-LUT output range with :func:`voi_lut_curve`."""
    if slope != 1 or not float(intercept).is_integer():
        raise ValueError("voi_lut_sequence needs rescale slope 1 and an integer intercept (LUT inputs are integers)")
    lo = -(2 ** (bits - 1)) if signed else 0
    n_entries = 2**bits
    first = int(lo + intercept)
    t = np.arange(n_entries, dtype=np.float64) / (n_entries - 1)
    lut = np.rint(voi_lut_curve(t) * 65535).astype(np.uint16)
    item = Dataset()
    # 65536 entries are encoded as 0 (PS3.3 C.11.2.1.1); first value mapped is signed (US or SS VR)
    item.LUTDescriptor = [n_entries if n_entries < 65536 else 0, first, 16]
    item["LUTDescriptor"].VR = "SS" if first < 0 else "US"
    item.LUTExplanation = "cxrgen demo VOI LUT"
    # OW, not US: a 2**15+ entry LUT exceeds the 64 KiB limit of an explicit-VR US element
    item.LUTData = lut.astype("<u2").tobytes()
    item["LUTData"].VR = "OW"
    return item


def _header(modality: str, uid_seed: object, study_uid: str | None, sop_uid: str | None) -> Dataset:
    sop_class = _SOP_CLASSES.get(modality.upper(), dcm_uid.SecondaryCaptureImageStorage)
    study_uid = study_uid or make_uid(uid_seed, "study")
    sop_uid = sop_uid or make_uid(uid_seed, "sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.ImplementationClassUID = dcm_uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "CXRGEN_DEMO"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    # type-2 attributes of Patient / General Study / General Series / General Equipment modules: present, maybe empty
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "cxrgen"
    ds.ReferringPhysicianName = ""
    ds.PatientName = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = make_uid(uid_seed, "series", study_uid)
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    if sop_class == dcm_uid.SecondaryCaptureImageStorage:
        ds.ConversionType = "WSD"
    return ds


def _add_dx_modules(ds: Dataset, photometric: str, body_part: str | None) -> None:
    """Type-1/2 attributes of the DX Series, DX Anatomy Imaged, DX Image and DX Detector modules (PS3.3 C.8.11).
    Not enforced here: DX wants ImagerPixelSpacing, rescale slope 1 / intercept 0 and a known view orientation."""
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = "U"
    ds.DetectorType = ""
    if (body_part or "").upper() in ("CHEST", "THORAX", "PORT CHEST"):
        region = Dataset()
        region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "51185008", "SCT", "Chest"
        ds.AnatomicRegionSequence = Sequence([region])
    ds.PixelIntensityRelationship = "LOG"
    # +1: lower stored values = less X-ray intensity (MONOCHROME1 stores bone dark = low values)
    ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"


def _encode(ds: Dataset, ts: str, name: str) -> None:
    if name in ("implicit_le", "explicit_le"):
        ds.file_meta.TransferSyntaxUID = ts
        return
    if name in ("jpeg_lossless", "jpegls_lossless"):
        _encode_with_gdcm(ds, ts)
        return
    kwargs: dict[str, Any] = {}
    if name == "jpeg2000":
        kwargs["j2k_cr"] = [J2K_LOSSY_RATIO]
    # a fixed plugin keeps the bytes identical across machines; our SOP Instance UID is kept (the instance is new).
    # RLE through pylibjpeg-rle: pydicom's own RLE encoder is pure Python, ~16x slower (0.089 vs 0.0055 CPU-s for a
    # 500x420 film), and was ~40 % of the MIMIC demo build
    plugin = "pylibjpeg" if name.startswith("jpeg2000") or name == "rle" else "pydicom"
    ds.compress(ts, encoding_plugin=plugin, generate_instance_uid=False, **kwargs)
    if name == "jpeg2000":
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = J2K_LOSSY_RATIO
        ds.LossyImageCompressionMethod = "ISO_15444_1"


def _encode_with_gdcm(ds: Dataset, ts: str) -> None:
    """Encode PixelData with python-gdcm through a temporary file; only the encapsulated pixel data is kept, so
    GDCM's own header additions (dates, spacing, UIDs) never reach the written file."""
    import gdcm
    import pydicom

    gdcm_ts = {
        dcm_uid.JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1,
        dcm_uid.JPEGLSLossless: gdcm.TransferSyntax.JPEGLSLossless,
    }[ts]
    fd_in, tmp_in = tempfile.mkstemp(suffix=".dcm")
    fd_out, tmp_out = tempfile.mkstemp(suffix=".dcm")
    os.close(fd_in)
    os.close(fd_out)
    try:
        ds.save_as(tmp_in, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(tmp_in)
        if not reader.Read():
            raise RuntimeError("gdcm could not read the native file it was given")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm_ts))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError(f"gdcm could not encode {ts.name}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(tmp_out)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError("gdcm could not write the encoded file")
        encoded = pydicom.dcmread(tmp_out)
    finally:
        Path(tmp_in).unlink(missing_ok=True)
        Path(tmp_out).unlink(missing_ok=True)
    ds.PixelData = encoded.PixelData
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = ts
