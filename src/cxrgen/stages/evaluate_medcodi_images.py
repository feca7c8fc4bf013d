"""Stage ``evaluate_medcodi_images``: MedCoDi-M / XGeM Tables 2-3 for one view LDM — FID/KID per direction against
the real images of that view, and (frontal) the classifier's AUROC/F1 of the generated images against the prompt
study's labels next to the real "Real Data" row (library: :mod:`cxrgen.medcodi.image_evaluation`), plus a sample grid
(rows = directions)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.evaluate import metrics as M
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.medcodi.generation import load_generated
from cxrgen.medcodi.image_evaluation import (
    TABLE3_FINDINGS,
    as_float_images,
    classification_scores,
    distribution_scores,
    finding_columns,
)
from cxrgen.train.job import tracked_job, write_json

log = logging.getLogger(__name__)

GRID_COLUMNS = 6


def _real_images(studies: pd.DataFrame, index_path: Path | str, view: str, split: str, resolution: int):
    """(images [n, 1, R, R] in [0, 1], their study rows) of the ``split`` studies' ``view`` images, study order."""
    import torch

    from cxrgen.evaluate.classifier import LabelledImages, with_store_root

    rows = studies[(studies["split"] == split) & studies[f"{view}_image_id"].notna()].sort_values("study_pid")
    index = pd.read_parquet(index_path).set_index("image_id")
    store = with_store_root(index.loc[rows[f"{view}_image_id"].tolist()].reset_index(), Path(index_path).parent)
    data = LabelledImages(store, resolution)
    images = torch.stack([data.image(i) for i in range(len(data))]) if len(data) else torch.zeros(0, 1, resolution,
                                                                                                  resolution)
    return images, rows.reset_index(drop=True)


def _features(backbone, images, batch_size: int) -> np.ndarray:
    parts = [backbone.features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _probs(evaluator, images) -> np.ndarray:
    return evaluator.predict_proba(images).numpy().astype(np.float64)


def _labels(studies: pd.DataFrame, study_pids: list[str]) -> np.ndarray:
    return studies.set_index("study_pid").loc[study_pids, list(LABEL_COLUMNS)].to_numpy(np.float64)


def evaluate_medcodi_images(*, generated: Path | str, studies: Path | str, index_path: Path | str,
                            evaluator_dir: Path | str, cfg: dict, seed: int, out_json: Path | str,
                            out_grid: Path | str, tracking_json: Path | str | None = None,
                            job_name: str = "evaluate_medcodi_images") -> dict:
    """``cfg`` = section ``evaluation`` narrowed to ``backbones``, ``batch_size``, ``bootstrap``,
    ``distribution.kid``, ``distribution.bootstrap_resamples`` and ``fidelity`` (F1 threshold rule). ``generated`` =
    the npz of rule generate_medcodi_images; real images come from the store (``index_path``) at the generated
    images' resolution. Writes ``out_json`` (the contract's layout) and ``out_grid``; returns the payload."""
    import torch

    from cxrgen.evaluate.backbones import load_backbones
    from cxrgen.evaluate.classifier import load_evaluator

    found, meta = load_generated(generated)
    view, prompting, split = meta["view"], meta["prompting"], meta["split"]
    resolution = next((int(g.images.shape[-1]) for g in found.values() if len(g.images)), None)
    if resolution is None:
        return _nothing_generated(found, view, prompting, split, out_json, out_grid)
    table = pd.read_parquet(studies)
    boot, dist, fidelity = cfg["bootstrap"], cfg["distribution"], cfg["fidelity"]
    resamples, confidence = int(boot["resamples"]), float(boot["confidence"])
    batch_size = int(cfg["batch_size"])
    params = {"evaluation": cfg, "seed": seed, "view": view, "prompting": prompting, "split": split}
    with tracked_job(tracking_json, job_name, params=params,
                     tags={"cxrgen.stage": f"medcodi:evaluate_images:{view}-{prompting}"}) as job:
        started = time.perf_counter()
        evaluator = load_evaluator(evaluator_dir, device="cuda" if torch.cuda.is_available() else "cpu")
        backbones, skipped = load_backbones(cfg["backbones"]["use"], cfg["backbones"], evaluator=evaluator)
        real, real_rows = _real_images(table, index_path, view, split, resolution)
        images = {d: as_float_images(g.images) for d, g in found.items()}
        reference = {b.name: _features(b, real, batch_size) for b in backbones}
        directions = {}
        for k, (direction, item) in enumerate(found.items()):
            entry = {"n": len(item.study_pids), "fid": {}, "kid": {}, "distribution_detail": {}}
            for backbone in backbones:
                scores = distribution_scores(_features(backbone, images[direction], batch_size),
                                             reference[backbone.name], kid_cfg=dist["kid"],
                                             resamples=int(dist["bootstrap_resamples"]), confidence=confidence,
                                             seed=seed + 101 * k)
                if scores is not None:
                    entry["fid"][backbone.name], entry["kid"][backbone.name] = scores["fid"], scores["kid"]
                    entry["distribution_detail"][backbone.name] = scores["detail"]
            directions[direction] = entry

        payload = {"view": view, "prompting": prompting, "split": split, "directions": directions,
                   "n_real": len(real_rows), "resolution": resolution,
                   "backbones": {b.name: b.description for b in backbones},
                   "skipped_backbones": [s.line() for s in skipped],
                   "sampling": {k: meta[k] for k in ("steps", "guidance", "eta")},
                   "protocol": {
                       "fid": f"each direction's generated images vs the {len(real_rows)} real {split} {view} images "
                              "of the study table (store images at the generated resolution); "
                              + M.describe_bootstrap(int(dist["bootstrap_resamples"]), confidence)
                              + ", draws shifted by their mean excess (harness: cxrgen.evaluate.distribution)",
                       "seeds": "per image: sha256(run seed, study_pid, direction)"}}
        if view == "frontal":
            per_direction, extra = _classification(found, images, table, real, real_rows, index_path, resolution,
                                                   evaluator, fidelity, resamples, confidence, seed)
            for direction, scores in per_direction.items():
                directions[direction]["classification"] = {k: scores[k] for k in ("auroc", "f1")}
                directions[direction]["classification_detail"] = scores["detail"]
            payload.update(extra)
        payload["seconds"] = time.perf_counter() - started
        payload["mlflow_run_id"] = job.run_id
        out_json, out_grid = Path(out_json), Path(out_grid)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        staged_grid = out_grid.with_name(out_grid.stem + ".tmp.png")
        _grid(images, real, view, staged_grid)
        staged_json = out_json.with_name(out_json.name + ".tmp")
        write_json(staged_json, payload)
        job.log_metrics(_headline(payload))
        job.publish(staged_grid, out_grid)
        job.publish(staged_json, out_json, artifacts=[str(out_json), str(out_grid)])
    log.info("evaluated %s-%s in %.1f s", view, prompting, payload["seconds"])
    return payload


def _nothing_generated(found: dict, view: str, prompting: str, split: str, out_json: Path | str,
                       out_grid: Path | str) -> dict:
    """No study of ``split`` has a direction's inputs and target (a small corpus may have no {split} lateral): every
    direction is reported with n = 0, so the report prints "–" instead of the DAG failing."""
    from cxrgen.report.medcodi import missing_figure

    note = f"no {split} study has the inputs and the real {view} image of any direction"
    log.warning("%s-%s: %s", view, prompting, note)
    payload = {"view": view, "prompting": prompting, "split": split, "note": note,
               "directions": {d: {"n": 0} for d in found}}
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    missing_figure(out_grid, f"{view}-{prompting} samples ({note})")
    write_json(out_json, payload)
    return payload


def _classification(found, images, table, real, real_rows, index_path, resolution, evaluator, fidelity: dict,
                    resamples: int, confidence: float, seed: int) -> dict:
    """Table 3: thresholds on the real val frontal images, then the scores per direction and the extra payload keys
    (the real test row, thresholds, protocol)."""
    val, val_rows = _real_images(table, index_path, "frontal", "val", resolution)
    val_labels = val_rows[list(LABEL_COLUMNS)].to_numpy(np.float64)
    thresholds = M.choose_thresholds(val_labels, _probs(evaluator, val), fidelity["threshold_rule"],
                                     float(fidelity["threshold"]))
    common = {"resamples": resamples, "confidence": confidence, "min_per_class": int(fidelity["min_per_class"])}
    out = {}
    for k, (direction, item) in enumerate(found.items()):
        out[direction] = classification_scores(_labels(table, item.study_pids), _probs(evaluator, images[direction]),
                                               thresholds, seed=seed + 7 * k, **common)
    real_scores = classification_scores(real_rows[list(LABEL_COLUMNS)].to_numpy(np.float64),
                                         _probs(evaluator, real), thresholds, seed=seed + 997, **common)
    rule = ("per finding, the F1-maximising threshold of the evaluator on the study table's real val frontal images "
            f"(n={len(val_rows)}; fixed {fidelity['threshold']} where val lacks a class)"
            if fidelity["threshold_rule"] == "val_max_f1" else f"fixed {fidelity['threshold']}")
    columns = finding_columns()
    return out, {
            "real": {"n": len(real_rows), "classification": {k: real_scores[k] for k in ("auroc", "f1")},
                     "classification_detail": real_scores["detail"]},
            "thresholds": dict(zip(TABLE3_FINDINGS, np.asarray(thresholds)[columns].tolist(), strict=True)),
            "classification_protocol": {
                "judge": "the in-domain evaluator (rule train_evaluator; the paper uses XRV-DenseNet)",
                "labels": "generated: the labels of the study whose inputs prompted the image; real: the study's own",
                "findings": list(TABLE3_FINDINGS), "F1 threshold": rule,
                "averages": "micro: pooled (image, finding) pairs; macro: mean over scored findings; weighted: by "
                            f"positives; a finding needs {fidelity['min_per_class']} positive and negative labels, "
                            "else null"}}


def _grid(images: dict, real, view: str, path: Path) -> None:
    """Rows: the real images of the view, then each direction; the first GRID_COLUMNS images of each."""
    import torch

    from cxrgen.report.figures import save_grid

    rows = {f"real {view}": real, **images}
    tiles, names = [], []
    for name, batch in rows.items():
        chosen = batch[:GRID_COLUMNS]
        tiles.append(torch.cat([chosen, torch.zeros((GRID_COLUMNS - len(chosen), *real.shape[1:]))]))
        names.append(f"{name}\n(n={len(batch)})")
    save_grid(torch.cat(tiles) * 2.0 - 1.0, names, GRID_COLUMNS, path)


def _headline(payload: dict) -> dict:
    out = {"seconds": payload["seconds"]}
    for direction, entry in payload["directions"].items():
        out[f"n/{direction}"] = entry["n"]
        for backbone, value in entry["fid"].items():
            out[f"fid/{backbone}/{direction}"] = value["value"]
        if "classification" in entry:
            out[f"auroc_macro/{direction}"] = entry["classification"]["auroc"]["macro"]
    return {k: v for k, v in out.items() if v is not None}
