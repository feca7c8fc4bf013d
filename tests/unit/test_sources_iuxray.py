"""IU-Xray / OpenI: real XMLs + NLMCXR_dcm-named DICOMs -> adapter; MeSH mapping; hand-made PNG layout."""

from __future__ import annotations

import struct
import zlib
from collections import Counter

import numpy as np
import pandas as pd
import pydicom
import pytest
from sources_helpers import demo_corpus_fixture, write_twice

from cxrgen.demo.badfiles import bad_kind_of
from cxrgen.demo.common import DemoContext, txrv_data_dir
from cxrgen.demo.layouts import iuxray as layout
from cxrgen.sources.base import get_adapter
from cxrgen.sources.iuxray import mesh_laterality, mesh_to_chexpert, parse_report_xml

demo = demo_corpus_fixture("iuxray", 20, DemoContext(seed=3, downscale=10, bad_fraction=0.3))


def test_every_image_file_appears_once_and_bad_files_are_flagged(demo):
    root, _, df = demo
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.dcm"))
    assert all(p.startswith("NLMCXR_dcm/") for p in on_disk)
    assert sorted(df.loc[df["reject_reason"] != "missing_file", "rel_path"]) == on_disk
    assert df["source_key"].is_unique
    assert (df["reject_reason"] == "missing_file").sum() >= 1
    assert (df["reject_reason"] == "missing_metadata").sum() >= 1
    assert not any((root / p).exists() for p in df.loc[df["reject_reason"] == "missing_file", "rel_path"])
    kinds = Counter(bad_kind_of(root / p) for p in on_disk)
    assert {"truncated", "no_pixels", "multi_frame", "non_chest"} <= set(kinds)


def test_xmls_are_byte_identical_and_labels_reports_match(demo):
    root, _, df = demo
    originals = layout.read_reports()
    written = sorted((root / "ecgen-radiology").glob("*.xml"))
    assert written and all(p.read_bytes() == originals[f"ecgen-radiology/{p.name}"] for p in written)
    ok = df[df["reject_reason"].isna()]
    for path in written:
        rep = parse_report_xml(path.read_bytes())
        rows = ok[ok["patient_id"] == rep["uid"]]
        expected = mesh_to_chexpert(rep["mesh_major"])
        for row in rows.itertuples():
            assert np.allclose(row.lbl_cardiomegaly, expected["Cardiomegaly"], equal_nan=True)
            assert np.allclose(row.lbl_no_finding, expected["No Finding"], equal_nan=True)
            assert row.report_impression == rep["impression"] or (pd.isna(row.report_impression)
                                                                 and rep["impression"] is None)
    header = pd.read_csv(txrv_data_dir() / "nlmcxr_dicom_metadata.csv.gz", usecols=["imageid", "View Position"])
    views = header.set_index("imageid")["View Position"]
    for row in ok.itertuples():
        if views.get(row.source_key) == "PA":
            assert row.view == "PA"
        if views.get(row.source_key) in ("LL", "LATERAL"):
            assert row.view == "LATERAL"
    assert ok["official_split"].isna().all() and (ok["sex"] == "U").all()


def test_headers_follow_the_real_iu_table_and_carry_phi(demo):
    root, ctx, df = demo
    header = pd.read_csv(txrv_data_dir() / "nlmcxr_dicom_metadata.csv.gz", low_memory=False).set_index("imageid")
    ok = df[df["reject_reason"].isna()]
    ok = ok[[bad_kind_of(root / p) is None for p in ok["rel_path"]]]
    assert len(ok) >= 10
    for row in ok.itertuples():
        ds = pydicom.dcmread(root / row.rel_path, stop_before_pixels=True)
        real = header.loc[row.source_key]
        assert ds.PhotometricInterpretation == real["Photometric Interpretation"]
        assert ds.BitsStored == real["Bits Stored"]
        assert str(ds.PatientName) in ctx.phi.canaries and ds.OtherPatientIDs in ctx.phi.canaries
        assert abs(ds.Rows - real["Rows"] / 10) <= 1


def test_same_seed_writes_identical_files(tmp_path):
    first, second = write_twice("iuxray", tmp_path, 3, seed=5)
    assert first == second and len(first) >= 4


def test_mesh_mapping_and_laterality():
    labels = mesh_to_chexpert(["Pleural Effusion/right/small", "Opacity/lung/base/left/mild",
                               "Catheters, Indwelling", "Calcified Granuloma/lung/hilum/right", "Cardiac Shadow/enlarged",
                               "Fractures, Bone/ribs/left", "Pulmonary Atelectasis/base/bilateral"])
    assert labels["Pleural Effusion"] == labels["Lung Opacity"] == labels["Support Devices"] == 1.0
    assert labels["Cardiomegaly"] == labels["Fracture"] == labels["Atelectasis"] == 1.0
    assert np.isnan(labels["No Finding"]) and np.isnan(labels["Lung Lesion"]) and np.isnan(labels["Pneumothorax"])
    normal = mesh_to_chexpert(["normal"])
    assert normal["No Finding"] == 1.0 and sum(v == 1.0 for v in normal.values()) == 1
    sides = mesh_laterality(["Pleural Effusion/right/small", "Pleural Effusion/left", "Opacity/lung/base/left",
                             "Pneumothorax"])
    assert sides == {"Pleural Effusion": "bilateral", "Lung Opacity": "left", "Pneumothorax": ""}


def _png(width: int, height: int) -> bytes:
    raw = b"".join(b"\x00" + bytes(width) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_hand_made_png_layout_pins_the_real_conventions(tmp_path):
    xml = ('<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="CXR7"/><MedlineCitation><Article><Abstract>'
           '<AbstractText Label="COMPARISON">None.</AbstractText><AbstractText Label="INDICATION">Cough</AbstractText>'
           '<AbstractText Label="FINDINGS"/><AbstractText Label="IMPRESSION">Right pleural effusion.</AbstractText>'
           '</Abstract></Article></MedlineCitation><MeSH><major>Pleural Effusion/right</major></MeSH>'
           '<parentImage id="CXR7_IM-2252-1001"><caption>PA</caption></parentImage>'
           '<parentImage id="CXR7_IM-2252-2001"/><parentImage id="CXR7_IM-2252-3001"/></eCitation>')
    (tmp_path / "ecgen-radiology").mkdir()
    (tmp_path / "ecgen-radiology" / "7.xml").write_text(xml)
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / "CXR7_IM-2252-1001.png").write_bytes(_png(512, 600))
    (tmp_path / "png" / "CXR7_IM-2252-2001.png").write_bytes(_png(500, 512))
    (tmp_path / "png" / "CXR8_IM-0001-1001.png").write_bytes(_png(8, 8))
    table = tmp_path / "headers.csv"
    table.write_text("imageid,View Position,Imager Pixel Spacing,Pixel Spacing,Rows,Columns\n"
                     "CXR7_IM-2252-1001,PA,\"['0.143', '0.143']\",,2800,2048\n"
                     "CXR7_IM-2252-2001,,,\"['0.1500', '0.1500']\",2800,2500\n")
    tsne = tmp_path / "tsne.csv"
    tsne.write_text("imageid,tsne-view\nCXR7_IM-2252-2001,L\n")
    df = get_adapter("iuxray")(tmp_path, {"iuxray_dicom_metadata": table, "iuxray_tsne_views": tsne})
    df = df.set_index("source_key")
    first = df.loc["CXR7_IM-2252-1001"]
    assert first["rel_path"] == "png/CXR7_IM-2252-1001.png" and first["file_format"] == "png"
    assert (first["view"], first["patient_id"], first["study_id"]) == ("PA", "CXR7", "CXR7")
    assert first["report_impression"] == "Right pleural effusion." and pd.isna(first["report_findings"])
    assert first["lbl_pleural_effusion"] == 1.0 and np.isnan(first["lbl_no_finding"])
    assert first["spacing_hint_mm"] == pytest.approx(0.143 * 2048 / 512)
    assert df.loc["CXR7_IM-2252-2001", "view"] == "LATERAL"  # from the t-SNE table when the header has none
    assert df.loc["CXR7_IM-2252-2001", "spacing_hint_mm"] == pytest.approx(0.15 * 2500 / 500)
    assert df.loc["CXR7_IM-2252-3001", "reject_reason"] == "missing_file"
    assert df.loc["CXR8_IM-0001-1001", "reject_reason"] == "missing_metadata"
