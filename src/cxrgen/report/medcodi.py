"""The MedCoDi-M (XGeM) report (Molino et al., arXiv 2501.04614; issue 12): the study counts, the prompt encoders'
cross-modal retrieval, the paper's Tables 2-6 and Fig. 7 from the evaluation json files of the MedCoDi-M branch, both
prompting modes (multi-prompt MedCoDi-M and the single-prompt MedCoDi ablation) side by side, and caveats computed
from the numbers. Every input may be missing (a rule switched off, an older run): a missing value prints "–", a
missing file is said to be missing; no number is ever filled in. No torch.

Input shapes (the issue-12 evaluation contract)::

    images/{view}-{prompting}.json  {"view", "prompting", "directions": {"T->F": {"n", "fid": {backbone: {"value",
                                     "ci": [lo, hi]}}, "kid": {...}, "classification": {"auroc": {label: f, "micro",
                                     "macro", "weighted"}, "f1": {...}}}}}   (+ optional "real": {"n",
                                     "classification": {...}}: the classifier on the real test films, Table 3's row)
    reports/{prompting}.json        {"prompting", "directions": {"F->T": {"n", "bleu": {"1".."4"}, "labeler_f1": {...}}}}
    joint.json                      {"similarity": {"T->F+L": {"n", "independent": {"mean", "ci"}, "joint": {...},
                                     "difference": {...}}}, "hamming": {"pair", "labels", "independent": {d: count},
                                     "joint": {d: count}, "mean_independent", "mean_joint"}}

Any of them may carry a ``"config"`` dict (the settings the evaluating rule ran with); the tables quote it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cxrgen.evaluate.tables import fmt

TITLE = "MedCoDi-M (XGeM)"
PAPER = ("Molino et al., *Any-to-any generation of chest X-rays and reports* (MedCoDi-M), arXiv 2501.04614; the "
         "paper's later version is titled **XGeM** (same method), so search for either name.")
VIEWS = ("frontal", "lateral")
IMAGE_DIRECTIONS = {"frontal": ("T->F", "L->F", "L+T->F"), "lateral": ("T->L", "F->L", "F+T->L")}
ALL_IMAGE_DIRECTIONS = (*IMAGE_DIRECTIONS["frontal"], *IMAGE_DIRECTIONS["lateral"])
REPORT_DIRECTIONS = ("F->T", "L->T", "F+L->T")
JOINT_DIRECTIONS = ("T->F+L", "L->F+T", "F->L+T")
PROMPTINGS = {"single": "MedCoDi (single)", "multi": "MedCoDi-M (multi)"}  # the paper's row order
AVERAGES = ("micro", "macro", "weighted")
RETRIEVAL_DIRECTIONS = ("frontal->report", "report->frontal", "lateral->report", "report->lateral",
                        "frontal->lateral", "lateral->frontal")
RETRIEVAL_KS = (1, 5, 10)
MISSING = "not available in this run"
DASH = "–"


@dataclass
class MedcodiInputs:
    """Everything the report reads; ``None`` / absent keys = not available."""

    studies: dict | None = None  # studies.json of rule build_study_table
    encoders: dict | None = None  # metrics.json of rule train_prompt_encoders
    models: dict[str, dict | None] = field(default_factory=dict)  # model name -> its metrics.json
    images: dict[tuple[str, str], dict | None] = field(default_factory=dict)  # (view, prompting) -> eval json
    reports: dict[str, dict | None] = field(default_factory=dict)  # prompting -> eval json
    joint: dict | None = None  # joint.json


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(str(c) for c in row) + " |" for row in rows], ""]


def value_ci(entry: dict | None, key: str = "value", digits: int = 3) -> str:
    """``value [lo, hi]`` of a contract ``{"value"|"mean": f, "ci": [lo, hi]}`` entry; "–" when absent."""
    if not isinstance(entry, dict) or entry.get(key) is None:
        return DASH
    ci = entry.get("ci")
    if not ci or len(ci) != 2 or ci[0] is None or ci[1] is None:
        return fmt(float(entry[key]), digits)
    return f"{fmt(float(entry[key]), digits)} [{fmt(float(ci[0]), digits)}, {fmt(float(ci[1]), digits)}]"


def _number(value, digits: int = 3) -> str:
    return DASH if value is None else fmt(float(value), digits)


def _config_line(what: str, *payloads: dict | None) -> str:
    """"Produced by ...": the rule and, when the json carries one, the settings it ran with."""
    configs = [json.dumps(p["config"], sort_keys=True) for p in payloads if isinstance(p, dict) and p.get("config")]
    settings = f" Settings: `{'`; `'.join(dict.fromkeys(configs))}`." if configs else ""
    return f"*Produced by {what}.*{settings}"


def _direction(payload: dict | None, direction: str) -> dict | None:
    if not isinstance(payload, dict):
        return None
    return (payload.get("directions") or {}).get(direction)


# ------------------------------------------------------------------------------------------------------------ data


def data_section(studies: dict | None) -> list[str]:
    lines = ["## Data", ""]
    if not studies:
        return lines + [f"Study counts (studies.json) {MISSING}.", ""]
    splits = studies.get("per_split") or {}
    lines += [f"{studies.get('studies', DASH)} studies (" + ", ".join(f"{k} {v}" for k, v in splits.items())
              + "); per source: " + ", ".join(f"{k} {v}" for k, v in (studies.get("per_source") or {}).items())
              + ". A study counts for a direction only when it has every modality the direction needs.", ""]
    combos = studies.get("per_split_combination") or {}
    names = sorted({c for per in combos.values() for c in per} | set(studies.get("per_combination") or {}))
    if names:
        rows = [[name, *[(combos.get(s) or {}).get(name, 0) for s in splits],
                 (studies.get("per_combination") or {}).get(name, DASH)] for name in names]
        lines += _table(["modalities", *splits, "all"], rows)
    return lines + [_config_line("rule build_study_table (config key medcodi.sources)", studies), ""]


# -------------------------------------------------------------------------------------------------- prompt encoders


def retrieval_section(encoders: dict | None) -> list[str]:
    lines = ["## Shared latent space: cross-modal retrieval of the prompt encoders", ""]
    retrieval = (encoders or {}).get("retrieval")
    if not retrieval:
        return lines + [f"Prompt-encoder retrieval (prompt_encoders/metrics.json) {MISSING}.", ""]
    lines += ["Recall@k of the study's own item among the split's candidates (identical report texts count as one "
              "candidate); chance level of a random ranking in brackets.", ""]
    rows = []
    for split, by_direction in retrieval.items():
        for direction in RETRIEVAL_DIRECTIONS:
            r = by_direction.get(direction) or {}
            cells = []
            for k in RETRIEVAL_KS:
                value, chance = r.get(f"recall_at_{k}"), r.get(f"recall_at_{k}_chance")
                cells.append(DASH if value is None else f"{_number(value)} ({_number(chance)})")
            rows.append([split, direction, DASH if r.get("queries") is None else int(r["queries"]), *cells])
    lines += _table(["split", "query -> gallery", "queries", *[f"R@{k}" for k in RETRIEVAL_KS]], rows)
    return lines + [_config_line(f"rule train_prompt_encoders ({encoders.get('steps', DASH)} steps, embedding "
                                 f"size {encoders.get('embed_dim', DASH)}, {encoders.get('resolution', DASH)} px)"),
                    ""]


def models_section(models: dict[str, dict | None]) -> list[str]:
    lines = ["## Models", ""]
    if not models:
        return lines + [f"Model metrics {MISSING}.", ""]
    rows = [[name, (m or {}).get("steps", DASH), (m or {}).get("n_train", DASH), (m or {}).get("parameters", DASH),
             _number((m or {}).get("final_loss"), 4), _number((m or {}).get("seconds_per_step"), 3)]
            for name, m in models.items()]
    lines += _table(["model", "steps", "training items", "parameters", "final train loss", "s / step"], rows)
    return lines + [_config_line("the training rules (config sections medcodi.ldm, medcodi.text_vae, "
                                 "medcodi.report_diffusion; each model's metrics.json and MLflow run)"), ""]


# ------------------------------------------------------------------------------------------------------- images


def backbones(images: dict[tuple[str, str], dict | None], metric: str = "fid") -> list[str]:
    """The feature backbones of ``metric`` in any image json, first-seen order."""
    found: dict[str, None] = {}
    for payload in images.values():
        for entry in ((payload or {}).get("directions") or {}).values():
            found.update(dict.fromkeys((entry or {}).get(metric) or {}))
    return list(found)


def image_quality_rows(images: dict[tuple[str, str], dict | None], metric: str, backbone: str) -> list[list[str]]:
    """Table 2: one row per prompting mode, one cell per image direction (value [CI] of ``metric``/``backbone``)."""
    rows = []
    for prompting, name in PROMPTINGS.items():
        cells = []
        for view, directions in IMAGE_DIRECTIONS.items():
            for direction in directions:
                entry = _direction(images.get((view, prompting)), direction) or {}
                cells.append(value_ci((entry.get(metric) or {}).get(backbone), digits=4 if metric == "kid" else 2))
        rows.append([name, *cells])
    return rows


def image_n_rows(images: dict[tuple[str, str], dict | None]) -> list[list]:
    rows = []
    for prompting, name in PROMPTINGS.items():
        rows.append([name, *[(_direction(images.get((view, prompting)), d) or {}).get("n", DASH)
                             for view, directions in IMAGE_DIRECTIONS.items() for d in directions]])
    return rows


def image_section(images: dict[tuple[str, str], dict | None]) -> list[str]:
    lines = ["## Table 2: image generation quality (FID, KID)", ""]
    if not any(images.values()):
        return lines + [f"Image evaluations (eval/images/*.json) {MISSING}.", ""]
    lines += ["Rows: the single-prompt ablation (MedCoDi) and multi-prompt training (MedCoDi-M); columns: the six "
              "image directions (T = report impression, F = frontal, L = lateral). Generated vs real test films of "
              "the target view; value [95 % bootstrap interval]; lower is better.", ""]
    header = ["model", *ALL_IMAGE_DIRECTIONS]
    for metric in ("fid", "kid"):
        for backbone in backbones(images, metric):
            lines += [f"**{metric.upper()}, {backbone} features**", ""]
            lines += _table(header, image_quality_rows(images, metric, backbone))
    lines += ["**Test studies per direction (n)**", ""] + _table(header, image_n_rows(images))
    present = [images[k] for k in images if images[k]]
    return lines + [_config_line("rules generate_medcodi_images + evaluate_medcodi_images on "
                                 "results/medcodi/ldm/{view}-{prompting}", *present), ""]


def classification_labels(images: dict[tuple[str, str], dict | None], metric: str) -> list[str]:
    """Labels of the frontal classification tables (first-seen order), the averages last."""
    found: dict[str, None] = {}
    for prompting in PROMPTINGS:
        payload = images.get(("frontal", prompting)) or {}
        entries = [*((payload.get("directions") or {}).values()), payload.get("real") or {}]
        for entry in entries:
            found.update(dict.fromkeys(((entry or {}).get("classification") or {}).get(metric) or {}))
    return [k for k in found if k not in AVERAGES] + list(AVERAGES)


def _real_classification(images: dict[tuple[str, str], dict | None]) -> dict | None:
    for prompting in PROMPTINGS:
        real = (images.get(("frontal", prompting)) or {}).get("real")
        if isinstance(real, dict) and real.get("classification"):
            return real
    return None


def classification_rows(images: dict[tuple[str, str], dict | None], metric: str) -> list[list[str]]:
    """Table 3 (frontal): model × direction rows and the Real Data row, one column per label and average."""
    labels = classification_labels(images, metric)
    rows = []
    for prompting, name in PROMPTINGS.items():
        for direction in IMAGE_DIRECTIONS["frontal"]:
            entry = _direction(images.get(("frontal", prompting)), direction) or {}
            values = (entry.get("classification") or {}).get(metric) or {}
            rows.append([name, direction, entry.get("n", DASH), *[_number(values.get(k)) for k in labels]])
    real = _real_classification(images) or {}
    values = (real.get("classification") or {}).get(metric) or {}
    rows.append(["Real Data", DASH, real.get("n", DASH), *[_number(values.get(k)) for k in labels]])
    return rows


def classification_section(images: dict[tuple[str, str], dict | None]) -> list[str]:
    lines = ["## Table 3: classification of generated frontal films (AUROC, F1)", ""]
    frontal = [images.get(("frontal", p)) for p in PROMPTINGS]
    if not any(frontal):
        return lines + [f"Frontal image evaluations {MISSING}.", ""]
    lines += ["The project's evaluator classifier on the generated frontal films, scored against the labels of the "
              "prompting study; Real Data = the same classifier on the real test films.", ""]
    for metric, title in (("auroc", "AUROC"), ("f1", "F1")):
        labels = classification_labels(images, metric)
        lines += [f"**{title}**", ""]
        lines += _table(["model", "direction", "n", *labels], classification_rows(images, metric))
    if _real_classification(images) is None:
        lines += ["The Real Data row is missing: the image evaluation did not record the classifier on real films.",
                  ""]
    return lines + [_config_line("rule evaluate_medcodi_images (frontal)", *frontal), ""]


# ------------------------------------------------------------------------------------------------------ reports


def bleu_rows(reports: dict[str, dict | None]) -> list[list[str]]:
    rows = []
    for prompting, name in PROMPTINGS.items():
        for direction in REPORT_DIRECTIONS:
            entry = _direction(reports.get(prompting), direction) or {}
            bleu = entry.get("bleu") or {}
            rows.append([name, direction, entry.get("n", DASH), *[_number(bleu.get(str(k))) for k in (1, 2, 3, 4)]])
    return rows


def labeler_labels(reports: dict[str, dict | None]) -> list[str]:
    """The json's own ``labels`` order when it gives one, else first-seen order; the averages last."""
    found: dict[str, None] = {}
    for payload in reports.values():
        found.update(dict.fromkeys((payload or {}).get("labels") or []))
    for payload in reports.values():
        for entry in ((payload or {}).get("directions") or {}).values():
            found.update(dict.fromkeys((entry or {}).get("labeler_f1") or {}))
    return [k for k in found if k not in AVERAGES] + list(AVERAGES)


def labeler_rows(reports: dict[str, dict | None]) -> list[list[str]]:
    labels = labeler_labels(reports)
    rows = []
    for prompting, name in PROMPTINGS.items():
        for direction in REPORT_DIRECTIONS:
            entry = _direction(reports.get(prompting), direction) or {}
            f1 = entry.get("labeler_f1") or {}
            rows.append([name, direction, entry.get("n", DASH), *[_number(f1.get(k)) for k in labels]])
    reference = next((p["reference"] for p in reports.values() if isinstance((p or {}).get("reference"), dict)),
                     None)
    if reference is not None:  # the labeler's own ceiling: real reports vs the dataset labels
        f1 = reference.get("labeler_f1") or {}
        rows.append(["Real reports", DASH, reference.get("n", DASH), *[_number(f1.get(k)) for k in labels]])
    return rows


def examples_lines(reports: dict[str, dict | None], count: int = 3) -> list[str]:
    """A few generated impressions next to their reference (the json's ``examples``), multi-prompt first."""
    lines = []
    for prompting in ("multi", "single"):
        for example in ((reports.get(prompting) or {}).get("examples") or [])[:count]:
            generated = example.get("generated") or {}
            lines.append(f"- {PROMPTINGS[prompting]}, reference: “{example.get('reference', '')}”; "
                         + "; ".join(f"{d}: “{generated[d]}”" for d in REPORT_DIRECTIONS if d in generated))
    return ["**Examples**", "", *lines, ""] if lines else []


def report_sections(reports: dict[str, dict | None]) -> list[str]:
    lines = ["## Table 4: report generation (BLEU)", ""]
    present = [reports[p] for p in PROMPTINGS if reports.get(p)]
    if not present:
        return lines + [f"Report evaluations (eval/reports/*.json) {MISSING}.", "",
                        "## Table 5: labeler F1 of generated reports", "", f"Report evaluations {MISSING}.", ""]
    lines += ["Generated vs reference impression of the test study, corpus BLEU-1..4.", ""]
    lines += _table(["model", "direction", "n", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"], bleu_rows(reports))
    produced = _config_line("rules generate_medcodi_reports + evaluate_medcodi_reports on "
                            "results/medcodi/report_diffusion/{prompting} and results/medcodi/text_vae", *present)
    lines += [produced, "", "## Table 5: labeler F1 of generated reports", "",
              "The project's report labeler on the generated impression vs the labels of the test study.", ""]
    lines += _table(["model", "direction", "n", *labeler_labels(reports)], labeler_rows(reports))
    if any(isinstance((p or {}).get("reference"), dict) for p in reports.values()):
        lines += ["Real reports = the labeler on the real impressions vs the dataset labels of those studies (the "
                  "labeler's own ceiling).", ""]
    return lines + [produced, ""] + examples_lines(reports)


# -------------------------------------------------------------------------------------------------------- joint


def _excludes_zero(entry: dict | None) -> str:
    ci = (entry or {}).get("ci")
    if not ci or len(ci) != 2 or ci[0] is None or ci[1] is None:
        return DASH
    return "yes" if ci[0] > 0 or ci[1] < 0 else "no"


def joint_rows(joint: dict | None) -> list[list[str]]:
    similarity = (joint or {}).get("similarity") or {}
    rows = []
    for direction in JOINT_DIRECTIONS:
        entry = similarity.get(direction) or {}
        rows.append([direction, entry.get("n", DASH), value_ci(entry.get("independent"), "mean"),
                     value_ci(entry.get("joint"), "mean"), value_ci(entry.get("difference"), "mean"),
                     _excludes_zero(entry.get("difference"))])
    return rows


def hamming_rows(hamming: dict) -> list[list]:
    independent, joint = hamming.get("independent") or {}, hamming.get("joint") or {}
    distances = sorted({int(d) for d in (*independent, *joint)})
    return [[d, independent.get(str(d), independent.get(d, 0)), joint.get(str(d), joint.get(d, 0))]
            for d in distances]


def joint_section(joint: dict | None, figure: str | None = None) -> list[str]:
    lines = ["## Table 6: joint vs independent generation (cosine similarity in the shared space)", ""]
    if not joint:
        return lines + [f"Joint-generation results (eval/joint.json) {MISSING}.", ""]
    lines += ["Multi-prompt models. The two generated outputs of a test study are embedded by the prompt encoders; "
              "the cosine similarity of the pair, generated jointly (cross-modal latent alignment, paper §2.3) or "
              "independently. Difference = joint − independent on the same studies, with its 95 % interval.", ""]
    lines += _table(["direction", "n", "independent", "joint", "difference [CI]", "CI excludes 0"], joint_rows(joint))
    produced = _config_line("rules train_joint_alignment + evaluate_joint_generation (multi prompting)", joint)
    lines += [produced, ""]
    hamming = joint.get("hamming")
    lines += ["## Fig. 7: Hamming distance between generated image and generated report labels", ""]
    if not hamming:
        return lines + [f"Hamming distances {MISSING}.", ""]
    labels = hamming.get("labels") or []
    lines += [f"Pair {hamming.get('pair', DASH)}: the evaluator's labels of the generated image vs the report "
              f"labeler's labels of the generated report, over {len(labels)} labels; mean distance independent "
              f"{_number(hamming.get('mean_independent'), 2)}, joint {_number(hamming.get('mean_joint'), 2)}.", ""]
    if figure:
        lines += [f"![Hamming distance histogram, independent vs joint]({figure})", ""]
    lines += _table(["Hamming distance", "independent", "joint"], hamming_rows(hamming))
    return lines + [produced, ""]


# -------------------------------------------------------------------------------------------------------- notes


def notes(inputs: MedcodiInputs) -> list[str]:
    """Caveats computed from the numbers: n per direction, directions without results, demo scale."""
    out = []
    ns = {}
    for (view, prompting), payload in inputs.images.items():
        for direction in IMAGE_DIRECTIONS[view]:
            entry = _direction(payload, direction)
            if entry and entry.get("n") is not None:
                ns[f"{direction} ({prompting})"] = int(entry["n"])
    for prompting, payload in inputs.reports.items():
        for direction in REPORT_DIRECTIONS:
            entry = _direction(payload, direction)
            if entry and entry.get("n") is not None:
                ns[f"{direction} ({prompting})"] = int(entry["n"])
    for direction, entry in ((inputs.joint or {}).get("similarity") or {}).items():
        if entry and entry.get("n") is not None:
            ns[f"{direction} (joint)"] = int(entry["n"])
    if ns:
        out.append("Test studies per direction: " + ", ".join(f"{k} n={v}" for k, v in ns.items())
                   + f" (smallest {min(ns.values())}); FID/KID on so few films are strongly biased and their "
                   "intervals wide.")
    absent = [f"{d} ({p})" for p in PROMPTINGS for view in VIEWS for d in IMAGE_DIRECTIONS[view]
              if not (_direction(inputs.images.get((view, p)), d) or {}).get("n")]
    absent += [f"{d} ({p})" for p in PROMPTINGS for d in REPORT_DIRECTIONS
               if not (_direction(inputs.reports.get(p), d) or {}).get("n")]
    if absent:
        out.append(f"No results for {len(absent)} direction(s): {', '.join(absent)} (shown as –).")
    if inputs.studies and inputs.studies.get("studies") is not None:
        out.append(f"{inputs.studies['studies']} studies in all, against the paper's MIMIC-CXR studies with both "
                   "views and a report: demo-scale data, CPU-sized models trained for "
                   + ", ".join(f"{name} {m.get('steps')}" for name, m in inputs.models.items()
                               if m and m.get("steps") is not None)
                   + " steps; the numbers show that the protocol runs, not the paper's results.")
    if not out:
        return []
    return ["## Notes", "", *[f"- {line}" for line in out], ""]


# ------------------------------------------------------------------------------------------------------ document


def medcodi_markdown(inputs: MedcodiInputs, *, hamming_figure: str | None = None, fid_figure: str | None = None,
                     grids: dict[str, str] | None = None) -> str:
    """The report fragment ``medcodi.md`` (figure arguments: relative links)."""
    lines = [f"# {TITLE}", "", PAPER, "",
             "Frontal film, lateral film and report impression as three modalities in one shared space; any subset "
             "generates any other. MedCoDi-M = multi-prompt training; MedCoDi = the single-prompt ablation.", ""]
    lines += data_section(inputs.studies)
    lines += retrieval_section(inputs.encoders)
    lines += models_section(inputs.models)
    lines += image_section(inputs.images)
    if fid_figure and any(inputs.images.values()):
        lines += [f"![FID per image direction, both prompting modes]({fid_figure})", ""]
    for name, link in (grids or {}).items():
        if inputs.images.get(tuple(name.split("-", 1))):
            lines += [f"![generated samples, {name}]({link})", ""]
    lines += classification_section(inputs.images)
    lines += report_sections(inputs.reports)
    lines += joint_section(inputs.joint, hamming_figure)
    lines += notes(inputs)
    return "\n".join(lines).rstrip() + "\n"


def summary_markdown(inputs: MedcodiInputs, full_report: str) -> str:
    """The short MedCoDi-M paragraph of ``results/summary.md``: the headline numbers and a link to the full report."""
    lines = [f"# {TITLE}", "", f"Any-to-any generation of frontal film, lateral film and report (arXiv 2501.04614; "
             f"later titled XGeM). Full report: [{Path(full_report).name}]({full_report}).", ""]
    before = len(lines)
    fid = backbones(inputs.images, "fid")
    if fid:
        lines += [f"FID ({fid[0]} features), value [95 % CI]:", ""]
        lines += _table(["model", *ALL_IMAGE_DIRECTIONS], image_quality_rows(inputs.images, "fid", fid[0]))
    if any(inputs.reports.values()):
        bleu4 = [[name, *[_number(((_direction(inputs.reports.get(p), d) or {}).get("bleu") or {}).get("4"))
                          for d in REPORT_DIRECTIONS]] for p, name in PROMPTINGS.items()]
        lines += ["BLEU-4 of generated impressions:", ""] + _table(["model", *REPORT_DIRECTIONS], bleu4)
    if inputs.joint and inputs.joint.get("similarity"):
        lines += ["Joint − independent cosine similarity: " + ", ".join(
            f"{r[0]} {r[4]}" for r in joint_rows(inputs.joint)) + ".", ""]
    if len(lines) == before:
        lines += [f"MedCoDi-M evaluation results {MISSING}.", ""]
    return "\n".join(lines).rstrip() + "\n"


def medcodi_summary_json(inputs: MedcodiInputs) -> dict:
    """``medcodi.json``: the tables' cells as data (strings as printed, "–" where missing) plus the raw inputs."""
    fid = {b: image_quality_rows(inputs.images, "fid", b) for b in backbones(inputs.images, "fid")}
    return {"title": TITLE, "paper": "arXiv 2501.04614 (later version: XGeM)",
            "tables": {"table2_fid": {b: {r[0]: dict(zip(ALL_IMAGE_DIRECTIONS, r[1:], strict=True)) for r in rows}
                                      for b, rows in fid.items()},
                       "table4_bleu": [dict(zip(["model", "direction", "n", "1", "2", "3", "4"], r, strict=True))
                                       for r in bleu_rows(inputs.reports)],
                       "table6_joint": [dict(zip(["direction", "n", "independent", "joint", "difference",
                                                  "excludes_zero"], r, strict=True)) for r in joint_rows(inputs.joint)]},
            "inputs": {"studies": inputs.studies, "models": inputs.models,
                       "images": {f"{v}-{p}": d for (v, p), d in inputs.images.items()},
                       "reports": inputs.reports, "joint": inputs.joint}}


# ------------------------------------------------------------------------------------------------------- figures


def fid_figure(images: dict[tuple[str, str], dict | None], path: Path | str) -> None:
    """FID per image direction with intervals, both prompting modes, one panel per backbone (a panel saying the
    results are missing without them)."""
    from cxrgen.report.figures import _pyplot

    plt = _pyplot()
    names = backbones(images, "fid") or [None]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.4), squeeze=False)
    for ax, backbone in zip(axes[0], names, strict=True):
        if backbone is None:
            ax.text(0.5, 0.5, f"MedCoDi-M image evaluations {MISSING}", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_axis_off()
            continue
        for k, (prompting, label) in enumerate(PROMPTINGS.items()):
            x, y, err = [], [], [[], []]
            for i, direction in enumerate(ALL_IMAGE_DIRECTIONS):
                view = "frontal" if direction.endswith("F") else "lateral"
                entry = ((_direction(images.get((view, prompting)), direction) or {}).get("fid") or {}).get(backbone)
                if not entry or entry.get("value") is None:
                    continue
                ci = entry.get("ci") or [entry["value"], entry["value"]]
                x.append(i + (k - 0.5) * 0.3)
                y.append(entry["value"])
                err[0].append(max(0.0, entry["value"] - ci[0]))
                err[1].append(max(0.0, ci[1] - entry["value"]))
            ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, ms=4, label=label)
        ax.set_xticks(range(len(ALL_IMAGE_DIRECTIONS)), ALL_IMAGE_DIRECTIONS, fontsize=8)
        ax.set_title(f"FID ({backbone})", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def hamming_figure(joint: dict | None, path: Path | str) -> None:
    """Fig. 7 from joint.json's histogram (used when rule evaluate_joint_generation's own figure is absent)."""
    from cxrgen.report.figures import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    hamming = (joint or {}).get("hamming")
    if not hamming:
        ax.text(0.5, 0.5, f"Hamming distances {MISSING}", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        rows = hamming_rows(hamming)
        d = [r[0] for r in rows]
        ax.bar([v - 0.2 for v in d], [r[1] for r in rows], width=0.4, label="independent")
        ax.bar([v + 0.2 for v in d], [r[2] for r in rows], width=0.4, label="joint")
        ax.set_xlabel("Hamming distance (image labels vs report labels)")
        ax.set_ylabel("test studies")
        ax.set_title(f"{hamming.get('pair', '')}", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def missing_figure(path: Path | str, what: str) -> None:
    from cxrgen.report.figures import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.text(0.5, 0.5, f"{what} {MISSING}", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    ax.set_axis_off()
    fig.savefig(path, dpi=100)
    plt.close(fig)
