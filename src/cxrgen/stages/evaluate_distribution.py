"""Rule ``evaluate_distribution``: FID/KID and PRDC per backbone with the real-vs-real floor, and FID/KID per
CheXpert finding (:mod:`cxrgen.evaluate.distribution`): ``distribution.json`` (numbers + protocol), an HTML table page,
a markdown fragment (a CheXGenBench-style benchmark table first) and a figure, as one tracked job."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import re  # noqa: E402
import time  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxrgen.evaluate import metrics as M  # noqa: E402
from cxrgen.evaluate.backbones import Skipped  # noqa: E402
from cxrgen.evaluate.distribution import (  # noqa: E402
    BIAS_SHIFT,
    PRDC,
    TOO_SMALL,
    distribution_metrics,
    finding_groups,
    per_pathology,
)
from cxrgen.evaluate.features import FeatureSet, load_feature_sets  # noqa: E402
from cxrgen.evaluate.outputs import StagedFiles  # noqa: E402
from cxrgen.evaluate.tables import Fragment, fmt, with_ci  # noqa: E402
from cxrgen.train.job import tracked_job, write_json  # noqa: E402


def evaluate_distribution(*, real_dir: Path | str, generated_dir: Path | str, cfg: dict, seed: int, variant: str,
                          out_json: Path | str, out_html: Path | str, out_figure: Path | str,
                          out_markdown: Path | str, tracking_json: Path | str | None = None,
                          job_name: str = "evaluate_distribution") -> dict:
    """FID, KID and PRDC of the generated set against the real reference set for every backbone present in both
    feature sets, with the real-vs-real floor and bootstrap intervals, and FID/KID per finding of the single-finding
    prompts."""
    dcfg = cfg["distribution"]
    pcfg = dcfg["per_pathology"]
    resamples = int(dcfg["bootstrap_resamples"])
    confidence = float(cfg["bootstrap"]["confidence"])
    with tracked_job(tracking_json, job_name, params={"evaluation": cfg, "variant": variant, "seed": seed},
                     tags={"cxrgen.stage": "evaluate_distribution"}) as job:
        real, real_meta = load_feature_sets(real_dir)
        gen, gen_meta = load_feature_sets(generated_dir)
        reference, generated = real["reference"], gen["generated"]
        subset = _generated_subset(generated, dcfg["sets"])
        groups = reference.rows["patient_pid"].astype(str).to_numpy()
        findings = finding_groups(generated.rows, reference.rows, sets=tuple(pcfg["sets"]))
        results, pathology, protocol, seconds = {}, {}, {}, {}
        for backbone, description in real_meta["backbones"].items():
            if backbone not in generated.features:
                continue
            started = time.process_time()
            results[backbone] = distribution_metrics(generated.features[backbone][subset],
                                                     reference.features[backbone], groups, n=cfg["n"],
                                                     kid_cfg=dcfg["kid"], resamples=resamples,
                                                     confidence=confidence, seed=seed, prdc_cfg=dcfg["prdc"])
            seconds[f"seconds/overall/{backbone}"] = time.process_time() - started
            started = time.process_time()
            pathology[backbone] = per_pathology(generated.features[backbone], reference.features[backbone], findings,
                                                min_n=int(pcfg["min_n"]), kid_cfg=dcfg["kid"], resamples=resamples,
                                                confidence=confidence, seed=seed)
            seconds[f"seconds/per_pathology/{backbone}"] = time.process_time() - started
            protocol[backbone] = description
        skipped = _skipped_lines(real_meta) + [line for line in _skipped_lines(gen_meta)
                                               if line not in _skipped_lines(real_meta)]
        payload = {
            "variant": variant, "results": results, "per_pathology": pathology, "skipped_backbones": skipped,
            "protocol": {"backbones": protocol, "resolution": real_meta["resolution"],
                         "reference": f"real {'+'.join(real_meta['reference_splits'])} split(s), views "
                                      f"{real_meta['views']}, at most n={cfg['n']} images",
                         "generated_sets": dcfg["sets"] or sorted(generated.rows["set"].unique()),
                         "n_generated": int(len(subset)), "n_reference": len(reference.rows),
                         "ci": M.describe_bootstrap(resamples, confidence) + BIAS_SHIFT,
                         "kid": f"polynomial kernel degree {dcfg['kid']['degree']}, subsets of "
                                f"min({dcfg['kid']['subset_size']}, n_a - 1, n_b - 1) (every subset leaves images out), "
                                f"{dcfg['kid']['subsets']} subsets",
                         "floor": "two patient-disjoint halves of the reference images (A, B); generated images "
                                  "subsampled to |A| and compared with B",
                         "prdc_k": int(dcfg["prdc"]["k"]),
                         "prdc": f"precision / recall / density / coverage (Naeem et al. 2020), Euclidean k-NN balls "
                                 f"with k={dcfg['prdc']['k']}, "
                                 f"{M.describe_bootstrap(dcfg['prdc']['bootstrap_resamples'], confidence)} (both sets "
                                 "resampled; copies of an image are not each other's neighbours)",
                         "per_pathology": f"generated images of single-finding prompts (sets {pcfg['sets']}) per "
                                          "finding vs the real reference images positive for it; groups with fewer "
                                          f"than {pcfg['min_n']} images on either side: '{TOO_SMALL}'"}}
        payload["alignment"] = alignment(generated, reference, resamples=int(cfg["bootstrap"]["resamples"]),
                                         confidence=confidence, seed=seed)
        files = StagedFiles(job, {"json": out_json, "table": out_html, "figure": out_figure,
                                  "markdown": out_markdown})
        fragment = _distribution_fragment(payload, variant)
        fragment.figure(out_figure, Path(out_markdown).parent, f"FID per backbone ({variant})")
        fragment.write(files["table"], files["markdown"])
        _distribution_figure(payload, real, gen, subset, files["figure"], variant)
        headline = {}
        for backbone, rows in results.items():
            for comparison, key in (("generated vs real", "gen_vs_real"),
                                    ("generated vs real half B", "gen_vs_half"),
                                    ("real half A vs real half B (floor)", "floor")):
                entry = rows.get(comparison, {})
                headline[f"fid/{backbone}/{key}"] = (entry.get("fid") or {}).get("value")
                headline[f"kid/{backbone}/{key}"] = (entry.get("kid") or {}).get("value")
                for name in PRDC:
                    headline[f"{name}/{backbone}/{key}"] = ((entry.get("prdc") or {}).get(name) or {}).get("value")
        job.log_metrics({**headline, **seconds})  # CPU seconds: run metrics only (the json stays deterministic)
        payload["mlflow_run_id"] = job.run_id
        write_json(files["json"], payload)
        files.publish(artifacts=["json", "figure"])
    return payload


def alignment(generated: FeatureSet, reference: FeatureSet, *, resamples: int, confidence: float, seed: int
              ) -> dict | None:
    """Mean CLIP score (cosine similarity in the project's CLIP) of generated images with their prompts, per prompt
    set, and of real reference images with their own reports (the reference), each with a bootstrap interval over
    images; None when the feature sets carry no CLIP scores."""
    if generated.clip_scores is None or reference.clip_scores is None:
        return None
    groups = {f"generated ({name}) vs its prompt": generated.clip_scores[(generated.rows["set"] == name).to_numpy()]
              for name in sorted(generated.rows["set"].unique())}
    groups["real reference vs its report"] = reference.clip_scores
    out = {}
    for k, (name, scores) in enumerate(groups.items()):
        finite = scores[np.isfinite(scores)]
        out[name] = {"n": int(len(finite)),
                     **M.mean_interval(finite, resamples=resamples, confidence=confidence, seed=seed + k).as_dict()}
    return out


def _skipped_lines(meta: dict) -> list[str]:
    return [Skipped(**s).line() for s in meta.get("skipped", [])]


def _generated_subset(generated: FeatureSet, sets: list[str]) -> np.ndarray:
    """Positions of generated rows in prompt sets ``sets`` (empty = all). Unknown names fail with the known ones."""
    present = sorted(generated.rows["set"].unique())
    if not sets:
        return np.arange(len(generated.rows))
    missing = sorted(set(sets) - set(present))
    if missing:
        raise ValueError(f"evaluation.distribution.sets: {missing} not in the generated set; present: {present}")
    return np.flatnonzero(generated.rows["set"].isin(sets).to_numpy())


def _distribution_fragment(payload: dict, variant: str) -> Fragment:
    protocol = payload["protocol"]
    fragment = Fragment(f"Distribution metrics — {variant}")
    _benchmark_table(fragment, payload, variant)
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
        "CI": protocol["ci"], "KID": protocol["kid"], "floor": protocol["floor"], "PRDC": protocol["prdc"],
        "per pathology": protocol["per_pathology"]})
    if rows:
        fragment.table(pd.DataFrame(rows), caption=f"FID / KID — {variant}")
    else:
        fragment.para("No backbone was available.")
    _pathology_table(fragment, payload, variant)
    if payload.get("alignment"):
        fragment.table(pd.DataFrame([{"pairs": name, "n": entry["n"], "CLIP score [CI]": with_ci(entry, 3)}
                                     for name, entry in payload["alignment"].items()]), caption=(
            f"Image–text alignment — {variant}: cosine similarity in the project's CLIP (rule train_clip, its own "
            f"preprocessing) of each image with its text; images read at {protocol['resolution']} px; real pairs "
            "are the reference (a generator that follows its prompts scores near them)"))
    for line in payload["skipped_backbones"]:
        fragment.para(f"Backbone {line}")
    return fragment


def _input_size(description: str) -> str:
    """The backbone's input size as its protocol line states it (``"224 px"``), or "?"."""
    sizes = re.findall(r"(\d+) px", description)
    return f"{sizes[-1]} px" if sizes else "?"


def _benchmark_table(fragment: Fragment, payload: dict, variant: str) -> None:
    """One CheXGenBench-style row per backbone: FID, KID, PRDC of all generated vs all real images (with CIs), the
    real-vs-real floor FID; backbone, n and resolution in the caption and the backbone cell."""
    protocol = payload["protocol"]
    rows = []
    for backbone, comparisons in payload["results"].items():
        entry = comparisons.get("generated vs real", {})
        floor = comparisons.get("real half A vs real half B (floor)", {})
        prdc = entry.get("prdc") or {}
        row = {"backbone (input)": f"{backbone} ({_input_size(protocol['backbones'][backbone])})",
               "n gen, n real": f"{entry.get('n_a', 0)}, {entry.get('n_b', 0)}",
               "FID [CI]": with_ci(entry.get("fid"), 2), "KID×10³ [CI]": with_ci(entry.get("kid"), 2, scale=1e3)}
        for name in PRDC:
            row[f"{name} [CI]"] = with_ci(prdc.get(name), 2) if name in prdc else prdc.get("skipped", "–")
        row["floor FID (n A, n B)"] = (f"{with_ci(floor.get('fid'), 2)} ({floor.get('n_a', 0)}, {floor.get('n_b', 0)})"
                                       if floor else "–")
        rows.append(row)
    if not rows:
        return
    fragment.table(pd.DataFrame(rows), caption=(
        f"Benchmark table (CheXGenBench-style) — {variant}: generated n={protocol['n_generated']} vs "
        f"{protocol['reference']}; images read at {protocol['resolution']} px, then resized to each backbone's "
        f"input; PRDC k={protocol['prdc_k']}"))


def _pathology_table(fragment: Fragment, payload: dict, variant: str) -> None:
    pathology = payload.get("per_pathology") or {}
    findings = list(next(iter(pathology.values()), {}))
    if not findings:
        fragment.para(f"Per-pathology FID/KID: no single-finding prompts in the generated set ({variant}).")
        return
    rows = []
    for finding in findings:
        first = next(iter(pathology.values()))[finding]
        row = {"finding": finding, "n gen": first["n_generated"], "n real": first["n_real"]}
        for backbone, per_finding in pathology.items():
            entry = per_finding[finding]
            size = _input_size(payload["protocol"]["backbones"][backbone])
            row[f"FID {backbone} ({size})"] = entry.get("skipped") or with_ci(entry.get("fid"), 2)
            row[f"KID×10³ {backbone} ({size})"] = entry.get("skipped") or with_ci(entry.get("kid"), 2, scale=1e3)
        rows.append(row)
    fragment.table(pd.DataFrame(rows), caption=(
        f"Per-pathology FID / KID — {variant}: generated single-finding prompts vs "
        f"{payload['protocol']['reference']}, positive for the finding; images read at "
        f"{payload['protocol']['resolution']} px"))


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

