"""MedCoDi-M / XGeM report generation from X-ray views and its evaluation (arXiv 2501.04614 §3.5, §4.2, Tables 4-5).

Directions (the contract's ASCII keys): ``F->T`` (frontal film -> report impression), ``L->T`` (lateral film),
``F+L->T`` (both films). The condition of a direction is :func:`cxrgen.medcodi.prompting.combine` of the prompt
encoders' embeddings of the TEST study's real films of that direction (the mean of the L2-normalised embeddings,
paper Eq. 1). A study counts for a direction only when it has every film of the direction and a reference report.
Each report's DDIM noise comes from its own seed, :func:`direction_seed` of (config seed, study_pid, direction), so
a report does not depend on the batch it was drawn in, nor on which other studies or directions were generated.
Both prompting modes are run on every direction: the single-prompt model (the MedCoDi ablation, trained on frontal
conditions only) still accepts any combined condition of the shared space, which is what the ablation tests.

Evaluation per direction:

* BLEU-1..4 (Table 4): corpus BLEU (:func:`cxrgen.medcodi.bleu.corpus_bleu`) of the generated reports against the
  study's reference impression.
* Labeler F1 (Table 5): the project's rule-based CheXpert-style labeler (:func:`cxrgen.text.labeler.label_reports`,
  the one rule ``evaluate_labeler`` measures) labels every generated report; F1 per label of :data:`TABLE5_LABELS`
  and micro / macro / weighted averages (:func:`cxrgen.evaluate.metrics.multilabel_scores`, the project's one
  multilabel F1: weighted = by positives) against the ground truth.

Ground truth: the same labeler's labels of the study's REFERENCE impression. The paper scores CheXpert-labeler output
on generated reports against the MIMIC-CXR test labels, which MIMIC-CXR-JPG derives by running the CheXpert labeler
on the real report; labelling the reference with the labeler that labels the generated text reproduces that setting
(the score measures agreement of findings, not the labeler's errors twice over), and it exists for every source
(IU-Xray's store labels ARE this labeler's output; the demo MIMIC labels are cue-word stand-ins). The labeler's own
ceiling is the ``reference`` row (:func:`store_row`): labeler on the real reports vs the store's dataset labels
(``label_source != labeler``); each direction's ``store`` entry scores the generated reports against those same
dataset labels (the paper's comparison, where such labels exist).

A label counts only where the ground truth is defined (paper §3.5.2): blank (not mentioned) is undefined, uncertain
follows ``label_policy.uncertain`` (``ignore`` = undefined, ``ones`` / ``zeros``). No Finding is 1 or blank by the
CheXpert construction (blank = some finding was reported), so a blank No Finding of a report with text is 0.
A generated report predicts a label when the labeler marks it positive (uncertain too under ``uncertain: ones``).
A label needs at least one positive and one negative ground truth among the scored reports to be scored; otherwise it
is ``null`` with its counts under ``support``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS, apply_label_policy
from cxrgen.medcodi.bleu import corpus_bleu
from cxrgen.medcodi.prompting import combine
from cxrgen.medcodi.text_diffusion import sample_reports, study_conditions

REPORT_DIRECTIONS: dict[str, tuple[str, ...]] = {
    "F->T": ("frontal",), "L->T": ("lateral",), "F+L->T": ("frontal", "lateral")}
TABLE5_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Lung Lesion",
    "Lung Opacity", "Pleural Effusion", "Pneumonia", "Pneumothorax", "No Finding")
GENERATED_COLUMNS = ["study_pid", "direction", "seed", "report"]
AVERAGES = ("micro", "macro", "weighted")


def direction_seed(seed: int, study_pid: str, direction: str) -> int:
    """A 63-bit sampling seed from (config seed, study_pid, direction) (sha256, stable across runs and machines)."""
    digest = hashlib.sha256(f"medcodi-report:{int(seed)}:{study_pid}:{direction}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def direction_conditions(table: pd.DataFrame, direction: str) -> tuple[pd.DataFrame, torch.Tensor]:
    """The rows of ``table`` (:func:`cxrgen.medcodi.text_diffusion.study_conditions`: columns ``frontal`` /
    ``lateral`` hold [D] embeddings, NaN where absent) that have every film of ``direction``, and their conditions
    [n, D] (:func:`cxrgen.medcodi.prompting.combine` of those films' embeddings)."""
    if direction not in REPORT_DIRECTIONS:
        raise ValueError(f"report direction = {direction!r}; allowed: {list(REPORT_DIRECTIONS)}")
    views = REPORT_DIRECTIONS[direction]
    if table.empty:
        return table.copy(), torch.zeros((0, 0))
    embeddings = torch.from_numpy(np.stack([np.stack(table[v].to_list()) for v in views], axis=1).astype(np.float32))
    present = torch.isfinite(embeddings).all(dim=-1)
    keep = present.all(dim=1)
    rows = table[keep.numpy()].reset_index(drop=True)
    return rows, combine(embeddings[keep], present[keep])


def generate_reports(*, studies: Path | str, embeddings: Path | str, model_dir: Path | str,
                     vae_dir: Path | str | None, splits: list[str], seed: int, steps: int, guidance: float,
                     eta: float, batch_size: int = 64, max_studies: int | None = None,
                     directions: tuple[str, ...] | list[str] = tuple(REPORT_DIRECTIONS)) -> pd.DataFrame:
    """Reports of the report diffusion model ``model_dir`` (rule train_report_diffusion) for every direction and
    eligible study of ``splits``: a frame with :data:`GENERATED_COLUMNS` (directions in the given order, studies by
    study_pid). ``max_studies``: at most the first N eligible studies (by pseudonymous study_pid) per direction."""
    table = study_conditions(studies, embeddings, list(splits))
    frames = []
    for direction in directions:
        rows, conditions = direction_conditions(table, direction)
        if max_studies is not None:
            rows, conditions = rows.head(int(max_studies)), conditions[:int(max_studies)]
        pids = rows["study_pid"].astype(str).tolist()
        seeds = [direction_seed(seed, pid, direction) for pid in pids]
        reports = sample_reports(model_dir, vae_dir, conditions, seeds, steps=steps, guidance=guidance, eta=eta,
                                 batch_size=batch_size) if pids else []
        frames.append(pd.DataFrame({"study_pid": pids, "direction": direction, "seed": np.asarray(seeds, np.int64),
                                    "report": reports}, columns=GENERATED_COLUMNS))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=GENERATED_COLUMNS)


# ---------------------------------------------------------------------------------------------------- evaluation


def _columns(labels: tuple[str, ...] | list[str]) -> list[int]:
    unknown = [name for name in labels if name not in CHEXPERT_LABELS]
    if unknown:
        raise ValueError(f"labels {unknown} are not CheXpert observations; allowed: {list(CHEXPERT_LABELS)}")
    return [CHEXPERT_LABELS.index(name) for name in labels]


def truth_matrix(raw: np.ndarray, labels: tuple[str, ...] | list[str], uncertain: str, has_text: np.ndarray
                 ) -> np.ndarray:
    """Ground truth [N, K] in {0, 1, NaN = undefined} from raw CheXpert-convention labels [N, 14]: blank undefined,
    uncertain per ``uncertain`` (ones | zeros | ignore); No Finding 1, else 0 where the report has text."""
    columns = _columns(labels)
    truth = apply_label_policy(np.asarray(raw, dtype=np.float32)[:, columns], uncertain=uncertain, blank="ignore")
    if "No Finding" in labels:
        k = list(labels).index("No Finding")
        values = np.asarray(raw, dtype=np.float32)[:, CHEXPERT_LABELS.index("No Finding")]
        truth[:, k] = np.where(values == 1, 1.0, np.where(np.asarray(has_text, bool), 0.0, np.nan))
    return truth


def prediction_matrix(raw: np.ndarray, labels: tuple[str, ...] | list[str], uncertain: str) -> np.ndarray:
    """Predictions [N, K] in {0, 1} from the labeler's raw labels of generated reports: positive = 1; uncertain
    counts as positive only under ``uncertain: ones``."""
    values = np.asarray(raw, dtype=np.float32)[:, _columns(labels)]
    return ((values == 1) | ((values == -1) & (uncertain == "ones"))).astype(np.float32)


def label_f1(truth: np.ndarray, predicted: np.ndarray, labels: tuple[str, ...] | list[str]) -> dict:
    """``{"labeler_f1": {label: F1 or None, micro, macro, weighted}, "support": {label: {n_pos, n_neg}}}`` over the
    defined (non-NaN) ground truth; a label without both a positive and a negative ground truth is None."""
    from cxrgen.evaluate.metrics import multilabel_scores

    scores = multilabel_scores(truth, predicted, thresholds=0.5, findings=list(labels))
    f1 = {name: (scores["per_finding"][name]["f1"] if name in scores["per_finding"] else None) for name in labels}
    f1.update({a: scores["f1"][a] for a in AVERAGES})
    support = {name: {"n_pos": int(np.sum(truth[:, k] == 1)), "n_neg": int(np.sum(truth[:, k] == 0))}
               for k, name in enumerate(labels)}
    return {"labeler_f1": f1, "support": support}


def _label(texts: list[str]) -> np.ndarray:
    from cxrgen.text.labeler import label_reports

    if not texts:
        return np.zeros((0, len(CHEXPERT_LABELS)), dtype=np.float32)
    return label_reports([None] * len(texts), list(texts))  # MedCoDi-M's text is the impression


def evaluate_direction(generated: list[str], references: list[str], labels: tuple[str, ...] | list[str],
                       uncertain: str) -> dict:
    """``{"n", "bleu": {"1".."4"}, "labeler_f1", "support"}`` of generated vs reference reports (row-aligned)."""
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated reports but {len(references)} references")
    bleu = corpus_bleu(list(generated), list(references)) if generated else {f"bleu{n}": None for n in range(1, 5)}
    has_text = np.array([bool(str(r).strip()) for r in references])
    truth = truth_matrix(_label(list(references)), labels, uncertain, has_text)
    predicted = prediction_matrix(_label(list(generated)), labels, uncertain)
    return {"n": len(generated), "bleu": {str(n): bleu[f"bleu{n}"] for n in range(1, 5)},
            **label_f1(truth, predicted, labels)}


def store_row(texts: list[str], references: list[str], store_raw: np.ndarray, labels: tuple[str, ...] | list[str],
              uncertain: str) -> dict:
    """The labeler's labels of ``texts`` scored against the store's raw labels ``store_raw`` [N, 14] of their studies
    (dataset labels only; ``references`` decide where a blank No Finding is 0), with the rules of the generated
    reports. With the real reports as ``texts`` this is the labeler's own ceiling (the ``reference`` row)."""
    has_text = np.array([bool(str(r).strip()) for r in references])
    truth = truth_matrix(store_raw, labels, uncertain, has_text)
    predicted = prediction_matrix(_label(list(texts)), labels, uncertain)
    return {"n": len(texts), **label_f1(truth, predicted, labels)}


def store_labels(index: pd.DataFrame, studies: pd.DataFrame) -> pd.DataFrame:
    """Per study of ``studies`` whose store labels do not come from the report labeler (``label_source``), the raw
    labels of its frontal image (else its lateral one; the study table's choice): index study_pid, the 14 raw columns
    in CHEXPERT_LABELS order."""
    raw_columns = ["raw_" + c for c in LABEL_COLUMNS]
    image = studies["frontal_image_id"].where(studies["frontal_image_id"].notna(), studies["lateral_image_id"])
    keyed = pd.DataFrame({"study_pid": studies["study_pid"].astype(str), "image_id": image}).dropna()
    rows = index[["image_id", "label_source", *raw_columns]].drop_duplicates("image_id")
    merged = keyed.merge(rows, on="image_id", how="inner")
    merged = merged[merged["label_source"].astype(str) != "labeler"]
    return merged.set_index("study_pid")[raw_columns]


def evaluate_reports(generated: pd.DataFrame, studies: pd.DataFrame, index: pd.DataFrame | None, *,
                     labels: tuple[str, ...] | list[str] = TABLE5_LABELS, uncertain: str = "ignore",
                     examples: int = 4) -> dict:
    """Tables 4-5 of one prompting mode: ``{"directions": {d: evaluate_direction (+ "store": store_row)},
    "reference", "examples"}``, every direction (n = 0 where none was generated). ``generated``:
    :data:`GENERATED_COLUMNS`; ``studies``: the study table (its ``report`` is the reference); ``index``: the store
    index (image_id, label_source, raw labels) for the ``store`` scores and the ``reference`` row (None: neither)."""
    missing = set(GENERATED_COLUMNS) - set(generated.columns)
    if missing:
        raise ValueError(f"generated reports lack columns {sorted(missing)}")
    reference_of = dict(zip(studies["study_pid"].astype(str), studies["report"].fillna("").astype(str), strict=True))
    unknown = sorted(set(generated["study_pid"].astype(str)) - set(reference_of))
    if unknown:
        raise ValueError(f"{len(unknown)} generated studies are not in the study table (e.g. {unknown[:3]})")
    scored = sorted(set(generated["study_pid"].astype(str)))
    store = None if index is None else store_labels(index, studies[studies["study_pid"].astype(str).isin(scored)])
    directions = {}
    for direction in REPORT_DIRECTIONS:
        part = generated[generated["direction"] == direction]
        texts, pids = part["report"].astype(str).tolist(), part["study_pid"].astype(str).tolist()
        refs = [reference_of[p] for p in pids]
        directions[direction] = evaluate_direction(texts, refs, labels, uncertain)
        if store is not None:  # the same reports against the dataset labels, where the store has them
            keep = [k for k, p in enumerate(pids) if p in store.index]
            directions[direction]["store"] = store_row(
                [texts[k] for k in keep], [refs[k] for k in keep],
                store.loc[[pids[k] for k in keep]].to_numpy(dtype=np.float32), labels, uncertain)
    result = {"labels": list(labels), "directions": directions, "reference": None, "examples": []}
    if store is not None:
        refs = [reference_of[p] for p in store.index]
        result["reference"] = {**store_row(refs, refs, store.to_numpy(dtype=np.float32), labels, uncertain),
                               "truth": "store labels of the scored studies whose label_source is not the labeler"}
    result["examples"] = example_reports(generated, reference_of, examples)
    return result


def example_reports(generated: pd.DataFrame, reference_of: dict[str, str], count: int) -> list[dict]:
    """Up to ``count`` studies (those with the most directions first, then by study_pid): the reference and the
    generated report of every direction."""
    by_study = generated.assign(study_pid=generated["study_pid"].astype(str)).groupby("study_pid")
    ranked = sorted(by_study, key=lambda item: (-len(item[1]), item[0]))[:max(0, int(count))]
    return [{"study_pid": pid, "reference": reference_of[pid],
             "generated": dict(zip(rows["direction"], rows["report"].astype(str), strict=True))}
            for pid, rows in ranked]
