"""DICOM films of the demo corpora (MIMIC, BRAX, VinDr, IU-Xray): encoding styles, demo film size, phantom
rendering, writing a film (optionally as a deliberately bad file) and the real non-chest DICOMs used as such."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from cxrgen.demo.badfiles import truncate_file
from cxrgen.demo.common import DemoContext
from cxrgen.demo.dicom_writer import write_dicom
from cxrgen.demo.phantom import PhantomSpec, render_phantom


@dataclass
class FilmStyle:
    """How a film is stored: the DICOM encoding choices write_dicom takes."""

    bits_stored: int = 12
    photometric: str = "MONOCHROME2"
    transfer_syntax: str = "explicit_le"
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    window: tuple[float, float] | None = None
    voi_lut_sequence: bool = False
    spacing_tags: tuple[str, ...] = ("ImagerPixelSpacing",)  # any of PixelSpacing / ImagerPixelSpacing, or none
    presentation_lut_shape: str | None = None
    modality: str = "CR"
    extra: dict = field(default_factory=dict)


def demo_size(rows: float, cols: float, spacing_mm: float, ctx: DemoContext) -> tuple[int, int, float]:
    """Real film size/spacing -> demo pixels (÷ downscale) and spacing (× downscale): anatomy keeps its size in mm."""
    h = max(32, int(round(rows / ctx.downscale)))
    w = max(32, int(round(cols / ctx.downscale)))
    return h, w, float(spacing_mm) * ctx.downscale


def render(view: str, h: int, w: int, spacing_mm: float, findings: dict[str, str], seed: int, sex: str = "U",
           age: float = 50.0) -> np.ndarray:
    """A phantom film; views other than PA/AP/LATERAL render as PA, unknown sex as "U", a non-finite age as 50."""
    phantom_view = view if view in ("PA", "AP", "LATERAL") else "PA"
    age = 50.0 if not np.isfinite(age) else float(age)
    return render_phantom(PhantomSpec(view=phantom_view, height_px=h, width_px=w, spacing_mm=spacing_mm,
                                      sex=sex if sex in ("M", "F") else "U", age=age, findings=findings, seed=seed))


def vary_acquisition(pixels01: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One acquisition of a phantom: repeated portable films of one patient are never pixel-identical (and so not
    dropped as duplicates by the store): the patient lies up to 2 % of the film off its previous position, the exposure
    differs (gamma 0.9-1.1) and each film has its own quantum noise (sigma 0.006 of the display range)."""
    from scipy.ndimage import shift

    h, w = pixels01.shape
    offset = rng.uniform(-0.02, 0.02, size=2) * np.array([h, w])
    moved = np.clip(shift(pixels01.astype(np.float32), offset, order=1, mode="nearest"), 0.0, 1.0)
    exposed = moved ** float(rng.uniform(0.9, 1.1)) + rng.normal(0.0, 0.006, size=moved.shape)
    return np.clip(exposed, 0.0, 1.0).astype(np.float32)


def write_film(path: Path, pixels01: np.ndarray, style: FilmStyle, spacing_mm: float, *, view_position: str | None,
               patient_id: str, phi: dict[str, str], uid_seed: object, bad_kind: str | None = None,
               extra: dict | None = None, study_instance_uid: str | None = None) -> None:
    """Write one film; ``bad_kind`` (``truncated``, ``no_pixels``, ``multi_frame``, ``non_chest``) turns it into a
    deliberately broken file of that kind; other kinds are the caller's business."""
    spacing = (round(spacing_mm, 6), round(spacing_mm, 6))
    kwargs = dict(bits_stored=style.bits_stored, photometric=style.photometric,
                  transfer_syntax=style.transfer_syntax, rescale_slope=style.rescale_slope,
                  rescale_intercept=style.rescale_intercept, voi_lut_sequence=style.voi_lut_sequence,
                  pixel_spacing=spacing if "PixelSpacing" in style.spacing_tags else None,
                  imager_pixel_spacing=spacing if "ImagerPixelSpacing" in style.spacing_tags else None,
                  modality=style.modality, body_part="CHEST", view_position=view_position, patient_id=patient_id,
                  phi=phi, presentation_lut_shape=style.presentation_lut_shape,
                  number_of_frames=2 if bad_kind == "multi_frame" else 1, extra={**style.extra, **(extra or {})},
                  study_instance_uid=study_instance_uid, uid_seed=uid_seed)
    try:
        write_dicom(path, pixels01, window=style.window, **kwargs)
    except ValueError:
        if style.window is None:
            raise
        write_dicom(path, pixels01, window=None, **kwargs)  # a real window the demo bit depth cannot represent
    if bad_kind == "truncated":
        truncate_file(path, min_bytes=256)
    elif bad_kind == "no_pixels":
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.save_as(path, enforce_file_format=True)
    elif bad_kind == "non_chest":
        write_non_chest(path, patient_id, phi, pick=int(np.frombuffer(path.name.encode(), np.uint8).sum()))


def write_non_chest(path: Path, patient_id: str, phi: dict[str, str], pick: int) -> None:
    """A real non-chest DICOM from pydicom-data (RG3 extremity CR or a CT slice) re-saved with this corpus's
    patient id and fake PHI, placed where a chest film is expected."""
    spec = importlib.util.find_spec("data_store")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pydicom-data is not installed; the demo corpus uses its RG3/CT files as non-chest images")
    data_dir = Path(list(spec.submodule_search_locations)[0]) / "data"
    name = ("RG3_J2KI.dcm", "693_J2KR.dcm")[pick % 2]
    ds = pydicom.dcmread(data_dir / name)
    ds.PatientID = patient_id
    for keyword, value in phi.items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
