"""Rule ``evaluate_fidelity``: conditional fidelity in the MedCoDi-M Table 3 layout — the in-domain evaluator's
AUROC/F1 per finding on generated images against their prompt labels, a real reference row, and a real-vs-generated
sample grid per finding, as one tracked job."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxrgen.evaluate import metrics as M  # noqa: E402
from cxrgen.evaluate.features import FeatureSet, images_at, load_feature_sets  # noqa: E402
from cxrgen.evaluate.outputs import StagedFiles  # noqa: E402
from cxrgen.evaluate.tables import Fragment, with_ci  # noqa: E402
from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS  # noqa: E402
from cxrgen.report.figures import title_room  # noqa: E402
from cxrgen.train.job import tracked_job, write_json  # noqa: E402


def evaluate_fidelity(*, real_dir: Path | str, generated_dir: Path | str, cfg: dict, seed: int, variant: str,
                      out_json: Path | str, out_html: Path | str, out_figure: Path | str, out_grid: Path | str,
                      out_markdown: Path | str, tracking_json: Path | str | None = None,
                      job_name: str = "evaluate_fidelity") -> dict:
    """Evaluator AUROC/F1 per finding on the generated images against their prompt labels (per prompt set and all
    together) and on the real reference images against their own labels."""
    from cxrgen.evaluate.fidelity import scores_with_intervals

    fcfg = cfg["fidelity"]
    resamples, confidence = int(cfg["bootstrap"]["resamples"]), float(cfg["bootstrap"]["confidence"])
    with tracked_job(tracking_json, job_name, params={"evaluation": cfg, "variant": variant, "seed": seed},
                     tags={"cxrgen.stage": "evaluate_fidelity"}) as job:
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
        files = StagedFiles(job, {"json": out_json, "table": out_html, "figure": out_figure, "grid": out_grid,
                                  "markdown": out_markdown})
        _fidelity_figure(results, files["figure"], variant)
        _finding_grid(reference, generated, int(fcfg["grid_columns"]), int(real_meta["resolution"]), files["grid"],
                      variant)
        fragment = _fidelity_fragment(payload, variant)
        fragment.figure(out_figure, Path(out_markdown).parent, f"AUROC per finding ({variant})")
        fragment.figure(out_grid, Path(out_markdown).parent, f"real vs generated per finding ({variant})")
        fragment.write(files["table"], files["markdown"])
        headline = {}
        for name, result in results.items():
            key = name.replace("generated: ", "gen_").replace(" ", "_")
            for metric in ("auroc", "f1"):
                for average in ("micro", "macro", "weighted"):
                    headline[f"{metric}_{average}/{key}"] = result[metric][average]["value"]
        job.log_metrics(headline)
        payload["mlflow_run_id"] = job.run_id
        write_json(files["json"], payload)
        files.publish(artifacts=["json", "figure", "grid"])
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


def _finding_of(row: pd.Series) -> str | None:
    """The single positive finding of a class-balanced prompt (None if zero or several)."""
    positives = [name for name, column in zip(CHEXPERT_LABELS, LABEL_COLUMNS, strict=True) if row[column] == 1.0]
    return positives[0] if len(positives) == 1 else None


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
    real_images = images_at(real_rows, np.concatenate(picks_real) if picks_real else [], resolution)
    gen_images = images_at(gen_rows, np.concatenate(picks_gen) if picks_gen else [], resolution)
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
    fig.tight_layout(rect=(0, 0, 1, title_room(fig)))
    fig.savefig(path, dpi=90)
    plt.close(fig)

