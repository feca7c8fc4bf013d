"""MedCoDi-M / XGeM utility experiments per view (arXiv 2501.04614 §4.5; issue 12 "Also"): the downstream harness'
anonymisation, imbalance and scarcity experiments (:mod:`cxrgen.evaluate.experiments`) run separately for frontal and
for lateral films, with MedCoDi-M's multi-prompt view LDM as the synthetic source.

The synthetic pool of a view = one twin per sampled train-split study that has an image of that view and a report:
sampled from the report prompt alone (direction ``T->F`` / ``T->L``; condition = :func:`~cxrgen.medcodi.prompting.
combine` of the report embedding), carrying the study's labels and, as ``source_image_id``, the study's real image of
that view (so the anonymisation experiment pairs each twin with its real counterpart and the leakage check sees the
prompt's split). The real arms, the validation split and the test split hold real images of that view only.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxrgen.labels import LABEL_COLUMNS
from cxrgen.medcodi.studies import FRONTAL_VIEWS, LATERAL_VIEWS

if TYPE_CHECKING:
    import torch

# torch / diffusers are imported where sampling needs them: the table rule (evaluate_medcodi_utility) runs without them
VIEWS = ("frontal", "lateral")  # as cxrgen.medcodi.prompting.VIEWS

STORE_VIEWS = {"frontal": list(FRONTAL_VIEWS), "lateral": list(LATERAL_VIEWS)}
DIRECTIONS = {"frontal": "T->F", "lateral": "T->L"}  # report impression -> the view (contract's direction keys)
POOL_SET = "train_twins"  # the harness' prompt-set name of synthetic copies of training images


def _check_view(view: str) -> None:
    if view not in VIEWS:
        raise ValueError(f"medcodi view = {view!r}; allowed: {list(VIEWS)}")


def twin_seed(base_seed: int, study_pid: str, direction: str) -> int:
    """The sampling seed of one twin, derived from (config seed, study, direction) only: the same twin gets the same
    noise whatever else is sampled with it."""
    return int(zlib.crc32(f"{int(base_seed)}|{study_pid}|{direction}".encode()) & 0x7FFFFFFF)


def twin_studies(studies: pd.DataFrame, embeddings: dict[str, np.ndarray], *, view: str, splits: Sequence[str],
                 n: int | None, seed: int) -> pd.DataFrame:
    """The studies whose report prompts a twin of ``view``: split in ``splits``, an image of that view, a report
    embedding and at least one known label; ``n`` of them (None = all) drawn with ``seed`` independently of the input
    order. Sorted by study_pid, with the column ``embedding_row`` (its row in ``embeddings``)."""
    _check_view(view)
    position = {pid: i for i, pid in enumerate(embeddings["study_pids"].tolist())}
    rows = studies[studies["split"].isin(list(splits)) & studies[f"{view}_image_id"].notna()].copy()
    rows = rows[rows["study_pid"].isin(position)]
    rows["embedding_row"] = [position[p] for p in rows["study_pid"]]
    has_report = np.isfinite(embeddings["report"][rows["embedding_row"].to_numpy(np.int64)]).all(axis=1)
    has_label = rows[list(LABEL_COLUMNS)].notna().any(axis=1).to_numpy()
    rows = rows[has_report & has_label].sort_values("study_pid").reset_index(drop=True)
    if n is not None and n < len(rows):
        rng = np.random.default_rng([int(seed), zlib.crc32(f"twins:{view}".encode())])
        rows = rows.iloc[np.sort(rng.choice(len(rows), size=int(n), replace=False))].reset_index(drop=True)
    return rows


def report_conditions(rows: pd.DataFrame, embeddings: dict[str, np.ndarray]) -> torch.Tensor:
    """[B, D] conditions of ``rows`` (from :func:`twin_studies`): the report embedding alone through the multi-prompt
    combination (paper Eq. 1 with one present modality = the L2-normalised report embedding)."""
    import torch

    from cxrgen.medcodi.prompting import combine

    report = torch.from_numpy(embeddings["report"][rows["embedding_row"].to_numpy(np.int64)].astype(np.float32))
    return combine(report[:, None, :], torch.ones((len(rows), 1), dtype=torch.bool))


def twin_index_rows(rows: pd.DataFrame, real_index: pd.DataFrame, *, view: str, seeds: Sequence[int]) -> pd.DataFrame:
    """The synthetic store's index columns (without the blob columns) of the twins of ``rows``: one row each with
    the prompt study's report and labels, ``source_image_id`` = the study's real ``view`` image and ``view`` = that
    image's store view (PA/AP/LATERAL), ``split`` "synthetic", ``set`` :data:`POOL_SET`."""
    _check_view(view)
    image_ids = rows[f"{view}_image_id"].astype(str)
    store_view = dict(zip(real_index["image_id"].astype(str), real_index["view"].astype(str), strict=True))
    unknown = [i for i in image_ids if i not in store_view]
    if unknown:
        raise KeyError(f"{len(unknown)} {view} images of the study table are not in the store index, e.g. "
                       f"{unknown[:3]}; the study table must come from this store")
    direction = DIRECTIONS[view]
    out = pd.DataFrame({
        "image_id": [f"syn-medcodi-{view}-{pid}" for pid in rows["study_pid"]],
        "prompt_id": [f"{direction}:{pid}" for pid in rows["study_pid"]],
        "set": POOL_SET, "direction": direction, "prompt": rows["report"].astype(str).to_numpy(),
        "report_findings": rows["report"].astype(str).to_numpy(), "report_impression": "", "laterality": "",
        "source_image_id": image_ids.to_numpy(), "study_pid": rows["study_pid"].astype(str).to_numpy(),
        "seed": [int(s) for s in seeds], "split": "synthetic", "source": "synthetic",
        "view": [store_view[i] for i in image_ids]})
    for column in LABEL_COLUMNS:
        out[column] = rows[column].to_numpy(np.float32)
    return out


def view_downstream_cfg(view: str, experiment: str, utility_cfg: dict, experiment_cfg: dict) -> dict:
    """The ``downstream`` section that :func:`cxrgen.stages.run_downstream.run_downstream` reads, for one view:
    real train/val/test images of that view's store views, the view's twins as the pool (also for the imbalance
    experiment's minority images), the step settings of ``medcodi.utility`` (null = the evaluator's), and the
    harness' own settings of ``experiment`` (section ``downstream.<experiment>``)."""
    _check_view(view)
    experiment_cfg = dict(experiment_cfg)
    if experiment == "imbalance":
        experiment_cfg["pool_sets"] = [POOL_SET]
    return {"variant": f"medcodi-m:{view}-multi", "views": STORE_VIEWS[view], "pool_sets": [POOL_SET],
            "max_steps": utility_cfg["max_steps"], "eval_every": utility_cfg["eval_every"],
            experiment: experiment_cfg}


def utility_table(view: str, results: list[dict], summary: pd.DataFrame) -> dict:
    """The per-view JSON table (``results/medcodi/eval/utility/{view}.json``): per experiment and arm the sizes and
    mean (± 95 % t half-width over seeds, None for one seed) test AUROC/F1 of
    :func:`cxrgen.report.downstream.summarise`, with the pool and the real split sizes of that view."""
    _check_view(view)
    first = results[0]
    experiments: dict[str, dict] = {}
    for record in summary.sort_values(["experiment", "order"]).to_dict(orient="records"):
        arms = experiments.setdefault(record["experiment"], {"arms": {}})["arms"]
        arms[record["arm"]] = {k: _plain(record[k]) for k in
                               ("n_real", "n_synthetic", "seeds", "auroc_macro", "auroc_macro_ci", "auroc_micro",
                                "auroc_micro_ci", "f1_macro", "f1_macro_ci", "f1_micro", "f1_micro_ci")}
    for res in results:
        entry = experiments[res["experiment"]]
        entry.update(pool=res["pool"]["n"], n_real_train=res["n_real_train"], n_val=res["n_val"],
                     n_test=res["n_test"], task_findings=next(iter(res["arms"].values()))["task_findings"])
    return {"view": view, "direction": DIRECTIONS[view], "prompting": "multi", "store_views": first["views"],
            "resolution": first["resolution"], "classifier": first["classifier"], "experiments": experiments}


def _plain(value):
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return None if not np.isfinite(value) else float(value)
    return value
