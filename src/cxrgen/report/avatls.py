"""The AVA-TLS ablation's retrieval table (markdown fragment of rule ``report_avatls``,
:mod:`cxrgen.stages.report_avatls`) from the ``metrics.json`` of the baseline CLIP (rule train_clip) and of the
squeezed CLIP (rule train_clip_avatls), both measured on the same evaluation pairs by
:func:`cxrgen.models.clip.retrieval_metrics`."""

from __future__ import annotations

KS = (1, 5, 10)
DIRECTIONS = {"i2t": "image → report", "t2i": "report → image"}


def avatls_markdown(baseline: dict, avatls: dict) -> str:
    """The fragment: setup line, one table row per (split, direction, k) with baseline, AVA-TLS and chance recall."""
    squeeze = avatls.get("squeeze") or {}
    if not squeeze:
        raise ValueError("the AVA-TLS metrics describe no squeeze (expected the output of rule train_clip_avatls)")
    base_r, sq_r = baseline["retrieval"], avatls["retrieval"]
    splits = sorted({k.split("/")[0] for k in base_r if k.endswith("/pairs")}
                    & {k.split("/")[0] for k in sq_r if k.endswith("/pairs")})
    lines = [
        "## AVA-TLS: report retrieval with and without the information squeeze",
        "",
        f"Text tokens the LDM cross-attends to: {baseline.get('text_tokens', avatls.get('text_tokens'))} (baseline) → "
        f"{squeeze['length']} (squeezed; {squeeze['layers']} cross-attention block(s), "
        f"{avatls.get('squeeze_parameters', 0):,} parameters). The squeezed model is the baseline fine-tuned for "
        f"{avatls['steps']} steps with the squeeze ({avatls.get('trained_parameters', 0):,} trained parameters, "
        f"{avatls['seconds_per_step_this_run']:.2f} s/step; the baseline trained at "
        f"{baseline['seconds_per_step_this_run']:.2f} s/step, each measured in its own job). Recall@k: fraction of queries whose match is among the k best; identical "
        "reports count as one candidate; chance = expected recall of a random ranking.",
        "",
        "| split | pairs (unique reports) | direction | k | baseline | AVA-TLS | chance |",
        "|---|---|---|---|---|---|---|",
    ]
    for split in splits:
        pairs = f"{int(base_r[f'{split}/pairs'])} ({int(base_r[f'{split}/unique_texts'])})"
        if (base_r[f"{split}/pairs"], base_r[f"{split}/unique_texts"]) != (sq_r[f"{split}/pairs"],
                                                                           sq_r[f"{split}/unique_texts"]):
            raise ValueError(f"split {split}: the two models were evaluated on different pairs")
        for direction, name in DIRECTIONS.items():
            for k in KS:
                key = f"{split}/{direction}_recall_at_{k}"
                if key not in base_r or key not in sq_r:
                    continue
                lines.append(f"| {split} | {pairs} | {name} | {k} | {base_r[key]:.3f} | {sq_r[key]:.3f} | "
                             f"{base_r[key + '_chance']:.3f} |")
    zero_shot = sorted({k.split("/")[0] for k in base_r if "/zero_shot_auroc/macro" in k}
                       & {k.split("/")[0] for k in sq_r if "/zero_shot_auroc/macro" in k})
    if zero_shot:
        lines += ["", "Zero-shot classification (label level): each image of the split, with or without a report, is "
                      "scored by its similarity to a finding's side-free prompts; macro AUROC over findings with at "
                      "least 3 positive and 3 negative images (0.5 = chance).", "",
                  "| split | findings | baseline | AVA-TLS |", "|---|---|---|---|"]
        for split in zero_shot:
            findings = sum(1 for k in base_r if k.startswith(f"{split}/zero_shot_auroc/") and not k.endswith("macro"))
            lines.append(f"| {split} | {findings} | {base_r[f'{split}/zero_shot_auroc/macro']:.3f} | "
                         f"{sq_r[f'{split}/zero_shot_auroc/macro']:.3f} |")
    lines += ["", f"Baseline: {baseline['steps']} steps on {baseline['n_train_pairs']} train pairs at "
                  f"{baseline['resolution']} px (MLflow run {baseline.get('mlflow_run_id')}); AVA-TLS: MLflow run "
                  f"{avatls.get('mlflow_run_id')}.", ""]
    return "\n".join(lines)
