"""The rule-based report labeler on hand-written sentences, its pre-filter, and its use in unification."""

import re

import numpy as np
import pandas as pd
import pytest

from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS
from cxrgen.stages.unify_store import unify
from cxrgen.text import labeler
from cxrgen.text.labeler import label_frame, label_report, label_reports, split_sentences

NAN = "blank"


def said(text: str, impression: str | None = None) -> dict[str, float]:
    """Non-blank labels of a report."""
    return {k: v for k, v in label_report(text, impression).items() if v == v}


@pytest.mark.parametrize(("text", "expected"), [
    # negation, including coordinated lists under one cue
    ("No pneumothorax or effusion.", {"Pneumothorax": 0, "Pleural Effusion": 0, "No Finding": 1}),
    ("No focal consolidation, pleural effusion, or pneumothorax identified.",
     {"Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0, "No Finding": 1}),
    ("There is no evidence of pneumonia.", {"Pneumonia": 0, "No Finding": 1}),
    ("The lungs are free of focal airspace disease.", {"Lung Opacity": 0, "No Finding": 1}),
    ("Pneumothorax is not seen.", {"Pneumothorax": 0, "No Finding": 1}),
    ("The right effusion has resolved.", {"Pleural Effusion": 0, "No Finding": 1}),
    ("No focal air space opacity to suggest a pneumonia.", {"Lung Opacity": 0, "Pneumonia": 0, "No Finding": 1}),
    # normal statements
    ("Heart size is normal.", {"Cardiomegaly": 0, "No Finding": 1}),
    ("The heart is not enlarged.", {"Cardiomegaly": 0, "No Finding": 1}),
    ("Normal heart size.", {"Cardiomegaly": 0, "No Finding": 1}),
    ("The heart and mediastinum are within normal limits.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, "No Finding": 1}),
    ("The costophrenic angles are sharp.", {"Pleural Effusion": 0, "No Finding": 1}),
    # uncertainty
    ("Pneumonia cannot be excluded.", {"Pneumonia": -1}),
    ("Cannot exclude a small left pleural effusion.", {"Pleural Effusion": -1}),
    ("Left basilar opacity may represent atelectasis.", {"Lung Opacity": 1, "Atelectasis": -1}),
    ("Possible small left effusion, no pneumothorax.", {"Pleural Effusion": -1, "Pneumothorax": 0}),
    ("Atelectasis versus pneumonia in the right base.", {"Atelectasis": -1, "Pneumonia": -1}),
    ("Right basilar atelectasis or consolidation.", {"Atelectasis": -1, "Consolidation": -1}),
    ("Heart size is at the upper limits of normal.", {"Cardiomegaly": -1}),
    ("Findings suspicious for pulmonary edema.", {"Edema": -1}),
    # positives, several per report, scope ends at "but"
    ("Mild cardiomegaly. Small bilateral pleural effusions.", {"Cardiomegaly": 1, "Pleural Effusion": 1}),
    ("There is no pneumothorax, but there is a small right effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
    ("No acute abnormality other than mild cardiomegaly.", {"Cardiomegaly": 1}),
    ("No change in the left pleural effusion.", {"Pleural Effusion": 1}),
    ("Enlarged cardiac silhouette with pulmonary vascular congestion.", {"Cardiomegaly": 1, "Edema": 1}),
    ("Healed left rib fractures. Right PICC line tip in the SVC.", {"Fracture": 1, "Support Devices": 1}),
    ("Widened mediastinum.", {"Enlarged Cardiomediastinum": 1}),
    ("Calcified pleural plaques.", {"Pleural Other": 1}),
    ("A 2 cm nodule in the left upper lobe.", {"Lung Lesion": 1}),
    # Support Devices alone leaves No Finding positive; devices removed are negative
    ("Endotracheal tube in good position. Lungs are clear.", {"Support Devices": 1, "No Finding": 1}),
    ("The endotracheal tube has been removed.", {"Support Devices": 0, "No Finding": 1}),
    # de-identification tokens do not break anything
    ("The heart, pulmonary XXXX and mediastinum are within normal limits. No pleural effusion.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, "Pleural Effusion": 0, "No Finding": 1}),
])
def test_hand_written_sentences(text, expected):
    assert said(text) == {k: float(v) for k, v in expected.items()}


def test_pericardial_effusion_is_not_pleural():
    assert "Pleural Effusion" not in said("Small pericardial effusion.")


def test_uncertain_finding_blocks_no_finding_and_positive_beats_negative():
    assert "No Finding" not in said("Possible right lower lobe pneumonia.")
    # report level: a positive mention anywhere wins over a negative one elsewhere
    assert said("No pleural effusion on the left. Small right pleural effusion.")["Pleural Effusion"] == 1.0


def test_findings_and_impression_are_combined_and_empty_reports_are_blank():
    labels = said("Heart size is normal.", "Small left pleural effusion.")
    assert labels == {"Cardiomegaly": 0.0, "Pleural Effusion": 1.0}
    assert said(None, None) == {} and said("", "  ") == {}


def test_sentence_split_keeps_decimals():
    assert split_sentences("A 1.5 cm nodule.  No effusion.\nClear lungs") == ["a 1.5 cm nodule", "no effusion",
                                                                               "clear lungs"]


def test_label_reports_shape_values_and_cache():
    out = label_reports(["Cardiomegaly.", None, "Cardiomegaly."], ["", None, ""])
    assert out.shape == (3, len(CHEXPERT_LABELS)) and out.dtype == np.float32
    assert np.isnan(out[1]).all()
    assert np.array_equal(out[0], out[2], equal_nan=True)
    assert set(np.unique(out[~np.isnan(out)])) <= {1.0, 0.0, -1.0}


def test_label_frame_columns():
    frame = pd.DataFrame({"report_findings": ["No effusion.", None], "report_impression": [None, "Pneumothorax."]},
                         index=[5, 7])
    out = label_frame(frame)
    assert list(out.columns) == list(LABEL_COLUMNS) and list(out.index) == [5, 7]
    assert out.loc[5, "lbl_pleural_effusion"] == 0.0 and out.loc[7, "lbl_pneumothorax"] == 1.0


def test_triggers_cover_every_mention_pattern_on_the_iu_reports():
    """The substring pre-filter must never hide a match: on all IU report sentences, every mention pattern that
    matches does so in a sentence holding one of its label's trigger strings."""
    from cxrgen.text.evaluate import iuxray_reports

    reports = iuxray_reports()
    sentences = {s for f, i in zip(reports["findings"], reports["impression"], strict=True)
                 for s in split_sentences(" ".join(t for t in (f, i) if isinstance(t, str)))}
    assert len(sentences) > 5000
    for label, pattern in labeler._COMPILED_MENTIONS.items():
        for sentence in sentences:
            if pattern.search(sentence):
                assert any(t in sentence for t in labeler.TRIGGERS[label]), (label, sentence)


def test_iu_reports_precision_recall_floor():
    """Regression floor on the real IU-Xray reports vs their MeSH terms (measured values are in the labeler report;
    these bounds are well below them)."""
    from cxrgen.text.evaluate import iuxray_reports, mesh_table

    reports = iuxray_reports()
    labels = label_reports(reports["findings"].tolist(), reports["impression"].tolist())
    table = mesh_table(labels, reports[[f"mesh_{c}" for c in LABEL_COLUMNS]].to_numpy(np.float32)).set_index("label")
    for label in ("Cardiomegaly", "Lung Opacity", "Atelectasis", "Pleural Effusion", "Support Devices"):
        assert table.loc[label, "precision"] > 0.85 and table.loc[label, "recall"] > 0.8, table.loc[label]


def test_unify_labels_labeler_sources_and_marks_them(tmp_path):
    rows = []
    for i, (source, findings) in enumerate([("iuxray", "Mild cardiomegaly. No pleural effusion."),
                                            ("iuxray", None), ("nih", None)]):
        rows.append({"image_id": f"{source}-{i}", "source": source, "patient_pid": f"p{i}", "official_split": None,
                     "content_sha256": str(i), "shard": 0, "report_findings": findings, "report_impression": None})
    part = pd.DataFrame(rows)
    for col in LABEL_COLUMNS:
        part["raw_" + col] = np.nan
    part.loc[0, "raw_lbl_fracture"] = 1.0  # a dataset (MeSH) label that the labeler replaces
    part.loc[2, "raw_lbl_atelectasis"] = 1.0  # NIH keeps its own labels
    part.to_parquet(tmp_path / "i.parquet")
    pd.DataFrame(columns=["image_id", "source", "rel_path", "shard", "reason", "detail"]).to_parquet(
        tmp_path / "r.parquet")
    index, _, _ = unify([tmp_path / "i.parquet"], [tmp_path / "r.parquet"],
                        label_policy={"uncertain": "ignore", "blank": "ignore"}, val_fraction=0.1, test_fraction=0.1,
                        source_priority=["nih", "iuxray"], seed=0, labeler_sources=["iuxray"])
    index = index.set_index("image_id")
    assert index["label_source"].to_dict() == {"iuxray-0": "labeler", "iuxray-1": "labeler", "nih-2": "dataset"}
    assert index.loc["iuxray-0", "lbl_cardiomegaly"] == 1.0 and index.loc["iuxray-0", "lbl_pleural_effusion"] == 0.0
    assert np.isnan(index.loc["iuxray-0", "lbl_fracture"])
    assert index.loc["iuxray-1", list(LABEL_COLUMNS)].isna().all()
    assert index.loc["nih-2", "lbl_atelectasis"] == 1.0
    # without labeler sources every row keeps its dataset labels
    plain, _, _ = unify([tmp_path / "i.parquet"], [tmp_path / "r.parquet"],
                        label_policy={"uncertain": "ignore", "blank": "ignore"}, val_fraction=0.1, test_fraction=0.1,
                        source_priority=["nih", "iuxray"], seed=0)
    assert set(plain["label_source"]) == {"dataset"}
    assert plain.set_index("image_id").loc["iuxray-0", "lbl_fracture"] == 1.0


def test_phrase_lists_are_valid_regexes_with_word_starts():
    for label, patterns in labeler.MENTIONS.items():
        assert label in CHEXPERT_LABELS
        for p in patterns:
            re.compile(p)
