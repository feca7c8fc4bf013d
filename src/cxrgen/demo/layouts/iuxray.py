"""IU-Xray / OpenI demo corpus: the real report XMLs (byte-identical, from torchxrayvision's ``NLMCXR_reports.tgz``) and
one DICOM per ``parentImage`` in the ``NLMCXR_dcm`` naming (``<n>_IM-xxxx-xxxx.dcm``), whose headers follow the real
IU DICOM header table (photometric, BitsStored, Presentation LUT shape, window, VOI LUT, spacing tags, size, view).

Also holds the film/bad-file helpers shared by the MIMIC, BRAX and VinDr writers (a candidate for ``demo/common``).
"""

from __future__ import annotations

import functools
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from cxrgen.demo.common import DemoContext, txrv_data_dir
from cxrgen.demo.dicom_writer import write_dicom
from cxrgen.demo.phantom import PhantomSpec, render_phantom
from cxrgen.sources.iuxray import (
    REPORT_DIR,
    first_number,
    mesh_laterality,
    mesh_to_chexpert,
    normalise_view,
    parse_report_xml,
)

# ------------------------------------------------------------------------------------------- shared helpers

BAD_KINDS = ("truncated", "no_pixels", "multi_frame", "non_chest", "orphan_file", "missing_file")


def plan_bad_items(n_items: int, ctx: DemoContext, source: str) -> dict[int, str]:
    """Deterministic choice of which items (0..n_items-1) become bad files, and of which kind.

    round(bad_fraction * n) items, at least one when bad_fraction > 0; kinds cycle through BAD_KINDS from a
    seed-dependent start so small corpora of different sources cover different kinds."""
    if ctx.bad_fraction <= 0 or n_items == 0:
        return {}
    rng = ctx.rng(source, "bad_files")
    n_bad = min(n_items, max(1, int(round(ctx.bad_fraction * n_items))))
    chosen = np.sort(rng.choice(n_items, size=n_bad, replace=False))
    start = int(rng.integers(len(BAD_KINDS)))
    return {int(i): BAD_KINDS[(start + k) % len(BAD_KINDS)] for k, i in enumerate(chosen)}


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
    phantom_view = view if view in ("PA", "AP", "LATERAL") else "PA"
    age = 50.0 if not np.isfinite(age) else float(age)
    return render_phantom(PhantomSpec(view=phantom_view, height_px=h, width_px=w, spacing_mm=spacing_mm,
                                      sex=sex if sex in ("M", "F") else "U", age=age, findings=findings, seed=seed))


def write_film(path: Path, pixels01: np.ndarray, style: FilmStyle, spacing_mm: float, *, view_position: str | None,
               patient_id: str, phi: dict[str, str], uid_seed: object, bad_kind: str | None = None,
               extra: dict | None = None, study_instance_uid: str | None = None) -> None:
    """Write one film; ``bad_kind`` turns it into a deliberately broken file of that kind (see BAD_KINDS)."""
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
        data = path.read_bytes()
        path.write_bytes(data[: max(256, len(data) // 2)])
    elif bad_kind == "no_pixels":
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.save_as(path, enforce_file_format=True)
    elif bad_kind == "non_chest":
        write_non_chest(path, patient_id, phi, pick=int(np.frombuffer(path.name.encode(), np.uint8).sum()))


def write_non_chest(path: Path, patient_id: str, phi: dict[str, str], pick: int) -> None:
    """A real non-chest DICOM from pydicom-data (RG3 extremity CR or a CT slice) re-saved with this corpus's
    patient id and fake PHI, placed where a chest film is expected."""
    import importlib.util

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


def bad_kind_of(path: Path) -> str | None:
    """Which BAD_KINDS defect a DICOM file on disk shows (None for a sound chest radiograph); for tests and QA."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pydicom only warns when a file ends inside an element
            ds = pydicom.dcmread(path)
    except Exception:
        return "truncated"
    if "PixelData" not in ds:
        return "no_pixels"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return "multi_frame"
    if ds.get("Modality") not in ("CR", "DX") or str(ds.get("BodyPartExamined", "")).upper() != "CHEST":
        return "non_chest"
    try:
        ds.pixel_array  # noqa: B018  (decodes: a cut-off pixel stream fails here)
    except Exception:
        return "truncated"
    return None


def remove_missing(path: Path) -> None:
    """A 'missing_file' item: written like any other to keep RNG streams aligned, then deleted."""
    path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- IU-Xray writer


@functools.cache
def read_reports() -> dict[str, bytes]:
    """All IU report XMLs from torchxrayvision's tgz: ``"ecgen-radiology/<n>.xml"`` -> bytes, sorted by number
    (cached: treat the returned dict as read-only)."""
    out = {}
    with tarfile.open(txrv_data_dir() / "NLMCXR_reports.tgz", "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".xml"):
                out[member.name] = tar.extractfile(member).read()
    return dict(sorted(out.items(), key=lambda kv: int(Path(kv[0]).stem)))


def load_header_table() -> pd.DataFrame:
    cols = ["imageid", "Photometric Interpretation", "Bits Stored", "Rows", "Columns", "Imager Pixel Spacing",
            "Pixel Spacing", "View Position", "Window Center", "Window Width", "LUT Descriptor",
            "Presentation LUT Shape", "Modality"]
    table = pd.read_csv(txrv_data_dir() / "nlmcxr_dicom_metadata.csv.gz", usecols=cols, low_memory=False)
    return table.drop_duplicates("imageid").set_index("imageid")


def _style_from_header(row: pd.Series | None, rng: np.random.Generator) -> tuple[FilmStyle, float, int, int]:
    """FilmStyle, spacing (mm) and real rows/cols of an IU image from its header-table row (defaults if absent)."""
    if row is None:
        return FilmStyle(), 0.143, 2828, 2320
    spacing_ips = first_number(row["Imager Pixel Spacing"])
    spacing_ps = first_number(row["Pixel Spacing"])
    tags = tuple(t for t, v in (("ImagerPixelSpacing", spacing_ips), ("PixelSpacing", spacing_ps)) if np.isfinite(v))
    spacing = spacing_ips if np.isfinite(spacing_ips) else (spacing_ps if np.isfinite(spacing_ps) else 0.143)
    center, width = first_number(row["Window Center"]), first_number(row["Window Width"])
    lut_shape = row["Presentation LUT Shape"]
    style = FilmStyle(
        bits_stored=int(row["Bits Stored"]),
        photometric=str(row["Photometric Interpretation"]),
        # IU originals' transfer syntax is not in the table: mostly uncompressed, some JPEG 2000 lossless
        transfer_syntax=str(rng.choice(["explicit_le", "implicit_le", "jpeg2000_lossless"], p=[0.6, 0.2, 0.2])),
        window=(center, width) if np.isfinite(center) and np.isfinite(width) and width > 1 else None,
        voi_lut_sequence=isinstance(row["LUT Descriptor"], str),
        spacing_tags=tags,
        presentation_lut_shape=lut_shape if isinstance(lut_shape, str) else None,
        modality=str(row["Modality"]) if isinstance(row["Modality"], str) else "CR",
    )
    return style, spacing, int(row["Rows"]), int(row["Columns"])


def dicom_name(image_id: str) -> str:
    """``CXR12_IM-0123-1001`` -> ``12_IM-0123-1001.dcm`` (NLMCXR_dcm naming)."""
    return (image_id[3:] if image_id.startswith("CXR") else image_id) + ".dcm"


def write(root: Path, n_images: int, ctx: DemoContext) -> None:
    """Write about ``n_images`` IU images (whole reports) with their XMLs under ``root``."""
    root = Path(root)
    xmls = read_reports()
    parsed = {name: parse_report_xml(data) for name, data in xmls.items()}
    names = [n for n, rep in parsed.items() if rep["image_ids"]]
    rng = ctx.rng("iuxray", "reports")
    order = rng.permutation(len(names))
    chosen, total = [], 0
    for i in order:
        if total >= n_images:
            break
        chosen.append(names[i])
        total += len(parsed[names[i]]["image_ids"])
    chosen.sort(key=lambda n: int(Path(n).stem))

    header = load_header_table()
    items = [(name, image_id) for name in chosen for image_id in parsed[name]["image_ids"]]
    bad = plan_bad_items(len(items), ctx, "iuxray")
    orphan_reports = {items[i][0] for i, kind in bad.items() if kind == "orphan_file"}
    for name in chosen:
        if name not in orphan_reports:  # an orphan image's report XML is left out, so the image has no metadata
            (root / REPORT_DIR).mkdir(parents=True, exist_ok=True)
            (root / REPORT_DIR / Path(name).name).write_bytes(xmls[name])

    image_dir = root / "NLMCXR_dcm"
    for i, (name, image_id) in enumerate(items):
        rep = parsed[name]
        item_rng = ctx.rng("iuxray", "image", image_id)
        row = header.loc[image_id] if image_id in header.index else None
        style, spacing, rows, cols = _style_from_header(row, item_rng)
        view = normalise_view(row["View Position"]) if row is not None else "UNKNOWN"
        render_view = view if view != "UNKNOWN" else str(item_rng.choice(["PA", "LATERAL"], p=[0.6, 0.4]))
        labels = mesh_to_chexpert(rep["mesh_major"])
        sides = mesh_laterality(rep["mesh_major"])
        findings = {k: sides.get(k, "") for k, v in labels.items() if v == 1.0 and k != "No Finding"}
        h, w, demo_spacing = demo_size(rows, cols, spacing, ctx)
        pixels = render(render_view, h, w, demo_spacing, findings, seed=int(item_rng.integers(2**31)))
        path = image_dir / dicom_name(image_id)
        kind = bad.get(i)
        patient_number = rep["uid"][3:] if rep["uid"] else Path(name).stem
        write_film(path, pixels, style, demo_spacing,
                   view_position=str(row["View Position"]) if row is not None and isinstance(
                       row["View Position"], str) else None,
                   patient_id=patient_number, phi=ctx.phi.fake_person(item_rng),
                   uid_seed=("iuxray", ctx.seed, image_id), bad_kind=kind)
        if kind == "missing_file":
            remove_missing(path)

