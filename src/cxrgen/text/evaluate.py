"""Measurements of the report labeler (rule ``evaluate_labeler``).

(a) **IU-Xray MeSH**: all report XMLs shipped in torchxrayvision (read at run time), labeler output on FINDINGS +
IMPRESSION vs the MeSH major terms mapped by :func:`cxrgen.sources.iuxray.mesh_to_chexpert`. MeSH indexing has
positives only, so per class precision and recall of the labeler's positives are measured (and recall when uncertain
counts as positive). "No Finding" is compared with the MeSH term "normal"; the labeler's No Finding follows
CheXpert's definition (none of the 12 pathologies), which ignores findings outside the 14 observations (granulomas,
spine changes, emphysema …) that keep MeSH from saying "normal", so its precision there is low by definition.

(b) **Demo MIMIC-style labels**: the ``mimic`` rows of the unified index (one report per study) vs their raw CheXpert
CSV labels (1/0/-1/blank). Caveat printed in the report: the demo MIMIC corpus is built from IU reports and its CSV
labels are MeSH terms plus simple negation/uncertainty cues (:func:`cxrgen.demo.layouts.mimic.report_labels`), not
the CheXpert labeler's output on real MIMIC-CXR reports.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS, NEGATIVE, POSITIVE, UNCERTAIN
from cxrgen.text.labeler import label_reports


def iuxray_reports() -> pd.DataFrame:
    """Every IU-Xray report with text: findings, impression and the 14 MeSH-derived labels (1 or NaN)."""
    from cxrgen.demo.layouts.iuxray import read_reports
    from cxrgen.sources.iuxray import mesh_to_chexpert, parse_report_xml

    rows = []
    for name, data in read_reports().items():
        rep = parse_report_xml(data)
        if not (rep["findings"] or rep["impression"]):
            continue
        mesh = mesh_to_chexpert(rep["mesh_major"])
        rows.append({"report": Path(name).stem, "findings": rep["findings"], "impression": rep["impression"],
                     **{f"mesh_{c}": mesh[k] for k, c in zip(CHEXPERT_LABELS, LABEL_COLUMNS, strict=True)}})
    return pd.DataFrame(rows)


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def mesh_table(labels: np.ndarray, mesh: np.ndarray) -> pd.DataFrame:
    """Per class: MeSH positives, labeler positives/uncertain, precision, recall, recall counting uncertain, F1."""
    rows = []
    for j, name in enumerate(CHEXPERT_LABELS):
        ref = mesh[:, j] == POSITIVE
        pos, unc = labels[:, j] == POSITIVE, labels[:, j] == UNCERTAIN
        tp = int((ref & pos).sum())
        p, r = _ratio(tp, int(pos.sum())), _ratio(tp, int(ref.sum()))
        rows.append({"label": name, "mesh_positive": int(ref.sum()), "labeler_positive": int(pos.sum()),
                     "labeler_uncertain": int(unc.sum()), "labeler_negative_on_mesh_positive": int((ref & (
                         labels[:, j] == NEGATIVE)).sum()),
                     "precision": p, "recall": r, "recall_incl_uncertain": _ratio(int((ref & (pos | unc)).sum()),
                                                                                   int(ref.sum())),
                     "f1": 2 * p * r / (p + r) if p == p and r == r and p + r > 0 else float("nan")})
    return pd.DataFrame(rows)


def agreement_table(labels: np.ndarray, reference: np.ndarray) -> pd.DataFrame:
    """Per class agreement of two raw-label matrices (1/0/-1/NaN): exact agreement where the reference says something
    (1, 0 or -1), how often the labeler says something where the reference is blank, and positive precision/recall."""
    rows = []
    for j, name in enumerate(CHEXPERT_LABELS):
        a = np.nan_to_num(labels[:, j], nan=9.0)
        b = np.nan_to_num(reference[:, j], nan=9.0)
        said = b != 9.0
        tp = int(((a == 1) & (b == 1)).sum())
        rows.append({"label": name, "reference_positive": int((b == 1).sum()), "reference_negative": int((b == 0).sum()),
                     "reference_uncertain": int((b == -1).sum()), "labeler_positive": int((a == 1).sum()),
                     "agreement_on_reference": _ratio(int((a == b)[said].sum()), int(said.sum())),
                     "labeler_only": int(((a != 9.0) & ~said).sum()),
                     "precision": _ratio(tp, int((a == 1).sum())), "recall": _ratio(tp, int((b == 1).sum()))})
    return pd.DataFrame(rows)


def mimic_rows(index: pd.DataFrame) -> pd.DataFrame:
    """One row per MIMIC study of the unified index (its report and raw dataset labels)."""
    rows = index[(index["source"] == "mimic")]
    if "label_source" in rows:
        rows = rows[rows["label_source"] == "dataset"]
    has_text = rows["report_findings"].notna() | rows["report_impression"].notna()
    return rows[has_text].drop_duplicates("study_pid").reset_index(drop=True)


def _fmt(x: float) -> str:
    return "–" if x != x else f"{x:.2f}"


def evaluate_labeler(index_path: Path | str, out_markdown: Path | str, out_csv: Path | str) -> dict:
    """Run both measurements; write the markdown fragment and a CSV with both tables. Returns a summary dict."""
    reports = iuxray_reports()
    started = time.perf_counter()
    labels = label_reports(reports["findings"].tolist(), reports["impression"].tolist())
    seconds = time.perf_counter() - started
    mesh = reports[[f"mesh_{c}" for c in LABEL_COLUMNS]].to_numpy(dtype=np.float32)
    iu = mesh_table(labels, mesh)

    index = pd.read_parquet(index_path)
    mimic = mimic_rows(index)
    if len(mimic):
        mimic_labels = label_reports(mimic["report_findings"].tolist(), mimic["report_impression"].tolist())
        reference = mimic[["raw_" + c for c in LABEL_COLUMNS]].to_numpy(dtype=np.float32)
        agree = agreement_table(mimic_labels, reference)
    else:
        agree = agreement_table(np.empty((0, len(LABEL_COLUMNS))), np.empty((0, len(LABEL_COLUMNS))))
    machine = int((index.get("label_source", pd.Series(dtype=str)) == "labeler").sum())

    Path(out_markdown).parent.mkdir(parents=True, exist_ok=True)
    pd.concat([iu.assign(table="iuxray_mesh"), agree.assign(table="demo_mimic")], ignore_index=True).to_csv(
        out_csv, index=False)
    pathologies = iu[~iu["label"].isin(["No Finding", "Enlarged Cardiomediastinum"])]
    lines = [
        "## Report labeler (rule-based, offline)", "",
        "CheXpert-style: 14 observations, positive / negative / uncertain per sentence and clause, nearest negation or "
        "uncertainty cue decides, report level positive > uncertain > negative, No Finding when no pathology is "
        "positive or uncertain (`cxrgen.text.labeler`; phrase and cue lists are this project's own). No maintained "
        "offline package exists on PyPI: `radlabels` 0.2.0 runs RadGraph-XL (weights from the Hugging Face hub at run "
        "time) and pins torch < 2.5, so it cannot run here.", "",
        f"**(a) IU-Xray MeSH terms** — {len(reports)} reports with text from torchxrayvision's `NLMCXR_reports.tgz`, "
        f"labelled in {seconds:.1f} s. Reference: MeSH major terms mapped to the 14 labels (positives only). Over the "
        f"12 pathology/device classes with MeSH support (all but No Finding and Enlarged Cardiomediastinum) the median "
        f"precision is {pathologies['precision'].median():.2f} and the median recall "
        f"{pathologies['recall'].median():.2f}.", "",
        "| label | MeSH + | labeler + | labeler ? | precision | recall | recall (+ or ?) | F1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in iu.itertuples(index=False):
        lines.append(f"| {r.label} | {r.mesh_positive} | {r.labeler_positive} | {r.labeler_uncertain} | "
                     f"{_fmt(r.precision)} | {_fmt(r.recall)} | {_fmt(r.recall_incl_uncertain)} | {_fmt(r.f1)} |")
    lines += [
        "", "No Finding: the MeSH reference is the term \"normal\"; CheXpert's No Finding also holds for reports whose "
        "only findings lie outside the 14 observations (granulomas, degenerative spine, emphysema, aortic changes), "
        "hence the low precision. Enlarged Cardiomediastinum: the MeSH mapping only counts Mediastinum/enlarged|widened, "
        "while reports say \"prominent mediastinum\" (indexed Mediastinum/prominent), and indexers file \"enlarged "
        "cardiomediastinal silhouette\" as Cardiac Shadow/enlarged.", "",
        f"**(b) Demo MIMIC-style labels** — {len(mimic)} MIMIC studies of the unified index (one report per study) "
        "vs their CheXpert CSV labels. Caveat: the demo MIMIC corpus reuses IU reports and its CSV labels are MeSH terms "
        "plus negation/uncertainty cue words for six observations, not real MIMIC-CXR labels. *Agreement* = exact "
        "match (1/0/-1) on the studies where the reference says something; *labeler only* = studies where the "
        "reference is blank but the labeler is not (mostly negatives from \"heart size is normal\"-type statements, "
        "which the cue-word reference never writes).", "",
        "| label | ref + | ref 0 | ref ? | labeler + | agreement | labeler only | precision | recall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in agree.itertuples(index=False):
        lines.append(f"| {r.label} | {r.reference_positive} | {r.reference_negative} | {r.reference_uncertain} | "
                     f"{r.labeler_positive} | {_fmt(r.agreement_on_reference)} | {r.labeler_only} | "
                     f"{_fmt(r.precision)} | {_fmt(r.recall)} |")
    lines += ["", f"In the unified index, {machine} images carry labeler labels (`label_source = labeler`).", ""]
    Path(out_markdown).write_text("\n".join(lines))
    return {"iuxray_reports": len(reports), "seconds": round(seconds, 2), "mimic_studies": len(mimic),
            "labeler_rows_in_index": machine}
