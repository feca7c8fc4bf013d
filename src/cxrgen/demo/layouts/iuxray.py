"""IU-Xray / OpenI demo corpus: the real report XMLs (byte-identical, from torchxrayvision's ``NLMCXR_reports.tgz``) and
one DICOM per ``parentImage`` in the ``NLMCXR_dcm`` naming (``<n>_IM-xxxx-xxxx.dcm``), whose headers follow the real
IU DICOM header table (photometric, BitsStored, Presentation LUT shape, window, VOI LUT, spacing tags, size, view).
One phantom seed per patient (the report's ``uId``): a report's frontal and lateral films show the same patient, the
report's findings select what is drawn, and each film is its own acquisition
(:func:`cxrgen.demo.films.vary_acquisition`).
"""

from __future__ import annotations

import functools
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.demo import noise as demo_noise
from cxrgen.demo.badfiles import DICOM_FILM_MIX, plan_bad_files, remove_missing
from cxrgen.demo.common import DemoContext, txrv_data_dir
from cxrgen.demo.films import FilmStyle, demo_size, render, vary_acquisition, write_film
from cxrgen.demo.sampling import phantom_seed
from cxrgen.sources.iuxray import (
    REPORT_DIR,
    first_number,
    mesh_laterality,
    mesh_to_chexpert,
    normalise_view,
    parse_report_xml,
)


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
    bad = plan_bad_files(range(len(items)), ctx.bad_fraction, ctx.rng("iuxray", "bad_files"), DICOM_FILM_MIX)
    orphan_reports = {items[i][0] for i, kind in bad.items() if kind == "orphan_file"}
    # images of a report left out are rejected at ingestion (no metadata): never noisy, or the truth would list them
    noisy = demo_noise.plan_for(ctx, "iuxray", range(len(items)),
                                set(bad) | {i for i, (name, _) in enumerate(items) if name in orphan_reports})
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
        patient_number = rep["uid"][3:] if rep["uid"] else Path(name).stem
        seed = phantom_seed(ctx, "iuxray", patient_number)
        pixels = vary_acquisition(render(render_view, h, w, demo_spacing, findings, seed=seed), item_rng)
        path = image_dir / dicom_name(image_id)
        pixels = demo_noise.inject(ctx, "iuxray", image_id, noisy.get(i), pixels, path.relative_to(root).as_posix())
        kind = bad.get(i)
        write_film(path, pixels, style, demo_spacing,
                   view_position=str(row["View Position"]) if row is not None and isinstance(
                       row["View Position"], str) else None,
                   patient_id=patient_number, phi=ctx.phi.fake_person(item_rng),
                   uid_seed=("iuxray", ctx.seed, image_id), bad_kind=kind)
        if kind == "missing_file":
            remove_missing(path)

