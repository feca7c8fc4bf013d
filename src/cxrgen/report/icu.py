"""The DDL-CXR report (arXiv 2410.17918; issue 13): the cohort against the published one, the ICU outcome tables of
rule evaluate_icu, the paper's claim ("EHR + generated image vs EHR + last image carried forward" by hours since the
last image) with paired intervals, the image quality of the generated later images (rule evaluate_ddl_images), and
notes computed from those numbers (sample sizes, intervals that include zero, absent phenotypes). Every piece may be
missing (a rule switched off, an older run): its section then says so. No torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrgen.evaluate.tables import with_ci

ARM_NAMES = {"ehr": "EHR only (Uni-EHR)", "ehr_last_cxr": "EHR + last CXR carried forward",
             "ddl_cxr": "EHR + last CXR + generated CXR (DDL-CXR)"}
METRIC_NAMES = {"mortality_auroc": "mortality AUROC", "mortality_auprc": "mortality AUPRC",
                "phenotype_macro_auroc": "phenotypes macro AUROC", "phenotype_macro_auprc": "phenotypes macro AUPRC"}
GROUP_NAMES = {"overall": "all", "<12": "< 12 h", "12-24": "12–24 h", "24-36": "24–36 h", ">=36": "≥ 36 h"}
CLAIM = ("ddl_cxr", "ehr_last_cxr")
SPLITS = ("train", "val", "test")
MISSING = "not available in this run"


def _group(name: str) -> str:
    return GROUP_NAMES.get(name, name)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(str(c) for c in row) + " |" for row in rows], ""]


# -------------------------------------------------------------------------------------------------------- cohort


def cohort_section(cohort: dict | None) -> list[str]:
    """Stays / subjects / pairs / mortality per split, ours next to the published split, and the MIMIC-IV version."""
    lines = ["## Cohort", ""]
    if not cohort:
        return lines + [f"Cohort summary (cohort.json) {MISSING}.", ""]
    published = cohort.get("published") or {}
    lines += [f"MIMIC-IV {cohort.get('mimic_iv_version', '?')} layout (published cohort: MIMIC-IV "
              f"{published.get('mimic_iv_version', '?')}). Stays after each filter: "
              + ", ".join(f"{s['step']} {s['stays']}" for s in cohort.get("stay_steps", [])) + ".", ""]
    rows = []
    for key, label in (("prediction_stays", "prediction stays"), ("prediction_subjects", "subjects"),
                       ("pairs", "image pairs"), ("mortality_rate", "in-hospital mortality")):
        ours, theirs = cohort.get(key) or {}, published.get(key) or {}
        as_rate = key == "mortality_rate"

        def cell(entry: dict, split: str, as_rate: bool = as_rate) -> str:
            value = entry.get(split)
            if value is None:
                return "–"
            return f"{100 * value:.1f} %" if as_rate else str(value)

        for split in SPLITS:
            rows.append([label, split, cell(ours, split), cell(theirs, split)])
    lines += _table(["count", "split", "this run", "published (DDL-CXR)"], rows)
    if "pair_ehr_hours_median" in cohort:
        lines += [f"Median EHR hours between the images of a pair: {cohort['pair_ehr_hours_median']} (published "
                  f"{published.get('pair_ehr_hours_median', '–')}).", ""]
    return lines


# ------------------------------------------------------------------------------------------------------ outcomes


def outcome_section(results: dict | None) -> list[str]:
    """The poster's tables: every arm × metric per group (overall and by hours since the last CXR)."""
    lines = ["## ICU outcome prediction", ""]
    if not results:
        return lines + [f"ICU outcome results (icu_results.json) {MISSING}.", ""]
    metrics = results.get("metrics") or list(METRIC_NAMES)
    seeds = results.get("seeds") or {}
    lines += [f"{results.get('split', 'test')} split; seeds per arm: "
              + ", ".join(f"{a} {len(s)}" for a, s in seeds.items()) + f"; {results.get('bootstrap', '')}; "
              f"{results.get('pooling', '')}.", ""]
    rows = []
    for group, entry in (results.get("groups") or {}).items():
        for arm, values in (entry.get("arms") or {}).items():
            rows.append([_group(group), entry.get("n", "–"), ARM_NAMES.get(arm, arm),
                         *[with_ci(values.get(m)) for m in metrics]])
    if not rows:
        return lines + ["No group has predictions.", ""]
    return lines + _table(["hours since last CXR", "n", "arm", *[METRIC_NAMES.get(m, m) for m in metrics]], rows)


def claim_rows(results: dict | None, claim: tuple[str, str] = CLAIM) -> list[dict]:
    """One row per group × metric of "first arm vs second arm": both values, the paired difference with its interval
    and whether the interval excludes zero (None when not computable)."""
    if not results:
        return []
    name = f"{claim[0]} vs {claim[1]}"
    rows = []
    for group, entry in (results.get("groups") or {}).items():
        arms, diff = entry.get("arms") or {}, (entry.get("comparisons") or {}).get(name)
        if diff is None or claim[0] not in arms or claim[1] not in arms:
            continue
        for metric in results.get("metrics") or METRIC_NAMES:
            d = diff.get(metric) or {}
            low, high = d.get("ci_low"), d.get("ci_high")
            rows.append({"group": group, "n": entry.get("n"), "metric": metric,
                         "first": arms[claim[0]].get(metric), "second": arms[claim[1]].get(metric), "difference": d,
                         "excludes_zero": None if low is None or high is None else bool(low > 0 or high < 0)})
    return rows


def claim_section(results: dict | None) -> list[str]:
    lines = ["## EHR + generated image vs EHR + last image carried forward (the paper's claim)", ""]
    rows = claim_rows(results)
    if not rows:
        return lines + [f"The paired comparison {CLAIM[0]} vs {CLAIM[1]} is {MISSING}.", ""]
    lines += ["By hours since the last CXR at prediction time; difference = DDL-CXR − last CXR carried forward on the "
              "same bootstrap draws of the test stays (paired).", ""]
    table = [[_group(r["group"]), r["n"], METRIC_NAMES.get(r["metric"], r["metric"]), with_ci(r["second"]),
              with_ci(r["first"]), with_ci(r["difference"]),
              {True: "yes", False: "no", None: "–"}[r["excludes_zero"]]] for r in rows]
    return lines + _table(["hours since last CXR", "n", "metric", "EHR + last CXR", "EHR + generated (DDL-CXR)",
                           "difference [CI]", "CI excludes 0"], table)


# ------------------------------------------------------------------------------------------------- image quality


def image_quality_section(quality: dict | None) -> list[str]:
    lines = ["## Image quality of the generated later images (not reported by the paper)", ""]
    if not quality:
        return lines + [f"Image-quality results (evaluation_images.json) {MISSING}.", ""]
    from cxrgen.icu.image_quality import image_quality_markdown

    try:
        return lines + [image_quality_markdown(quality).rstrip(), ""]
    except (KeyError, TypeError) as err:
        return lines + [f"evaluation_images.json is incomplete ({type(err).__name__}: {err}).", ""]


# --------------------------------------------------------------------------------------------------------- notes


def notes(cohort: dict | None, results: dict | None, quality: dict | None) -> list[str]:
    """Caveats computed from the numbers, never written in advance."""
    out = []
    if cohort:
        stays, published = cohort.get("prediction_stays") or {}, (cohort.get("published") or {}).get(
            "prediction_stays") or {}
        test, ref = stays.get("test"), published.get("test")
        if test is not None and ref:
            out.append(f"Test stays: {test} here vs {ref} published ({100 * test / ref:.1f} %); intervals are "
                       f"correspondingly wider and the numbers are not comparable with the paper's.")
        rate = (cohort.get("mortality_rate") or {}).get("test")
        if test is not None and rate is not None:
            out.append(f"In-hospital deaths among the test stays: {round(test * rate)} of {test}; the mortality "
                       "AUROC/AUPRC rest on that many positives.")
        prevalence = cohort.get("phenotype_prevalence") or {}
        absent = sorted(k for k, v in prevalence.items() if not v)
        if absent:
            out.append(f"{len(absent)} of {len(prevalence)} phenotypes have no positive stay in the cohort "
                       f"({', '.join(absent)}): the macro averages run over the others only.")
    if results:
        groups = results.get("groups") or {}
        small = [f"{_group(g)} n={e.get('n')}" for g, e in groups.items() if g != "overall" and e.get("n") is not None]
        if small:
            out.append("Stays per hours-since-last-CXR group: " + ", ".join(small) + ".")
        rows = [r for r in claim_rows(results) if r["excludes_zero"] is not None]
        if rows:
            better = sum(r["excludes_zero"] and r["difference"]["value"] > 0 for r in rows)
            worse = sum(r["excludes_zero"] and r["difference"]["value"] < 0 for r in rows)
            out.append(f"DDL-CXR vs last CXR carried forward: {len(rows) - better - worse} of {len(rows)} paired "
                       f"differences (groups × metrics) have an interval that includes 0; above 0 (DDL-CXR better): "
                       f"{better}, below 0 (last CXR better): {worse}.")
        seeds = {len(s) for s in (results.get("seeds") or {}).values()}
        if seeds:
            out.append(f"Predictor seeds per arm: {', '.join(str(s) for s in sorted(seeds))} (pooled: mean of the "
                       "seeds' metric on the same stays).")
    if quality:
        errors = (quality.get("errors") or {}).get("pixel_mse") or {}
        diff = (errors.get("vs_prior") or {}).get("generated") or {}
        if diff.get("ci_low") is not None:
            verdict = ("lower than" if diff["ci_high"] < 0 else "higher than" if diff["ci_low"] > 0
                       else "not distinguishable from")
            out.append(f"Image quality: the generated later images' pixel MSE to the real later image is {verdict} "
                       f"the prior image's ({with_ci(diff, 4)}, {quality.get('n_pairs')} pairs).")
        agreement = (quality.get("classifier") or {}).get("vs_prior", {}).get("generated") or {}
        if agreement.get("ci_low") is not None:
            out.append(f"Evaluator macro AUROC on generated minus on prior images: {with_ci(agreement)} over "
                       f"{len(quality['classifier'].get('evaluable_findings', []))} evaluable finding(s).")
    if not out:
        return []
    return ["## Notes", "", *[f"- {line}" for line in out], ""]


def icu_markdown(cohort: dict | None, results: dict | None, quality: dict | None, *, figure: str | None = None,
                 grid: str | None = None) -> str:
    """The report fragment ``icu.md`` (``figure``/``grid``: relative links to the figures)."""
    lines = ["# DDL-CXR: dynamic CXR generation for ICU outcome prediction", "",
             "Yao, Liu et al., arXiv 2410.17918; the cohort, models and evaluation of issue 13.", ""]
    lines += cohort_section(cohort)
    lines += outcome_section(results)
    lines += claim_section(results)
    if figure and results:
        lines += [f"![AUROC/AUPRC per arm by hours since the last CXR]({figure})", ""]
    lines += image_quality_section(quality)
    if grid and quality:
        lines += [f"![prior | generated | real later]({grid})", ""]
    lines += notes(cohort, results, quality)
    return "\n".join(lines).rstrip() + "\n"


# -------------------------------------------------------------------------------------------------------- figure


def icu_figure(results: dict | None, path: Path | str) -> None:
    """AUROC/AUPRC for mortality and macro phenotypes (one panel each), per arm with intervals, by hours since the
    last CXR (the poster's tables as a plot). Without results: a panel saying so."""
    from cxrgen.report.figures import _pyplot

    plt = _pyplot()
    metrics = (results or {}).get("metrics") or list(METRIC_NAMES)
    groups = list((results or {}).get("groups") or {})
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    arms = sorted({arm for g in groups for arm in (results["groups"][g].get("arms") or {})},
                  key=lambda a: list(ARM_NAMES).index(a) if a in ARM_NAMES else len(ARM_NAMES))
    width = 0.8 / max(1, len(arms))
    for ax, metric in zip(axes[0], metrics, strict=True):
        for k, arm in enumerate(arms):
            x, y, low, high = [], [], [], []
            for i, group in enumerate(groups):
                entry = ((results["groups"][group].get("arms") or {}).get(arm) or {}).get(metric) or {}
                if entry.get("value") is None:
                    continue
                x.append(i + (k - (len(arms) - 1) / 2) * width)
                y.append(entry["value"])
                low.append(entry["value"] - (entry.get("ci_low") if entry.get("ci_low") is not None
                                             else entry["value"]))
                high.append((entry.get("ci_high") if entry.get("ci_high") is not None else entry["value"])
                            - entry["value"])
            ax.errorbar(x, y, yerr=[np.maximum(low, 0), np.maximum(high, 0)], fmt="o", capsize=3, ms=4,
                        label=ARM_NAMES.get(arm, arm))
        ax.set_xticks(range(len(groups)),
                      [f"{_group(g)}\nn={results['groups'][g].get('n', '?')}" for g in groups], fontsize=8)
        ax.set_title(METRIC_NAMES.get(metric, metric), fontsize=10)
        ax.set_xlabel("hours since the last CXR", fontsize=8)
        if metric.endswith("auroc"):
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_ylim(0, 1.02)
        if not groups:
            ax.text(0.5, 0.5, f"ICU outcome results {MISSING}", ha="center", va="center", fontsize=8,
                    transform=ax.transAxes)
    if arms:
        axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"DDL-CXR ICU outcome prediction ({(results or {}).get('split', 'test')} split; "
                 f"{(results or {}).get('bootstrap', 'no intervals')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

