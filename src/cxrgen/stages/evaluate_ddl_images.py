"""Stage ``evaluate_ddl_images``: image quality of DDL-CXR's generated later images on the held-out image pairs, next to
the prior image carried forward (library: :mod:`cxrgen.icu.image_quality`). The paper reports no image quality.

For each pair of ``pairs.parquet`` in ``split``: the LDM of rule train_ddl_ldm samples the later latent from the prior
latent and the EHR between the two images (the sampler of rule generate_ddl_latents, ``samples_per_pair`` seeds per
pair from the run seed and the pair key), the project autoencoder decodes it, and it is compared with the real later
image read from the store **at the autoencoder's resolution** (the latent cache's; DDL-CXR has no super-resolution, so
the harness' x_HR does not apply). Outputs: ``evaluation_images.json``, ``evaluation_images.md``, ``pairs.parquet``
(per-pair numbers) and ``evaluation_images.png`` (prior | generated | real later rows with the finding changes)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.evaluate import metrics as M
from cxrgen.icu.image_quality import (
    ARM_TITLES,
    GENERATED,
    PRIOR,
    REAL_LATER,
    RECONSTRUCTION,
    classifier_agreement,
    decode_scaled,
    finding_changes,
    generate_pair_latents,
    image_quality_markdown,
    pair_sample_seeds,
    paired_means,
    per_pair,
    probability_distance,
)
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.train.job import tracked_job, write_json

log = logging.getLogger(__name__)

RESULTS_JSON, RESULTS_MD, PAIRS_TABLE, FIGURE = ("evaluation_images.json", "evaluation_images.md", "pairs.parquet",
                                                 "evaluation_images.png")


def select_pairs(pairs: pd.DataFrame, split: str, max_pairs: int | None, seed: int) -> pd.DataFrame:
    """The pairs of ``split`` in pair_key order, at most ``max_pairs`` (a seeded sample)."""
    chosen = pairs[pairs["split"] == split].sort_values("pair_key").reset_index(drop=True)
    if chosen.empty:
        raise ValueError(f"icu.evaluation_images.split = {split!r}: no image pairs in that split "
                         f"(pairs.parquet has {sorted(pairs['split'].unique())})")
    if max_pairs is not None and len(chosen) > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(chosen), int(max_pairs), replace=False))
        chosen = chosen.iloc[keep].reset_index(drop=True)
    return chosen


def evaluate_ddl_images(*, cohort_dir: Path | str, latents_dir: Path | str, ae_dir: Path | str,
                        model_dir: Path | str, evaluator_dir: Path | str, index_path: Path | str, cfg: dict,
                        backbones_cfg: dict, seed: int, out_dir: Path | str, tracking_json: Path | str | None = None,
                        job_name: str = "evaluate_ddl_images") -> dict:
    """``cfg`` = section ``icu`` narrowed to ``generation`` (DDIM steps, η) and ``evaluation_images``;
    ``backbones_cfg`` = section ``evaluation`` narrowed to ``backbones`` and ``batch_size`` (the harness' feature
    extractors). Writes ``out_dir`` and returns the json payload."""
    import torch

    from cxrgen.data.latents import load_latents
    from cxrgen.evaluate.backbones import load_backbones
    from cxrgen.evaluate.classifier import LabelledImages, load_evaluator, with_store_root
    from cxrgen.icu.ddl_ldm import load_ddl_ldm
    from cxrgen.icu.inputs import cache_rows, load_ehr, pair_labels, read_pairs, scaled_latents
    from cxrgen.models.autoencoder import load_autoencoder

    gen_cfg, qcfg = cfg["generation"], cfg["evaluation_images"]
    boot = qcfg["bootstrap"]
    resamples, confidence, boot_seed = int(boot["resamples"]), float(boot["confidence"]), int(boot["seed"])
    pairs = select_pairs(read_pairs(cohort_dir), qcfg["split"], qcfg["max_pairs"], seed)
    cache = load_latents(latents_dir, ae_dir=ae_dir)
    model, scheduler_config, manifest = load_ddl_ldm(model_dir)
    if abs(float(manifest["scaling_factor"]) - cache.scaling_factor) > 1e-6:
        raise ValueError(f"{model_dir} was trained on latents scaled by {manifest['scaling_factor']}, the cache "
                         f"{latents_dir} has {cache.scaling_factor}: retrain the LDM on this cache")
    resolution = int(cache.meta["resolution"])
    params = {"icu_generation": gen_cfg, "icu_evaluation_images": qcfg, "seed": seed, "n_pairs": len(pairs),
              "resolution": resolution}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    with tracked_job(tracking_json, job_name, params=params, tags={"cxrgen.stage": "ddl_cxr:image_quality"}) as job:
        started = time.perf_counter()
        prior_z, _ = scaled_latents(cache, cache_rows(cache, pairs["prior_image_id"].tolist()), with_std=False)
        later_z, _ = scaled_latents(cache, cache_rows(cache, pairs["later_image_id"].tolist()), with_std=False)
        ehr = load_ehr(cohort_dir)
        rows = ehr.rows(pairs["stay_key"].tolist())
        start = torch.tensor(pairs["ehr_start_bin"].to_numpy(np.int64)).clamp(0, ehr.hours)
        end = torch.tensor(pairs["ehr_end_bin"].to_numpy(np.int64)).clamp(0, ehr.hours)
        samples = int(qcfg["samples_per_pair"])
        seeds = pair_sample_seeds(seed, pairs["pair_key"].astype(str).tolist(), samples)
        generated_z = generate_pair_latents(model, scheduler_config, prior=prior_z, values=ehr.values[rows],
                                            static=ehr.static[rows], start=start, end=end, seeds=seeds,
                                            steps=int(gen_cfg["steps"]), eta=float(gen_cfg["eta"]),
                                            batch_size=int(qcfg["batch_size"]))
        seconds_generation = time.perf_counter() - started
        autoencoder = load_autoencoder(ae_dir).to(device)
        n_pairs = len(pairs)
        shape = tuple(generated_z.shape[2:])
        generated = decode_scaled(autoencoder, generated_z.reshape(samples * n_pairs, *shape), cache.scaling_factor,
                                  int(qcfg["batch_size"]))
        reconstruction = decode_scaled(autoencoder, later_z, cache.scaling_factor, int(qcfg["batch_size"]))

        index = pd.read_parquet(index_path).set_index("image_id")
        store = with_store_root(index.reset_index(), Path(index_path).parent).set_index("image_id")
        real = LabelledImages(store.loc[pairs["later_image_id"].tolist() + pairs["prior_image_id"].tolist()]
                              .reset_index(), generated.shape[-1])
        real_images = torch.stack([real.image(i) for i in range(len(real))]).float()
        later, prior = real_images[:n_pairs], real_images[n_pairs:]
        images = {GENERATED: generated, PRIOR: prior, RECONSTRUCTION: reconstruction, REAL_LATER: later}

        def as_samples(values: np.ndarray) -> np.ndarray:  # [S·P] -> [P, S]
            return np.asarray(values).reshape(samples, n_pairs).T

        later_rep = later.repeat(samples, 1, 1, 1)
        generated_z = generated_z.cpu()
        errors = {
            "pixel_mse": {GENERATED: as_samples(M.mse(generated, later_rep)), PRIOR: M.mse(prior, later),
                          RECONSTRUCTION: M.mse(reconstruction, later)},
            "ssim": {GENERATED: as_samples(M.ssim(generated, later_rep)), PRIOR: M.ssim(prior, later),
                     RECONSTRUCTION: M.ssim(reconstruction, later)},
            "latent_mse": {GENERATED: ((generated_z - later_z[None]) ** 2).flatten(2).mean(2).T.numpy(),
                           PRIOR: ((prior_z - later_z) ** 2).flatten(1).mean(1).numpy()},
        }

        evaluator = load_evaluator(evaluator_dir, device=device)
        backbones, skipped = load_backbones(backbones_cfg["backbones"]["use"], backbones_cfg["backbones"],
                                            evaluator=evaluator)
        probs = {arm: evaluator.predict_proba(x).numpy().astype(np.float64) for arm, x in images.items()}
        probs[GENERATED] = probs[GENERATED].reshape(samples, n_pairs, -1)
        errors["probability_distance"] = {
            GENERATED: probability_distance(probs[GENERATED], probs[REAL_LATER]),
            PRIOR: probability_distance(probs[PRIOR], probs[REAL_LATER]),
            RECONSTRUCTION: probability_distance(probs[RECONSTRUCTION], probs[REAL_LATER])}
        stats = {name: paired_means(arms, PRIOR, resamples=resamples, confidence=confidence, seed=boot_seed + k)
                 for k, (name, arms) in enumerate(errors.items())}
        labels = pair_labels(pairs).numpy().astype(np.float64)
        agreement = classifier_agreement(labels, probs, PRIOR, resamples=resamples, confidence=confidence,
                                         seed=boot_seed + 17)
        distribution = _distribution(images, backbones, later, qcfg, seed=boot_seed, confidence=confidence)

        prior_labels = index.loc[pairs["prior_image_id"].tolist(), list(LABEL_COLUMNS)].to_numpy(np.float64)
        changes = [finding_changes(prior_labels[i], labels[i]) for i in range(n_pairs)]
        seconds = time.perf_counter() - started
        payload = {
            "split": qcfg["split"], "n_pairs": n_pairs, "samples_per_pair": samples,
            "n_stays": int(pairs["stay_key"].nunique()), "n_patients": int(pairs["patient_pid"].nunique()),
            "resolution": resolution, "evaluator_resolution": int(evaluator.resolution),
            "sampling": {"steps": int(gen_cfg["steps"]), "eta": float(gen_cfg["eta"]),
                         "seeds": "per pair and sample: sha256(run seed, pair_key, sample index)"},
            "arms": {arm: ARM_TITLES[arm] for arm in images},
            "errors": stats, "classifier": agreement, "distribution": distribution,
            "skipped_backbones": [s.line() for s in skipped],
            "ci": M.describe_bootstrap(resamples, confidence) + " over pairs; generated − prior paired (same draws)",
            "seconds": seconds, "seconds_generation": seconds_generation,
            "pairs_with_finding_changes": int(sum(c != "no change" for c in changes)),
        }
        tmp = job.staging(out_dir)
        table = _pair_table(pairs, errors, changes)
        table.to_parquet(tmp / PAIRS_TABLE, index=False)
        _figure(images, pairs, changes, samples, int(qcfg["figure_pairs"]), tmp / FIGURE)
        payload["mlflow_run_id"] = job.run_id
        write_json(tmp / RESULTS_JSON, payload)
        (tmp / RESULTS_MD).write_text(image_quality_markdown(payload))
        job.log_metrics(_headline(payload))
        job.publish(tmp, out_dir, artifacts=[RESULTS_JSON, RESULTS_MD, FIGURE])
    log.info("image quality of %d pairs x %d samples in %.1f s", n_pairs, samples, seconds)
    return payload


def _distribution(images: dict, backbones, later, qcfg: dict, *, seed: int, confidence: float) -> dict:
    """FID/KID of each arm's images against the real later images, per backbone (protocol in the payload)."""
    from cxrgen.evaluate.distribution import compare

    kid = qcfg["kid"]
    out = {}
    for backbone in backbones:
        reference = backbone.features(later)
        out[backbone.name] = {"description": backbone.description, "vs_real_later": {}}
        for k, arm in enumerate((GENERATED, PRIOR, RECONSTRUCTION)):
            features = backbone.features(images[arm])
            if len(features) < 2 or len(reference) < 2:
                out[backbone.name]["vs_real_later"][arm] = {"n_a": len(features), "n_b": len(reference),
                                                            "skipped": "fewer than 2 images in a set"}
                continue
            out[backbone.name]["vs_real_later"][arm] = compare(
                features, reference, kid_cfg=kid, resamples=int(qcfg["distribution_resamples"]),
                confidence=confidence, seed=seed + 101 * k)
    return out


def _pair_table(pairs: pd.DataFrame, errors: dict, changes: list[str]) -> pd.DataFrame:
    table = pairs[["pair_key", "stay_key", "prior_hours", "later_hours"]].copy()
    table["finding_changes"] = changes
    for metric, arms in errors.items():
        for arm, values in arms.items():
            table[f"{metric}_{arm}"] = per_pair(values)
    return table


def _figure(images: dict, pairs: pd.DataFrame, changes: list[str], samples: int, n_rows: int, path: Path) -> None:
    """Rows prior | generated (first sample) | real later for up to ``n_rows`` pairs, pairs with finding changes
    first; row names carry the pair's hours and the changes."""
    import torch

    from cxrgen.report.figures import save_grid

    order = sorted(range(len(pairs)), key=lambda i: (changes[i] == "no change", i))[:max(1, n_rows)]
    tiles, names = [], []
    for i in order:
        tiles += [images[PRIOR][i], images[GENERATED][i], images[REAL_LATER][i]]  # generated rows: sample 0 first
        gap = float(pairs["later_hours"].iloc[i] - pairs["prior_hours"].iloc[i])
        names.append(f"pair {i + 1} (+{gap:.0f} h)\n{_wrap(changes[i])}")
    grid = torch.stack(tiles) * 2.0 - 1.0
    save_grid(grid, names, 3, path, column_titles=["prior (carried forward)", "generated (sample 1)",
                                                   "real later"])


def _wrap(text: str, width: int = 28) -> str:
    lines, line = [], ""
    for word in text.split(", "):
        if line and len(line) + len(word) + 2 > width:
            lines.append(line + ",")
            line = word
        else:
            line = f"{line}, {word}" if line else word
    return "\n".join([*lines, line])


def _headline(payload: dict) -> dict:
    out = {"n_pairs": payload["n_pairs"], "seconds": payload["seconds"]}
    for metric, entry in payload["errors"].items():
        for arm, interval in entry["arms"].items():
            out[f"{metric}/{arm}"] = interval["value"]
    for arm, interval in payload["classifier"]["macro_auroc"].items():
        out[f"macro_auroc/{arm}"] = interval["value"]
    for backbone, entry in payload["distribution"].items():
        for arm, result in entry["vs_real_later"].items():
            out[f"fid/{backbone}/{arm}"] = (result.get("fid") or {}).get("value")
    return {k: v for k, v in out.items() if v is not None}
