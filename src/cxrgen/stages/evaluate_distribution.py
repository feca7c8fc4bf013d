"""Rule ``evaluate_distribution``: FID/KID per backbone with the real-vs-real floor
(:mod:`cxrgen.evaluate.distribution`): ``distribution.json`` (numbers + protocol), an HTML table page, a markdown
fragment and a figure, as one tracked job."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxrgen.evaluate import metrics as M  # noqa: E402
from cxrgen.evaluate.backbones import Skipped  # noqa: E402
from cxrgen.evaluate.distribution import BIAS_SHIFT, distribution_metrics  # noqa: E402
from cxrgen.evaluate.features import FeatureSet, load_feature_sets  # noqa: E402
from cxrgen.evaluate.outputs import StagedFiles  # noqa: E402
from cxrgen.evaluate.tables import Fragment, fmt, with_ci  # noqa: E402
from cxrgen.train.job import tracked_job, write_json  # noqa: E402


def evaluate_distribution(*, real_dir: Path | str, generated_dir: Path | str, cfg: dict, seed: int, variant: str,
                          out_json: Path | str, out_html: Path | str, out_figure: Path | str,
                          out_markdown: Path | str, tracking_json: Path | str | None = None,
                          job_name: str = "evaluate_distribution") -> dict:
    """FID and KID of the generated set against the real reference set for every backbone present in both feature
    sets, with the real-vs-real floor and bootstrap intervals."""
    dcfg = cfg["distribution"]
    resamples = int(dcfg["bootstrap_resamples"])
    confidence = float(cfg["bootstrap"]["confidence"])
    with tracked_job(tracking_json, job_name, params={"evaluation": cfg, "variant": variant, "seed": seed},
                     tags={"cxrgen.stage": "evaluate_distribution"}) as job:
        real, real_meta = load_feature_sets(real_dir)
        gen, gen_meta = load_feature_sets(generated_dir)
        reference, generated = real["reference"], gen["generated"]
        subset = _generated_subset(generated, dcfg["sets"])
        groups = reference.rows["patient_pid"].astype(str).to_numpy()
        results, protocol = {}, {}
        for backbone, description in real_meta["backbones"].items():
            if backbone not in generated.features:
                continue
            results[backbone] = distribution_metrics(generated.features[backbone][subset],
                                                     reference.features[backbone], groups, n=cfg["n"],
                                                     kid_cfg=dcfg["kid"], resamples=resamples,
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
        job.log_metrics(headline)
        payload["mlflow_run_id"] = job.run_id
        write_json(files["json"], payload)
        files.publish(artifacts=["json", "figure"])
    return payload


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

