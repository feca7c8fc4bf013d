"""Stages of the metric harness (rules in ``workflow/rules/evaluate_metrics.smk``).

* ``extract_real_features`` / ``extract_generated_features``: image sets and their features (every usable backbone)
  and evaluator probabilities, once per real store and once per generated variant (:mod:`cxrgen.evaluate.features`);
* ``evaluate_distribution``: FID/KID per backbone with the real-vs-real floor (:mod:`cxrgen.evaluate.distribution`);
* ``evaluate_fidelity``: conditional fidelity, MedCoDi-M Table 3 layout, real reference row, sample grid per finding;
* ``evaluate_memorisation``: nearest training images, re-identification share, closest pairs, diversity;
* ``evaluate_reconstruction``: the Cheff Table 2 chains;
* ``write_summary``: ``results/summary.md`` from markdown fragments.

Each metric stage writes ``<name>.json`` (numbers + protocol), a self-contained HTML table page and a markdown
fragment, figures (PNG), and logs its headline numbers to an MLflow child run.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from cxrgen.evaluate import metrics as M  # noqa: E402
from cxrgen.evaluate.backbones import Skipped, load_backbones  # noqa: E402
from cxrgen.evaluate.distribution import BIAS_SHIFT, distribution_metrics  # noqa: E402
from cxrgen.evaluate.features import (  # noqa: E402
    FeatureSet,
    extract,
    iter_images,
    load_feature_sets,
    real_sets,
    sample_rows,
    save_feature_sets,
    with_root,
)
from cxrgen.evaluate.tables import Fragment, fmt, with_ci  # noqa: E402
from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS  # noqa: E402
from cxrgen.train.outputs import publish_dir, staging_dir  # noqa: E402

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------- helpers


def _json_default(value):
    if isinstance(value, np.integer | np.floating):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value)}")


def _write_json(path: Path | str, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=1, default=_json_default, allow_nan=True))


def _job_run(tracking_json, job_name: str, params: dict, stage: str):
    if tracking_json is None:
        return None
    from cxrgen.train.tracking import JobRun

    return JobRun(Path(tracking_json), job_name, params=params, tags={"cxrgen.stage": stage})


def _finish_run(run, metrics: dict[str, float | None], artifacts: list[Path | str]) -> str | None:
    if run is None:
        return None
    finite = {_metric_name(k): float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
    if finite:
        run.log_metrics(finite, 0)
    for path in artifacts:
        run.log_artifact(Path(path))
    run.finish()
    return run.run_id


def _metric_name(name: str) -> str:
    """An MLflow-valid metric key (alphanumerics, _ - . space : / only)."""
    return re.sub(r"[^\w\-. :/]", "_", name.replace(" → ", "_to_"))


def _bootstrap_cfg(cfg: dict) -> tuple[int, float]:
    return int(cfg["bootstrap"]["resamples"]), float(cfg["bootstrap"]["confidence"])


def _skipped_lines(meta: dict) -> list[str]:
    return [Skipped(**s).line() for s in meta.get("skipped", [])]


def _load_evaluator(evaluator_dir):
    from cxrgen.evaluate.classifier import load_evaluator

    return load_evaluator(evaluator_dir)


def _title_room(fig) -> float:
    """Top of the tight-layout box that leaves about 0.4 inch for a figure title."""
    return 1.0 - 0.4 / fig.get_figheight()


def _finding_of(row: pd.Series) -> str | None:
    """The single positive finding of a class-balanced prompt (None if zero or several)."""
    positives = [name for name, column in zip(CHEXPERT_LABELS, LABEL_COLUMNS, strict=True) if row[column] == 1.0]
    return positives[0] if len(positives) == 1 else None


# --------------------------------------------------------------------------------------------------- features


def extract_real_features(*, index_path: Path | str, store_root: Path | str, evaluator_dir: Path | str, cfg: dict,
                          resolution: int, seed: int, out_dir: Path | str) -> dict:
    """Rule ``extract_real_features``: the real ``reference`` set (features of every usable backbone + evaluator
    probabilities), ``train`` (evaluator features, for the memorisation search) and ``val`` (evaluator probabilities,
    for decision thresholds) into the feature-set directory ``out_dir`` (written atomically)."""
    started = time.perf_counter()
    evaluator = _load_evaluator(evaluator_dir)
    backbones, skipped = load_backbones(cfg["backbones"]["use"], cfg["backbones"], evaluator=evaluator)
    for s in skipped:
        log.warning("backbone %s", s.line())
    sets = real_sets(pd.read_parquet(index_path), store_root, cfg, seed)
    batch = int(cfg["batch_size"])
    evaluator_only = [b for b in backbones if b.name == "evaluator"]
    extracted = [
        extract(sets["reference"], backbones=backbones, evaluator=evaluator, resolution=resolution,
                batch_size=batch, name="reference"),
        extract(sets["train"], backbones=evaluator_only, evaluator=None, resolution=resolution, batch_size=batch,
                name="train"),
        extract(sets["val"], backbones=[], evaluator=evaluator, resolution=resolution, batch_size=batch, name="val",
                with_features=False),
    ]
    tmp = staging_dir(out_dir)
    save_feature_sets(tmp, extracted, resolution=resolution, backbones=backbones, skipped=skipped,
                      extra={"evaluator_dir": str(evaluator_dir), "reference_splits": cfg["reference_splits"],
                             "views": cfg["views"], "seconds": time.perf_counter() - started})
    publish_dir(tmp, out_dir)
    return {s.name: len(s.rows) for s in extracted}


def extract_generated_features(*, synthetic_root: Path | str, evaluator_dir: Path | str, cfg: dict, resolution: int,
                               out_dir: Path | str) -> dict:
    """Rule ``extract_generated_features``: every image of a synthetic store (``generated`` set): features of every
    usable backbone and evaluator probabilities."""
    started = time.perf_counter()
    evaluator = _load_evaluator(evaluator_dir)
    backbones, skipped = load_backbones(cfg["backbones"]["use"], cfg["backbones"], evaluator=evaluator)
    rows = with_root(pd.read_parquet(Path(synthetic_root) / "index.parquet").sort_values("image_id"), synthetic_root)
    generated = extract(rows, backbones=backbones, evaluator=evaluator, resolution=resolution,
                        batch_size=int(cfg["batch_size"]), name="generated")
    tmp = staging_dir(out_dir)
    save_feature_sets(tmp, [generated], resolution=resolution, backbones=backbones, skipped=skipped,
                      extra={"evaluator_dir": str(evaluator_dir), "synthetic_root": str(synthetic_root),
                             "seconds": time.perf_counter() - started})
    publish_dir(tmp, out_dir)
    return {"generated": len(rows)}


# --------------------------------------------------------------------------------------------------- distribution


def _generated_subset(generated: FeatureSet, sets: list[str]) -> np.ndarray:
    """Positions of generated rows in prompt sets ``sets`` (empty = all). Unknown names fail with the known ones."""
    present = sorted(generated.rows["set"].unique())
    if not sets:
        return np.arange(len(generated.rows))
    missing = sorted(set(sets) - set(present))
    if missing:
        raise ValueError(f"evaluation.distribution.sets: {missing} not in the generated set; present: {present}")
    return np.flatnonzero(generated.rows["set"].isin(sets).to_numpy())


def evaluate_distribution(*, real_dir: Path | str, generated_dir: Path | str, cfg: dict, seed: int, variant: str,
                          out_json: Path | str, out_html: Path | str, out_figure: Path | str,
                          out_markdown: Path | str, tracking_json: Path | str | None = None,
                          job_name: str = "evaluate_distribution") -> dict:
    """Rule ``evaluate_distribution``: FID and KID of the generated set against the real reference set for every
    backbone present in both feature sets, with the real-vs-real floor and bootstrap intervals."""
    dcfg = cfg["distribution"]
    resamples = int(dcfg["bootstrap_resamples"])
    confidence = float(cfg["bootstrap"]["confidence"])
    run = _job_run(tracking_json, job_name, {"evaluation": {"distribution": dcfg, "n": cfg["n"]}, "variant": variant},
                   "evaluate_distribution")
    real, real_meta = load_feature_sets(real_dir)
    gen, gen_meta = load_feature_sets(generated_dir)
    reference, generated = real["reference"], gen["generated"]
    subset = _generated_subset(generated, dcfg["sets"])
    groups = reference.rows["patient_pid"].astype(str).to_numpy()
    results, protocol = {}, {}
    for backbone, description in real_meta["backbones"].items():
        if backbone not in generated.features:
            continue
        results[backbone] = distribution_metrics(generated.features[backbone][subset], reference.features[backbone],
                                                 groups, n=cfg["n"], kid_cfg=dcfg["kid"], resamples=resamples,
                                                 confidence=confidence, seed=seed)
        protocol[backbone] = description
    skipped = _skipped_lines(real_meta) + [line for line in _skipped_lines(gen_meta)
                                           if line not in _skipped_lines(real_meta)]
    payload = {
        "variant": variant, "results": results, "skipped_backbones": skipped,
        "protocol": {"backbones": protocol, "resolution": real_meta["resolution"],
                     "reference": f"real {'+'.join(real_meta['reference_splits'])} split(s), views "
                                  f"{real_meta['views']}, at most n={cfg['n']} images",
                     "generated_sets": dcfg["sets"] or sorted(generated.rows["set"].unique()),
                     "n_generated": int(len(subset)), "n_reference": len(reference.rows),
                     "ci": M.describe_bootstrap(resamples, confidence) + BIAS_SHIFT,
                     "kid": f"polynomial kernel degree {dcfg['kid']['degree']}, subsets of "
                            f"min({dcfg['kid']['subset_size']}, n), {dcfg['kid']['subsets']} subsets",
                     "floor": "two patient-disjoint halves of the reference images (A, B); generated images "
                              "subsampled to |A| and compared with B"}}
    _write_json(out_json, payload)
    fragment = _distribution_fragment(payload, variant)
    fragment.figure(out_figure, Path(out_markdown).parent, f"FID per backbone ({variant})")
    fragment.write(out_html, out_markdown)
    _distribution_figure(payload, real, gen, subset, out_figure, variant)
    headline = {}
    for backbone, rows in results.items():
        for comparison, key in (("generated vs real", "gen_vs_real"), ("generated vs real half B", "gen_vs_half"),
                                ("real half A vs real half B (floor)", "floor")):
            entry = rows.get(comparison, {})
            headline[f"fid/{backbone}/{key}"] = (entry.get("fid") or {}).get("value")
            headline[f"kid/{backbone}/{key}"] = (entry.get("kid") or {}).get("value")
    payload["mlflow_run_id"] = _finish_run(run, headline, [out_json, out_figure])
    _write_json(out_json, payload)
    return payload


def _distribution_fragment(payload: dict, variant: str) -> Fragment:
    protocol = payload["protocol"]
    fragment = Fragment(f"Distribution metrics — {variant}")
    rows = []
    for backbone, comparisons in payload["results"].items():
        for comparison, entry in comparisons.items():
            rows.append({"backbone": backbone, "comparison": comparison, "n (a, b)": f"{entry['n_a']}, {entry['n_b']}",
                         "FID [CI]": with_ci(entry.get("fid"), 2),
                         "KID×10³ [CI]": with_ci(entry.get("kid"), 2, scale=1e3),
                         "KID×10³ std (subsets)": fmt((entry.get("kid") or {}).get("std_over_subsets", float("nan"))
                                                      * 1e3, 2)})
    fragment.para("FID and KID of generated images against real held-out images; the floor row is two "
                  "patient-disjoint halves of the real images against each other (what a perfect generator scores "
                  "at that n). Lower is better.")
    fragment.protocol({
        **{f"backbone {k}": v for k, v in protocol["backbones"].items()},
        "resolution": f"images read at {protocol['resolution']} px, then resized by each backbone",
        "reference split": protocol["reference"], "generated": f"prompt sets {protocol['generated_sets']}, "
                                                               f"n={protocol['n_generated']}",
        "CI": protocol["ci"], "KID": protocol["kid"], "floor": protocol["floor"]})
    if rows:
        fragment.table(pd.DataFrame(rows), caption=f"FID / KID — {variant}")
    else:
        fragment.para("No backbone was available.")
    for line in payload["skipped_backbones"]:
        fragment.para(f"Backbone {line}")
    return fragment


def _distribution_figure(payload: dict, real: dict, gen: dict, subset: np.ndarray, path, variant: str) -> None:
    results = payload["results"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    names = list(results)
    comparisons = ["generated vs real half B", "real half A vs real half B (floor)"]
    width = 0.38
    for k, comparison in enumerate(comparisons):
        values, errors = [], [[], []]
        for backbone in names:
            entry = results[backbone].get(comparison, {}).get("fid") or {}
            v = entry.get("value") or np.nan
            values.append(v)
            errors[0].append(max(v - (entry.get("ci_low") if entry.get("ci_low") is not None else v), 0))
            errors[1].append(max((entry.get("ci_high") if entry.get("ci_high") is not None else v) - v, 0))
        ax.bar(np.arange(len(names)) + (k - 0.5) * width, values, width, yerr=errors, capsize=3,
               label="generated vs real B" if k == 0 else "real A vs real B (floor)",
               color="tab:red" if k == 0 else "tab:grey")
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("FID (equal n, same reference half)")
    ax.set_title(f"FID with {payload['protocol']['ci'].split(',')[0]} CI — {variant}", fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[1]
    reference = real["reference"].features.get("evaluator")
    generated = gen["generated"].features.get("evaluator")
    if reference is not None and generated is not None and len(reference) > 2:
        both = np.concatenate([reference, generated[subset]]).astype(np.float64)
        centred = both - both.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T
        ax.scatter(*xy[: len(reference)].T, s=10, alpha=0.6, label="real reference", color="tab:blue")
        ax.scatter(*xy[len(reference) :].T, s=10, alpha=0.6, label=f"generated ({variant})", color="tab:red")
        ax.legend(fontsize=8)
        ax.set_title("evaluator features, first two principal components", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- fidelity


def evaluate_fidelity(*, real_dir: Path | str, generated_dir: Path | str, cfg: dict, seed: int, variant: str,
                      out_json: Path | str, out_html: Path | str, out_figure: Path | str, out_grid: Path | str,
                      out_markdown: Path | str, tracking_json: Path | str | None = None,
                      job_name: str = "evaluate_fidelity") -> dict:
    """Rule ``evaluate_fidelity``: evaluator AUROC/F1 per finding on the generated images against their prompt
    labels (per prompt set and all together) and on the real reference images against their own labels."""
    from cxrgen.evaluate.fidelity import scores_with_intervals

    fcfg = cfg["fidelity"]
    resamples, confidence = _bootstrap_cfg(cfg)
    run = _job_run(tracking_json, job_name, {"evaluation": {"fidelity": fcfg, "bootstrap": cfg["bootstrap"]},
                                             "variant": variant}, "evaluate_fidelity")
    real, real_meta = load_feature_sets(real_dir)
    gen, _ = load_feature_sets(generated_dir)
    val, reference, generated = real["val"], real["reference"], gen["generated"]
    thresholds = M.choose_thresholds(val.labels, val.probs.astype(np.float64), fcfg["threshold_rule"],
                                     float(fcfg["threshold"]))
    rows = {}
    for name in sorted(generated.rows["set"].unique()):
        keep = (generated.rows["set"] == name).to_numpy()
        rows[f"generated: {name}"] = (generated.labels[keep], generated.probs[keep])
    if len(rows) > 1:
        rows["generated: all sets"] = (generated.labels, generated.probs)
    rows["real reference"] = (reference.labels, reference.probs)
    results = {name: scores_with_intervals(labels, probs.astype(np.float64), thresholds, CHEXPERT_LABELS,
                                           resamples=resamples, confidence=confidence, seed=seed + k,
                                           min_per_class=int(fcfg["min_per_class"]))
               for k, (name, (labels, probs)) in enumerate(rows.items())}
    threshold_text = ("per finding, the F1-maximising threshold of the evaluator on the real val split "
                      f"(fixed {fcfg['threshold']} where val lacks a class)"
                      if fcfg["threshold_rule"] == "val_max_f1" else f"fixed {fcfg['threshold']}")
    payload = {"variant": variant, "results": results,
               "thresholds": dict(zip(CHEXPERT_LABELS, thresholds.tolist(), strict=True)),
               "protocol": {"judge": f"{real_meta['backbones'].get('evaluator', 'in-domain evaluator')} "
                                     f"({real_meta.get('evaluator_dir')}); store images read at "
                                     f"{real_meta['resolution']} px", "F1 threshold": threshold_text,
                            "labels": "generated: labels of the prompt (1/0; unknown = NaN, left out); real: the "
                                      "image's labels after the label policy",
                            "reference": f"real {'+'.join(real_meta['reference_splits'])} split(s), views "
                                         f"{real_meta['views']}, n={len(reference.rows)}",
                            "averages": "micro: pooled (image, finding) pairs; macro: mean over the scored "
                                        "findings; weighted: by positives; a finding is scored with at least "
                                        f"{fcfg['min_per_class']} positive and {fcfg['min_per_class']} negative "
                                        "labels in that image set, else skipped (its counts shown)",
                            "ci": M.describe_bootstrap(resamples, confidence) + " over images"},
               "min_per_class": int(fcfg["min_per_class"])}
    _write_json(out_json, payload)
    _fidelity_figure(results, out_figure, variant)
    _finding_grid(reference, generated, int(fcfg["grid_columns"]), int(real_meta["resolution"]), out_grid, variant)
    fragment = _fidelity_fragment(payload, variant)
    fragment.figure(out_figure, Path(out_markdown).parent, f"AUROC per finding ({variant})")
    fragment.figure(out_grid, Path(out_markdown).parent, f"real vs generated per finding ({variant})")
    fragment.write(out_html, out_markdown)
    headline = {}
    for name, result in results.items():
        key = name.replace("generated: ", "gen_").replace(" ", "_")
        for metric in ("auroc", "f1"):
            for average in ("micro", "macro", "weighted"):
                headline[f"{metric}_{average}/{key}"] = result[metric][average]["value"]
    payload["mlflow_run_id"] = _finish_run(run, headline, [out_json, out_figure, out_grid])
    _write_json(out_json, payload)
    return payload


def _fidelity_fragment(payload: dict, variant: str) -> Fragment:
    results = payload["results"]
    fragment = Fragment(f"Conditional fidelity — {variant}")
    fragment.para("The in-domain evaluator classifies every generated image; AUROC and F1 per finding against the "
                  "labels of the prompt that produced it (MedCoDi-M Table 3 layout), with the same numbers on real "
                  "held-out images as the reference row. AUROC 0.5 = chance.")
    fragment.protocol(payload["protocol"])
    names = list(results)
    summary = []
    for name in names:
        r = results[name]
        summary.append({"images": name, "n": r["n_images"], "findings evaluated": r["n_evaluable"],
                        "findings skipped": len(r["skipped"]),
                        **{f"AUROC {a}": with_ci(r["auroc"][a]) for a in ("micro", "macro", "weighted")},
                        **{f"F1 {a}": with_ci(r["f1"][a]) for a in ("micro", "macro", "weighted")}})
    fragment.table(pd.DataFrame(summary), caption=f"Averages — {variant}")
    evaluable = [name for name in names if results[name]["n_evaluable"]]
    for name in names:
        if name not in evaluable:
            fragment.para(f"{name}: no finding has {payload['min_per_class']} positive and "
                          f"{payload['min_per_class']} negative labels (every finding skipped).")
    per = []
    for finding in CHEXPERT_LABELS:
        row = {"finding": finding, "threshold": payload["thresholds"][finding]}
        for name in evaluable:
            entry = results[name]["per_finding"].get(finding)
            short = name.replace("generated: ", "gen ")
            row[f"AUROC {short}"] = with_ci(entry["auroc"]) if entry else "skipped"
            row[f"F1 {short}"] = with_ci(entry["f1"]) if entry else "skipped"
            row[f"pos/neg {short}"] = f"{entry['n_pos']}/{entry['n_neg']}" if entry else _skip_counts(
                results[name], finding)
        per.append(row)
    fragment.table(pd.DataFrame(per), caption=f"Per finding — {variant}")
    return fragment


def _skip_counts(result: dict, finding: str) -> str:
    for s in result["skipped"]:
        if s["finding"] == finding:
            return f"{s['n_pos']}/{s['n_neg']}"
    return "–"


def _fidelity_figure(results: dict, path, variant: str) -> None:
    names = list(results)
    fig, ax = plt.subplots(figsize=(12, 4))
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(CHEXPERT_LABELS))
    for k, name in enumerate(names):
        values = [(results[name]["per_finding"].get(f) or {}).get("auroc", {}) for f in CHEXPERT_LABELS]
        ax.bar(x + (k - (len(names) - 1) / 2) * width, [v.get("value") or np.nan for v in values], width,
               label=name, color="tab:grey" if name == "real reference" else None)
    ax.axhline(0.5, color="black", linewidth=0.7, linestyle="--")
    ax.set_xticks(x, CHEXPERT_LABELS, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("AUROC (evaluator)")
    ax.set_title(f"Conditional fidelity per finding — {variant} (dashed: chance; missing bar: finding skipped)",
                 fontsize=9)
    ax.legend(fontsize=8, ncol=len(names))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _finding_grid(reference: FeatureSet, generated: FeatureSet, columns: int, resolution: int, path,
                  variant: str) -> None:
    """Rows = findings of the class-balanced prompts; left ``columns`` real reference images positive for the
    finding, right ``columns`` generated images of that finding's prompts."""
    gen_rows = generated.rows.reset_index(drop=True)
    gen_finding = gen_rows.apply(_finding_of, axis=1)
    balanced = gen_rows["set"].isin(["class_balanced", "templates"]).to_numpy()
    findings = [f for f in CHEXPERT_LABELS if ((gen_finding == f).to_numpy() & balanced).any()]
    if not findings:
        findings = [f for f in CHEXPERT_LABELS if (gen_finding == f).any()][:8]
    real_rows = reference.rows.reset_index(drop=True)
    picks_real, picks_gen = [], []
    for finding in findings:
        column = LABEL_COLUMNS[CHEXPERT_LABELS.index(finding)]
        picks_real.append(np.flatnonzero(real_rows[column].to_numpy() == 1.0)[:columns])
        mask = (gen_finding == finding).to_numpy() & (balanced if balanced.any() else True)
        picks_gen.append(np.flatnonzero(mask)[:columns])
    real_images = _images_at(real_rows, np.concatenate(picks_real) if picks_real else [], resolution)
    gen_images = _images_at(gen_rows, np.concatenate(picks_gen) if picks_gen else [], resolution)
    rows_n = max(len(findings), 1)
    fig, axes = plt.subplots(rows_n, 2 * columns, figsize=(1.5 * 2 * columns + 1.8, 1.5 * rows_n + 0.5),
                             squeeze=False)
    r_pos = g_pos = 0
    for r, finding in enumerate(findings):
        for c in range(2 * columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < columns and c < len(picks_real[r]):
                ax.imshow(real_images[r_pos + c], cmap="gray", vmin=0, vmax=1)
            elif c >= columns and c - columns < len(picks_gen[r]):
                ax.imshow(gen_images[g_pos + c - columns], cmap="gray", vmin=0, vmax=1)
            else:
                ax.axis("off")
            if r == 0 and c in (0, columns):
                ax.set_title("real reference →" if c == 0 else f"generated ({variant}) →", fontsize=8, loc="left")
        axes[r][0].axis("on")
        axes[r][0].set_xticks([])
        axes[r][0].set_yticks([])
        axes[r][0].set_ylabel(finding, rotation=0, ha="right", va="center", fontsize=8)
        r_pos += len(picks_real[r])
        g_pos += len(picks_gen[r])
    fig.suptitle(f"Real reference images positive for a finding (left) vs generated from that finding's prompts "
                 f"(right) — {variant}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, _title_room(fig)))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _images_at(rows: pd.DataFrame, positions, resolution: int) -> np.ndarray:
    positions = np.asarray(positions, dtype=int)
    if len(positions) == 0:
        return np.zeros((0, resolution, resolution), np.float32)
    images = torch.cat(list(iter_images(rows.iloc[positions].reset_index(drop=True), resolution, 64)))
    return images[:, 0].numpy()


# --------------------------------------------------------------------------------------------------- memorisation


def evaluate_memorisation(*, real_dir: Path | str, generated_dir: Path | str, cfg: dict, seed: int, variant: str,
                          out_json: Path | str, out_html: Path | str, out_pairs: Path | str,
                          out_histogram: Path | str, out_markdown: Path | str,
                          tracking_json: Path | str | None = None, job_name: str = "evaluate_memorisation") -> dict:
    """Rule ``evaluate_memorisation``: nearest training image per generated / real reference image (evaluator
    features and pixels), the re-identification share under the threshold, the closest pairs, and the diversity of
    repeated generations of one prompt."""
    from cxrgen.evaluate import memorisation as mem

    mcfg = cfg["memorisation"]
    resamples, confidence = _bootstrap_cfg(cfg)
    run = _job_run(tracking_json, job_name, {"evaluation": {"memorisation": mcfg, "diversity": cfg["diversity"]},
                                             "variant": variant}, "evaluate_memorisation")
    real, real_meta = load_feature_sets(real_dir)
    gen, _ = load_feature_sets(generated_dir)
    train, reference, generated = real["train"], real["reference"], gen["generated"]
    train_ids = train.rows["image_id"].astype(str).to_numpy()
    probe = sample_rows(train.rows.assign(_pos=np.arange(len(train.rows))), mcfg["threshold_sample"], seed)
    probe_pos = probe["_pos"].to_numpy()
    pixel_res = int(mcfg["pixel_resolution"])
    batch = int(cfg["batch_size"])

    def pixels(rows: pd.DataFrame, desc: str = "") -> np.ndarray:
        return np.concatenate([mem.pixel_vectors(x, pixel_res) for x in iter_images(rows, pixel_res, batch, desc)])

    def feature_chunks():
        features = train.features["evaluator"]
        for start in range(0, len(features), 4096):
            yield mem.unit_rows(features[start : start + 4096]), train_ids[start : start + 4096]

    def pixel_chunks():  # streamed: the train split's pixels never sit in memory at once
        start = 0
        for images in iter_images(train.rows, pixel_res, batch, desc="train pixels"):
            yield mem.pixel_vectors(images, pixel_res), train_ids[start : start + len(images)]
            start += len(images)

    probe_ids = train_ids[probe_pos]
    searches = {
        "evaluator features": ((generated.features["evaluator"], reference.features["evaluator"],
                                train.features["evaluator"][probe_pos]), feature_chunks),
        f"pixels ({pixel_res} px)": ((pixels(generated.rows), pixels(reference.rows),
                                      pixels(train.rows.iloc[probe_pos].reset_index(drop=True))), pixel_chunks),
    }
    spaces = {}
    for space, ((g, r, probe_vectors), chunks) in searches.items():
        search_gen, search_ref = mem.NearestNeighbours(g), mem.NearestNeighbours(r)
        search_probe = mem.NearestNeighbours(probe_vectors, probe_ids)
        for vectors, ids in chunks():
            search_gen.update(vectors)
            search_ref.update(vectors)
            search_probe.update(vectors, ids)
        gen_d, gen_nn = search_gen.distance, search_gen.index
        ref_d, probe_d = search_ref.distance, search_probe.distance
        threshold = float(np.quantile(probe_d[np.isfinite(probe_d)], float(mcfg["threshold_quantile"])))
        spaces[space] = {
            "threshold": threshold,
            "generated": _distance_summary(gen_d, threshold, resamples, confidence, seed),
            "real reference": _distance_summary(ref_d, threshold, resamples, confidence, seed + 1),
            "train probe (nearest other train image)": _distance_summary(probe_d, threshold, resamples, confidence,
                                                                         seed + 2),
            "_gen_d": gen_d, "_gen_nn": gen_nn, "_ref_d": ref_d, "_probe_d": probe_d}

    diversity = _diversity(generated, reference, cfg["diversity"], int(real_meta["resolution"]), seed, resamples,
                           confidence)
    payload = {"variant": variant,
               "spaces": {s: {k: v for k, v in d.items() if not k.startswith("_")} for s, d in spaces.items()},
               "diversity": diversity,
               "closest": {s: _closest(d["_gen_d"], d["_gen_nn"], generated.rows, train.rows, int(mcfg["pairs_shown"]))
                           for s, d in spaces.items()},
               "protocol": {"distance": "1 − cosine similarity; pixel vectors mean-centred per image (= 1 − Pearson r)",
                            "database": f"real train split, views {real_meta['views']}, n={len(train.rows)}",
                            "threshold": f"the {mcfg['threshold_quantile']} quantile of the distances of "
                                         f"{len(probe_pos)} train images to their nearest other train image",
                            "reference": f"real {'+'.join(real_meta['reference_splits'])} split(s) → train, "
                                         f"n={len(reference.rows)}",
                            "generated": f"all {len(generated.rows)} generated images of {variant}",
                            "ci": M.describe_bootstrap(resamples, confidence) + " over images",
                            "diversity": diversity["protocol"]}}
    _write_json(out_json, payload)
    _memorisation_histogram(spaces, out_histogram, variant)
    _closest_pairs_figure(payload["closest"], generated.rows, train.rows, int(real_meta["resolution"]), out_pairs,
                          variant)
    fragment = _memorisation_fragment(payload, variant)
    fragment.figure(out_histogram, Path(out_markdown).parent, f"nearest-train distances ({variant})")
    fragment.figure(out_pairs, Path(out_markdown).parent, f"closest generated/train pairs ({variant})")
    fragment.write(out_html, out_markdown)
    headline = {}
    for space, d in payload["spaces"].items():
        key = "feature" if space.startswith("evaluator") else "pixel"
        headline[f"share_below/{key}/generated"] = d["generated"]["share_below_threshold"]["value"]
        headline[f"share_below/{key}/real"] = d["real reference"]["share_below_threshold"]["value"]
        headline[f"median_nn/{key}/generated"] = d["generated"]["median"]
    headline["diversity/within_prompt"] = diversity["within prompt"]["value"]
    payload["mlflow_run_id"] = _finish_run(run, headline, [out_json, out_histogram, out_pairs])
    _write_json(out_json, payload)
    return payload


def _distance_summary(distances: np.ndarray, threshold: float, resamples: int, confidence: float, seed: int) -> dict:
    d = np.asarray(distances, dtype=np.float64)
    d = d[np.isfinite(d)]
    below = (d < threshold).astype(np.float64)
    share = M.mean_interval(below, resamples=resamples, confidence=confidence, seed=seed)
    return {"n": len(d), "median": float(np.median(d)) if len(d) else None,
            "p05": float(np.quantile(d, 0.05)) if len(d) else None, "min": float(d.min()) if len(d) else None,
            "share_below_threshold": share.as_dict(), "count_below_threshold": int(below.sum())}


def _closest(distances, nn_index, gen_rows: pd.DataFrame, train_rows: pd.DataFrame, k: int) -> list[dict]:
    order = np.argsort(distances, kind="stable")[:k]
    return [{"generated": str(gen_rows["image_id"].iloc[i]), "train": str(train_rows["image_id"].iloc[nn_index[i]]),
             "distance": float(distances[i]), "generated_pos": int(i), "train_pos": int(nn_index[i])} for i in order]


def _diversity(generated: FeatureSet, reference: FeatureSet, dcfg: dict, resolution: int, seed: int, resamples: int,
               confidence: float) -> dict:
    from cxrgen.evaluate import memorisation as mem

    reason = M.ms_ssim_unavailable_reason(resolution)
    metric, name = (M.ssim, "SSIM") if reason else (M.ms_ssim, "MS-SSIM")
    rows = generated.rows.reset_index(drop=True)
    groups = mem.prompt_groups(rows)
    within = mem.within_group_pairs(groups, int(dcfg["max_pairs_per_prompt"]), seed)
    count = max(len(within), int(dcfg["random_pairs"]))
    prompt_ids = (rows["set"].astype(str) + "|" + rows["prompt"].astype(str)).to_numpy()
    across = mem.random_pairs(len(rows), count, seed + 1, different=prompt_ids)
    real_pairs = mem.random_pairs(len(reference.rows), count, seed + 2)
    out = {"metric": name, "n_prompts_with_repeats": len(groups)}
    gen_images = _image_lookup(rows, sorted({i for p in within + across for i in p}), resolution)
    real_images = _image_lookup(reference.rows.reset_index(drop=True), sorted({i for p in real_pairs for i in p}),
                                resolution)
    for label, pairs, (images, index_of) in (("within prompt", within, gen_images),
                                              ("across prompts", across, gen_images),
                                              ("real pairs", real_pairs, real_images)):
        values = mem.pair_similarities(images, [(index_of[i], index_of[j]) for i, j in pairs], metric)
        out[label] = {**M.mean_interval(values, resamples=resamples, confidence=confidence, seed=seed).as_dict(),
                      "pairs": len(values)}
    out["protocol"] = (f"{name} between image pairs at {resolution} px"
                       + (f" ({reason}; SSIM instead)" if reason else "")
                       + f"; within prompt: repeated generations of one prompt (same text, different seeds), at "
                         f"most {dcfg['max_pairs_per_prompt']} pairs per prompt; across prompts / real pairs: random "
                         "pairs of generated images of different prompts / of real reference images. Higher = more "
                         "similar = less diverse.")
    return out


def _image_lookup(rows: pd.DataFrame, positions: list[int], resolution: int) -> tuple[torch.Tensor, dict[int, int]]:
    """Images ``[K, 1, R, R]`` of the given row positions and a map position → row of that tensor."""
    images = torch.from_numpy(_images_at(rows, positions, resolution))[:, None]
    return images, {p: k for k, p in enumerate(positions)}


def _memorisation_fragment(payload: dict, variant: str) -> Fragment:
    fragment = Fragment(f"Memorisation and diversity — {variant}")
    fragment.para("Distance of every generated image to its nearest training image, against the same for real "
                  "held-out images (other patients). The share below the threshold estimates the re-identification "
                  "risk: images as close to a training image as two distinct training images get.")
    fragment.protocol({k: v for k, v in payload["protocol"].items() if k != "diversity"})
    rows = []
    for space, d in payload["spaces"].items():
        for group in ("generated", "real reference", "train probe (nearest other train image)"):
            s = d[group]
            rows.append({"space": space, "images": group, "n": s["n"], "threshold": d["threshold"],
                         "median distance": s["median"], "5% quantile": s["p05"], "min": s["min"],
                         "share below threshold [CI]": with_ci(s["share_below_threshold"]),
                         "count below": s["count_below_threshold"]})
    fragment.table(pd.DataFrame(rows), caption=f"Nearest training image — {variant}")
    div = payload["diversity"]
    fragment.para(div["protocol"])
    fragment.table(pd.DataFrame([{"pairs": label, "n pairs": div[label]["pairs"],
                                  f"mean {div['metric']} [CI]": with_ci(div[label])}
                                 for label in ("within prompt", "across prompts", "real pairs")]),
                   caption=f"Diversity ({div['metric']}, {div['n_prompts_with_repeats']} prompts with repeats) — "
                           f"{variant}")
    return fragment


def _memorisation_histogram(spaces: dict, path, variant: str) -> None:
    fig, axes = plt.subplots(1, len(spaces), figsize=(5.5 * len(spaces), 3.6), squeeze=False)
    for ax, (space, d) in zip(axes[0], spaces.items(), strict=True):
        data = [d["_gen_d"], d["_ref_d"], d["_probe_d"][np.isfinite(d["_probe_d"])]]
        top = max(float(np.max(x)) for x in data if len(x)) if any(len(x) for x in data) else 1.0
        bins = np.linspace(0, top * 1.02 + 1e-9, 30)
        for values, label, color in zip(data, ("generated → train", "real reference → train",
                                               "train → other train"), ("tab:red", "tab:blue", "tab:grey"),
                                        strict=True):
            if len(values):
                ax.hist(values, bins=bins, density=True, alpha=0.45, label=label, color=color)
        ax.axvline(d["threshold"], color="black", linestyle="--", linewidth=1, label="threshold")
        ax.set_xlabel(f"distance to nearest training image ({space})")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    fig.suptitle(f"Memorisation — {variant}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, _title_room(fig)))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _closest_pairs_figure(closest: dict, gen_rows: pd.DataFrame, train_rows: pd.DataFrame, resolution: int, path,
                          variant: str) -> None:
    spaces = list(closest)
    k = max((len(v) for v in closest.values()), default=0)
    fig, axes = plt.subplots(len(spaces), max(2 * k, 2), figsize=(1.6 * max(2 * k, 2), 2.0 * len(spaces) + 0.4),
                             squeeze=False)
    for r, space in enumerate(spaces):
        pairs = closest[space]
        gen = _images_at(gen_rows, [p["generated_pos"] for p in pairs], resolution)
        train = _images_at(train_rows, [p["train_pos"] for p in pairs], resolution)
        for c in range(max(2 * k, 2)):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            j = c // 2
            if j >= len(pairs):
                ax.axis("off")
                continue
            ax.imshow(gen[j] if c % 2 == 0 else train[j], cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"gen d={pairs[j]['distance']:.3f}" if c % 2 == 0 else "nearest train", fontsize=7)
        axes[r][0].set_ylabel(space, fontsize=8)
    fig.suptitle(f"Closest generated / training pairs — {variant}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, _title_room(fig)))
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- reconstruction


def evaluate_reconstruction(*, index_path: Path | str, store_root: Path | str, ae_dir: Path | str,
                            sr_base_dir: Path | str, sr_dir: Path | str, cfg: dict, seed: int, low_res: int,
                            high_res: int, out_json: Path | str, out_html: Path | str, out_figure: Path | str,
                            out_markdown: Path | str, tracking_json: Path | str | None = None,
                            job_name: str = "evaluate_reconstruction") -> dict:
    """Rule ``evaluate_reconstruction``: MSE / PSNR / SSIM (/ MS-SSIM) of the Cheff Table 2 chains on real
    reference images (x_HR at ``high_res``, x_LR = bicubic to ``low_res``)."""
    from cxrgen.evaluate.reconstruction import CHAINS, per_image_metrics, run_chains
    from cxrgen.models.autoencoder import load_autoencoder
    from cxrgen.models.sr import load_sr

    rcfg = cfg["reconstruction"]
    resamples, confidence = _bootstrap_cfg(cfg)
    run = _job_run(tracking_json, job_name, {"evaluation": {"reconstruction": rcfg}}, "evaluate_reconstruction")
    index = pd.read_parquet(index_path)
    views = cfg["views"]
    rows = index[index["split"].isin(cfg["reference_splits"]) & (index["view"].isin(views) if views else True)]
    rows = with_root(sample_rows(rows, rcfg["n"], seed), store_root)
    ae = load_autoencoder(ae_dir)
    sr_models = {"base": load_sr(sr_base_dir), "fine-tuned": load_sr(sr_dir)}
    per_row: dict[str, dict[str, list[np.ndarray]]] = {}
    examples: dict[str, torch.Tensor] = {}
    started = time.perf_counter()
    position = 0
    for images in iter_images(rows, high_res, int(rcfg["batch_size"]), desc="reconstruction"):
        ids = rows["image_id"].iloc[position : position + len(images)].astype(str).tolist()
        position += len(images)
        outputs = run_chains(images * 2.0 - 1.0, ids, low_res=low_res, ae=ae, sr_models=sr_models,
                             sr_steps=int(rcfg["sr_steps"]), seed=seed)
        for name, (prediction, target) in outputs.items():
            with_ms = M.ms_ssim_unavailable_reason(target.shape[-1]) is None
            values = per_image_metrics(prediction, target, with_ms)
            for key, v in values.items():
                per_row.setdefault(name, {}).setdefault(key, []).append(v)
            if name not in examples:
                examples[name] = prediction[: int(rcfg["examples"])]
        examples.setdefault("x_HR", images[: int(rcfg["examples"])] * 2.0 - 1.0)
    results = {}
    for name, values in per_row.items():
        resolution = low_res if name == "AE" else high_res
        entry = {"chain": CHAINS[name], "resolution": resolution, "n": int(sum(len(v) for v in values["mse"]))}
        for key, parts in values.items():
            entry[key] = M.mean_interval(np.concatenate(parts), resamples=resamples, confidence=confidence,
                                         seed=seed).as_dict()
        reason = M.ms_ssim_unavailable_reason(resolution)
        if reason:
            entry["ms_ssim"] = {"value": None, "unavailable": reason}
        results[name] = entry
    payload = {"results": results, "seconds": time.perf_counter() - started,
               "protocol": {"images": f"real {'+'.join(cfg['reference_splits'])} split(s), views {views}, "
                                      f"n={len(rows)} (seeded sample)",
                            "x_HR / x_LR": f"store images at {high_res} px; x_LR = antialiased bicubic to {low_res} px",
                            "AE": "posterior mode (deterministic), compared with x_LR",
                            "SR": f"DDIM, {rcfg['sr_steps']} steps, eta 0, one seeded generator per image",
                            "metrics": "per image in [0, 1] (data range 1), then mean over images; SSIM Gaussian "
                                       "11 px σ 1.5; MS-SSIM 5 scales where the size allows",
                            "ci": M.describe_bootstrap(resamples, confidence) + " over images",
                            "models": f"AE {ae_dir}, SR base {sr_base_dir}, SR fine-tuned {sr_dir}"}}
    _write_json(out_json, payload)
    _reconstruction_figure(examples, out_figure, low_res, high_res)
    fragment = Fragment("Reconstruction (Cheff Table 2 chains)")
    fragment.para("How much the autoencoder and the super-resolution model lose on real held-out images, alone and "
                  "chained; bicubic upsampling is the reference row.")
    fragment.protocol(payload["protocol"])
    table = [{"chain": name, "workflow": r["chain"], "compared at": f"{r['resolution']} px", "n": r["n"],
              "MSE [CI]": with_ci(r["mse"], 4), "PSNR dB [CI]": with_ci(r["psnr"], 2), "SSIM [CI]": with_ci(r["ssim"]),
              "MS-SSIM": with_ci(r["ms_ssim"]) if r["ms_ssim"].get("value") is not None else "n/a (size)"}
             for name, r in results.items()]
    fragment.table(pd.DataFrame(table), caption="Reconstruction on real held-out images")
    reasons = sorted({r["ms_ssim"]["unavailable"] for r in results.values() if r["ms_ssim"].get("unavailable")})
    for reason in reasons:
        fragment.para(f"MS-SSIM not computed: {reason}.")
    fragment.figure(out_figure, Path(out_markdown).parent, "reconstruction examples")
    fragment.write(out_html, out_markdown)
    headline = {f"{k}/{name}": r[k]["value"] for name, r in results.items() for k in ("mse", "psnr", "ssim")}
    payload["mlflow_run_id"] = _finish_run(run, headline, [out_json, out_figure])
    _write_json(out_json, payload)
    return payload


def _reconstruction_figure(examples: dict[str, torch.Tensor], path, low_res: int, high_res: int) -> None:
    names = ["x_HR"] + [n for n in examples if n != "x_HR"]
    k = len(examples["x_HR"])
    fig, axes = plt.subplots(k, len(names), figsize=(1.9 * len(names), 1.9 * k + 0.4), squeeze=False)
    for c, name in enumerate(names):
        images = ((examples[name] + 1) / 2).clamp(0, 1)[:, 0].numpy()
        for r in range(k):
            ax = axes[r][c]
            ax.imshow(images[r], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                size = low_res if name == "AE" else high_res
                ax.set_title(f"{name}\n({size} px)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- summary


def summary(*, fragments: list[Path | str], out_path: Path | str, demo: bool, config: dict) -> str:
    """Rule ``write_summary``: ``results/summary.md`` from the markdown fragments."""
    from cxrgen.evaluate.tables import write_summary
    from cxrgen.train.tracking import config_digest

    header = {"seed": str(config.get("seed")), "config digest": config_digest(config),
              "store resolutions": ", ".join(f"{r} px" for r in config["ingest"]["resolutions"]),
              "variants": ", ".join(config.get("variants", {"cheff": {}}))}
    return write_summary(fragments, out_path, demo=demo, header=header)
