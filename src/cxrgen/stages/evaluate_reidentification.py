"""Rule ``evaluate_reidentification``: the re-identification audit of one generated variant with the patient
verifier of rule train_reid: every generated image against the training image of its prompt (the share of generated
images at or above the verifier's threshold, over all scored images and per prompt set; per prompt: mean and max over
seeds, from the ``reid_probe`` set of K seeds per training prompt when the store has it), and every generated image's
own nearest training image in pixel and verifier-feature space."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxrgen.evaluate import metrics as M  # noqa: E402
from cxrgen.evaluate import reidentification as reid  # noqa: E402
from cxrgen.evaluate.classifier import with_store_root  # noqa: E402
from cxrgen.evaluate.outputs import StagedFiles  # noqa: E402
from cxrgen.evaluate.tables import Fragment, fmt, with_ci  # noqa: E402
from cxrgen.prompts import PROBE_SET  # noqa: E402
from cxrgen.report.figures import title_room  # noqa: E402
from cxrgen.train.data import select_rows  # noqa: E402
from cxrgen.train.job import tracked_job, write_json  # noqa: E402


def evaluate_reidentification(*, index_path: Path | str, store_root: Path | str, generated_dir: Path | str,
                              model_dir: Path | str, cfg: dict, seed: int, variant: str, out_json: Path | str,
                              out_table: Path | str, out_html: Path | str, out_histogram: Path | str,
                              out_markdown: Path | str, tracking_json: Path | str | None = None,
                              job_name: str = "evaluate_reidentification") -> dict:
    """Audit the generated store ``generated_dir`` (``index.parquet`` with ``source_image_id`` and ``seed``) against
    the real train split (views ``cfg["views"]``, at most ``cfg["audit"]["max_train"]`` images for the nearest-
    neighbour search) with the verifier in ``model_dir`` (rule train_reid: ``verifier/`` and its ``metrics.json``
    threshold). Writes the per-image table ``out_table`` (parquet), the summary json, an html table, the histogram
    and the markdown fragment; returns the summary."""
    acfg = cfg["audit"]
    resamples, confidence = int(acfg["resamples"]), float(acfg["confidence"])
    model_dir = Path(model_dir)
    verifier_metrics = json.loads((model_dir / "metrics.json").read_text())
    threshold = float(verifier_metrics["threshold"]["threshold"])
    with tracked_job(tracking_json, job_name, params={"reid": cfg, "variant": variant, "seed": seed},
                     tags={"cxrgen.stage": "evaluate_reidentification"}) as job:
        model = reid.load_verifier(model_dir / "verifier")
        index = pd.read_parquet(index_path)
        train = select_rows(index, splits=["train"], views=list(cfg["views"]) or None)
        train = train[train["patient_pid"].notna()]
        max_train = acfg["max_train"]
        if max_train is not None and len(train) > int(max_train):
            # the prompts' source images always stay in the search set
            sources = set(pd.read_parquet(Path(generated_dir) / "index.parquet")["source_image_id"].fillna("")
                          .astype(str))
            keep = train["image_id"].astype(str).isin(sources)
            rest = train[~keep].sample(n=max(0, int(max_train) - int(keep.sum())), random_state=seed)
            train = pd.concat([train[keep], rest]).sort_values("image_id")
        train = with_store_root(train.reset_index(drop=True), store_root)
        generated = pd.read_parquet(Path(generated_dir) / "index.parquet").sort_values("image_id")
        generated = with_store_root(generated.reset_index(drop=True), generated_dir)
        per_image = reid.audit_generated(model, generated, train, pixel_resolution=int(acfg["pixel_resolution"]),
                                         batch_size=int(acfg["batch_size"]))
        summary = summarise_audit(per_image, threshold, resamples=resamples, confidence=confidence, seed=seed)
        payload = {"variant": variant, "threshold": verifier_metrics["threshold"],
                   "verifier": {"verification": verifier_metrics["verification"],
                                "protocol": verifier_metrics["protocol"]},
                   **summary,
                   "protocol": {
                       "score": "verifier same-patient probability of each generated image and the training image "
                                "of its prompt (source_image_id)",
                       "per prompt": _per_prompt_protocol(summary["prompts"]),
                       "threshold": f"{threshold:.4g} ({verifier_metrics['threshold']['point']} on val pairs of "
                                    "held-out patients, rule train_reid)",
                       "nearest neighbour": f"per generated image (each seed its own), 1 − cosine similarity to the "
                                            f"nearest of {len(train)} train images: pixels at "
                                            f"{acfg['pixel_resolution']} px mean-centred (1 − Pearson r), verifier "
                                            "embedding",
                       "ci": M.describe_bootstrap(resamples, confidence) + " over prompts (the seeds of a prompt "
                             "are drawn together; one image per prompt outside the probe set)"}}
        files = StagedFiles(job, {"json": out_json, "table": out_table, "html": out_html,
                                  "histogram": out_histogram, "markdown": out_markdown})
        per_image.to_parquet(files["table"], index=False)
        _histogram(per_image, threshold, verifier_metrics, files["histogram"], variant)
        fragment = _fragment(payload, variant)
        fragment.figure(out_histogram, Path(out_markdown).parent, f"re-identification scores ({variant})")
        fragment.write(files["html"], files["markdown"])
        job.log_metrics({"reid/share_above_threshold": _nan(summary["generated"]["share_above_threshold"]["value"]),
                         "reid/mean_score": _nan(summary["generated"]["mean_score"]),
                         "reid/prompts_share_any_seed_above": _nan(summary["prompts"]["share_any_seed_above"])})
        payload["mlflow_run_id"] = job.run_id
        write_json(files["json"], payload)
        files.publish(artifacts=["json", "histogram"])
    return payload


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


def _per_prompt_protocol(prompts: dict) -> str:
    what = "mean and max of the score over the prompt's seeds"
    if prompts["set"] == PROBE_SET:
        return (f"{what}, on the {PROBE_SET} set: {prompts['n']} training prompts x "
                f"{prompts['seeds_per_prompt']:g} seeds (CheXGenBench 2025: 2,000 x 10)")
    return f"{what}, over every scored prompt (no {PROBE_SET} set in the store: typically one seed per prompt)"


def _prompt_keys(scored: pd.DataFrame) -> pd.Series:
    """One key per prompt (set + source training image, as :func:`~cxrgen.evaluate.reidentification.prompt_summary`):
    the bootstrap draws a prompt's seeds together."""
    return scored["set"].astype(str) + "|" + scored["source_image_id"].astype(str)


def summarise_audit(per_image: pd.DataFrame, threshold: float, *, resamples: int, confidence: float,
                    seed: int) -> dict:
    """Headline numbers of :func:`~cxrgen.evaluate.reidentification.audit_generated`'s table: over generated images
    with a source training image, the mean score and the share at or above ``threshold`` (bootstrap CI over prompts,
    a prompt's seeds drawn together), for all of them (``generated``) and per prompt set (``by_set``); per prompt,
    the mean of the per-prompt mean / max scores and the share of prompts with at least one seed above the threshold, on the ``reid_probe`` set
    (K seeds per prompt) when it was scored, else on every scored prompt (``prompts.set`` says which); the
    nearest-neighbour distances and how often the nearest training image is the prompt's patient."""
    scored = per_image[per_image["score"].notna()]
    prompt_of = _prompt_keys(scored)

    def share(rows: pd.DataFrame) -> dict:
        hits = (rows["score"].to_numpy() >= threshold).astype(np.float64)
        return {"n_scored": len(rows), "mean_score": float(rows["score"].mean()) if len(rows) else None,
                "share_above_threshold": M.clustered_mean_interval(
                    hits, prompt_of[rows.index], resamples=resamples, confidence=confidence, seed=seed).as_dict(),
                "count_above_threshold": int(hits.sum())}

    probe = scored[scored["set"] == PROBE_SET]
    per_prompt_rows = probe if len(probe) else scored
    prompts = reid.prompt_summary(per_prompt_rows, threshold) if len(per_prompt_rows) else \
        pd.DataFrame(columns=["n", "mean", "max", "above_threshold"])
    by_set = {str(name): share(group) for name, group in scored.groupby("set", sort=True)}
    nn = {}
    for space in ("pixel", "feature"):
        d = per_image[f"nn_{space}"].to_numpy(dtype=np.float64)
        d = d[np.isfinite(d)]
        nn[space] = {"median": float(np.median(d)) if len(d) else None,
                     "p05": float(np.quantile(d, 0.05)) if len(d) else None,
                     "min": float(d.min()) if len(d) else None,
                     "share_nn_is_prompt_patient": float(per_image.loc[per_image["score"].notna(),
                                                                      f"nn_{space}_same_patient"].mean())
                     if len(scored) else None}
    return {"generated": {"n_images": len(per_image), **share(scored)},
            "by_set": by_set,
            "prompts": {"set": PROBE_SET if len(probe) else "all", "n": len(prompts),
                        "seeds_per_prompt": float(prompts["n"].mean()) if len(prompts) else None,
                        "mean_of_mean": float(prompts["mean"].mean()) if len(prompts) else None,
                        "mean_of_max": float(prompts["max"].mean()) if len(prompts) else None,
                        "max_of_max": float(prompts["max"].max()) if len(prompts) else None,
                        "share_any_seed_above": float((prompts["above_threshold"] > 0).mean())
                        if len(prompts) else None},
            "nearest_neighbour": nn}


def _fragment(payload: dict, variant: str) -> Fragment:
    fragment = Fragment(f"Re-identification audit — {variant}")
    fragment.para("A Siamese patient-verification network (Packhäuser et al. 2022) scores each generated image "
                  "against the real training image its prompt came from: the share at or above the verifier's "
                  "threshold estimates how often a generated image would be matched to its source patient. The "
                  "verifier's own rates on held-out patients are the reference: the different-patient false-positive "
                  "rate is the share expected from images of other patients, the same-patient true-positive rate the "
                  "share expected from another film of the same patient. Per prompt, the mean and the worst (max) "
                  f"score over seeds come from the {PROBE_SET} set, training prompts generated with several seeds "
                  "for this audit alone.")
    fragment.protocol(payload["protocol"])
    ver = payload["verifier"]["verification"]
    rows = [{"images": "generated vs its prompt's training image", "n": payload["generated"]["n_scored"],
             "mean score": payload["generated"]["mean_score"],
             "share ≥ threshold [CI]": with_ci(payload["generated"]["share_above_threshold"])}]
    if len(payload["by_set"]) > 1:
        rows += [{"images": f"— of them set {name}", "n": s["n_scored"], "mean score": s["mean_score"],
                  "share ≥ threshold [CI]": with_ci(s["share_above_threshold"])}
                 for name, s in payload["by_set"].items()]
    for split in ("val", "test"):
        if ver.get(split):
            rates = ver[split]["at_threshold"]
            rows.append({"images": f"real {split}: different patients (FPR)", "n": ver[split]["pairs"] // 2,
                         "mean score": None, "share ≥ threshold [CI]": fmt(rates["fpr"])})
            rows.append({"images": f"real {split}: same patient (TPR)", "n": ver[split]["pairs"] // 2,
                         "mean score": None, "share ≥ threshold [CI]": fmt(rates["tpr"])})
    fragment.table(pd.DataFrame(rows), caption=f"Verifier scores against the source patient — {variant}")
    p = payload["prompts"]
    fragment.table(pd.DataFrame([{"prompt set": p["set"], "prompts": p["n"], "seeds per prompt": p["seeds_per_prompt"],
                                  "mean of per-prompt mean": p["mean_of_mean"],
                                  "mean of per-prompt max": p["mean_of_max"], "largest max": p["max_of_max"],
                                  "share of prompts with a seed ≥ threshold": p["share_any_seed_above"]}]),
                   caption=f"Per prompt over seeds — {variant}")
    fragment.table(pd.DataFrame([{"space": space, "median NN distance": d["median"], "5% quantile": d["p05"],
                                  "min": d["min"], "share whose NN is the prompt's patient": d["share_nn_is_prompt_patient"]}
                                 for space, d in payload["nearest_neighbour"].items()]),
                   caption=f"Nearest training image per generated image — {variant}")
    fragment.table(pd.DataFrame([{"split": split, "verification AUC": v["auc"], "pairs": v["pairs"],
                                  "patients (≥ 2 images)": f"{v['patients']} ({v['patients_with_2plus_images']})"}
                                 for split, v in ver.items() if v]),
                   caption="Verifier on held-out patients (rule train_reid)")
    return fragment


def _histogram(per_image: pd.DataFrame, threshold: float, verifier_metrics: dict, path, variant: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    scores = per_image["score"].dropna().to_numpy()
    axes[0].hist(scores, bins=np.linspace(0, 1, 26), color="tab:red", alpha=0.7, label="generated vs source image")
    axes[0].axvline(threshold, color="black", linestyle="--", linewidth=1, label="threshold")
    axes[0].set_xlabel("verifier same-patient probability")
    axes[0].set_ylabel("generated images")
    axes[0].legend(fontsize=7)
    for ax, space in zip(axes[1:], ("pixel", "feature"), strict=True):
        d = per_image[f"nn_{space}"].to_numpy(dtype=np.float64)
        ax.hist(d[np.isfinite(d)], bins=30, color="tab:blue", alpha=0.7)
        ax.set_xlabel(f"distance to nearest training image ({space})")
    fig.suptitle(f"Re-identification audit — {variant} (verifier val AUC "
                 f"{fmt((verifier_metrics['verification'].get('val') or {}).get('auc'))})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, title_room(fig)))
    fig.savefig(path, dpi=100)
    plt.close(fig)
