"""Rule evaluate_labeler on a small unified index: both tables in the CSV, the fragment's counts, the agreement with
the (demo) MIMIC labels, and the count of machine-labelled index rows."""

import numpy as np
import pandas as pd

from cxrgen.labels import LABEL_COLUMNS
from cxrgen.stages.evaluate_labeler import evaluate_labeler


def test_labeler_fragment_and_tables(tmp_path):
    rows = []
    for k, (source, label_source, findings, cardiomegaly) in enumerate([
            ("mimic", "dataset", "The heart is enlarged.", 1.0),
            ("mimic", "dataset", "No cardiomegaly.", 0.0),
            ("mimic", "dataset", None, np.nan),  # no report: left out
            ("iuxray", "labeler", "The heart is enlarged.", 1.0)]):
        raw = dict.fromkeys(("raw_" + c for c in LABEL_COLUMNS), np.nan)
        raw["raw_lbl_cardiomegaly"] = cardiomegaly
        rows.append({"source": source, "label_source": label_source, "study_pid": f"s{k}",
                     "report_findings": findings, "report_impression": None, **raw})
    pd.DataFrame(rows).to_parquet(tmp_path / "index.parquet")
    summary = evaluate_labeler(tmp_path / "index.parquet", tmp_path / "labeler/labeler.md",
                               tmp_path / "labeler/labeler.csv")
    assert summary["mimic_studies"] == 2 and summary["labeler_rows_in_index"] == 1
    assert summary["iuxray_reports"] > 3000
    tables = pd.read_csv(tmp_path / "labeler/labeler.csv")
    assert tables.groupby("table").size().to_dict() == {"demo_mimic": 14, "iuxray_mesh": 14}
    cardio = tables[(tables["table"] == "demo_mimic") & (tables["label"] == "Cardiomegaly")].iloc[0]
    assert (cardio["reference_positive"], cardio["reference_negative"], cardio["agreement_on_reference"]) == (1, 1, 1.0)
    text = (tmp_path / "labeler/labeler.md").read_text()
    assert f"— {summary['iuxray_reports']} reports with text" in text and "— 2 MIMIC studies" in text
    assert "| Cardiomegaly | 1 | 1 | 0 | 1 | 1.00 | 0 | 1.00 | 1.00 |" in text
    assert "1 images carry labeler labels" in text
