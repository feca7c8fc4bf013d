"""Rule ``evaluate_memorisation``: the nearest training image of every generated and real reference image (evaluator
features and pixels), the re-identification share under a threshold from the training set itself, the closest pairs,
and the diversity of repeated generations of one prompt, as one tracked job."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from cxrgen.evaluate import memorisation as mem  # noqa: E402
from cxrgen.evaluate import metrics as M  # noqa: E402
from cxrgen.evaluate.features import FeatureSet, images_at, iter_images, load_feature_sets, sample_rows  # noqa: E402
from cxrgen.evaluate.outputs import StagedFiles  # noqa: E402
from cxrgen.evaluate.tables import Fragment, with_ci  # noqa: E402
from cxrgen.report.figures import title_room  # noqa: E402
from cxrgen.train.job import tracked_job, write_json  # noqa: E402


def evaluate_memorisation(*, real_dir: Path | str, generated_dir: Path | str, cfg: dict, seed: int, variant: str,
                          out_json: Path | str, out_html: Path | str, out_pairs: Path | str,
                          out_histogram: Path | str, out_markdown: Path | str,
                          tracking_json: Path | str | None = None, job_name: str = "evaluate_memorisation") -> dict:
    """Nearest training image per generated / real reference image (evaluator features and pixels), the
    re-identification share under the threshold, the closest pairs, and the diversity of repeated generations of one
    prompt."""
    mcfg = cfg["memorisation"]
    resamples, confidence = int(cfg["bootstrap"]["resamples"]), float(cfg["bootstrap"]["confidence"])
    with tracked_job(tracking_json, job_name, params={"evaluation": cfg, "variant": variant, "seed": seed},
                     tags={"cxrgen.stage": "evaluate_memorisation"}) as job:
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
                   "closest": {s: _closest(d["_gen_d"], d["_gen_nn"], generated.rows, train.rows,
                                           int(mcfg["pairs_shown"])) for s, d in spaces.items()},
                   "protocol": {"distance": "1 − cosine similarity; pixel vectors mean-centred per image "
                                            "(= 1 − Pearson r)",
                                "database": f"real train split, views {real_meta['views']}, n={len(train.rows)}",
                                "threshold": f"the {mcfg['threshold_quantile']} quantile of the distances of "
                                             f"{len(probe_pos)} train images to their nearest other train image",
                                "reference": f"real {'+'.join(real_meta['reference_splits'])} split(s) → train, "
                                             f"n={len(reference.rows)}",
                                "generated": f"all {len(generated.rows)} generated images of {variant}",
                                "ci": M.describe_bootstrap(resamples, confidence) + " over images",
                                "diversity": diversity["protocol"]}}
        files = StagedFiles(job, {"json": out_json, "table": out_html, "histogram": out_histogram,
                                  "pairs": out_pairs, "markdown": out_markdown})
        _memorisation_histogram(spaces, files["histogram"], variant)
        _closest_pairs_figure(payload["closest"], generated.rows, train.rows, int(real_meta["resolution"]),
                              files["pairs"], variant)
        fragment = _memorisation_fragment(payload, variant)
        fragment.figure(out_histogram, Path(out_markdown).parent, f"nearest-train distances ({variant})")
        fragment.figure(out_pairs, Path(out_markdown).parent, f"closest generated/train pairs ({variant})")
        fragment.write(files["table"], files["markdown"])
        headline = {}
        for space, d in payload["spaces"].items():
            key = "feature" if space.startswith("evaluator") else "pixel"
            headline[f"share_below/{key}/generated"] = d["generated"]["share_below_threshold"]["value"]
            headline[f"share_below/{key}/real"] = d["real reference"]["share_below_threshold"]["value"]
            headline[f"median_nn/{key}/generated"] = d["generated"]["median"]
        headline["diversity/within_prompt"] = diversity["within prompt"]["value"]
        job.log_metrics(headline)
        payload["mlflow_run_id"] = job.run_id
        write_json(files["json"], payload)
        files.publish(artifacts=["json", "histogram", "pairs"])
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
    images = torch.from_numpy(images_at(rows, positions, resolution))[:, None]
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
    fig.tight_layout(rect=(0, 0, 1, title_room(fig)))
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
        gen = images_at(gen_rows, [p["generated_pos"] for p in pairs], resolution)
        train = images_at(train_rows, [p["train_pos"] for p in pairs], resolution)
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
    fig.tight_layout(rect=(0, 0, 1, title_room(fig)))
    fig.savefig(path, dpi=90)
    plt.close(fig)

