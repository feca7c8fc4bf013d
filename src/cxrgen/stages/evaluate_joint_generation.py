"""Stage ``evaluate_joint_generation``: MedCoDi-M / XGeM joint vs independent generation (arXiv 2501.04614 §4.3,
Table 6 and Fig. 7; library :mod:`cxrgen.medcodi.joint`)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrgen.labels import CHEXPERT_LABELS
from cxrgen.medcodi.joint import (
    DIRECTIONS,
    PairSettings,
    complete_studies,
    cosine_rows,
    hamming_counts,
    load_generators,
    load_joint,
    mean_of_counts,
    pair_seed,
    sample_pair,
)
from cxrgen.train.job import json_default, tracked_job

log = logging.getLogger(__name__)

HAMMING_DIRECTION = "L->F+T"  # paper Fig. 7: frontal image and report generated from the lateral view
MODES = ("independent", "joint")


def _interval(values: np.ndarray, cfg: dict, seed: int) -> dict:
    from cxrgen.evaluate.metrics import mean_interval

    found = mean_interval(values, resamples=int(cfg["bootstrap_resamples"]), confidence=float(cfg["confidence"]),
                          seed=seed)
    return {"mean": found.value, "ci": [found.low, found.high]}


def plot_hamming(counts: dict[str, dict[str, int]], n_labels: int, path: Path, title: str) -> None:
    """Paper Fig. 7: frequency of each Hamming distance, independent (blue) vs joint (red) generation."""
    from cxrgen.report.figures import _pyplot

    plt = _pyplot()
    distances = np.arange(n_labels + 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for mode, colour in (("independent", "tab:blue"), ("joint", "tab:red")):
        ax.plot(distances, [counts[mode].get(str(d), 0) for d in distances], marker="o", color=colour, label=mode)
    ax.set_xlabel("Hamming distance (differing labels)")
    ax.set_ylabel("studies")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_joint_generation(*, studies: Path | str, embeddings: Path | str, frontal_dir: Path | str,
                              lateral_dir: Path | str, report_dir: Path | str, vae_dir: Path | str,
                              joint_dir: Path | str, ae_dir: Path | str, encoders_dir: Path | str,
                              evaluator_dir: Path | str, cfg: dict, seed: int, out_json: Path | str,
                              out_png: Path | str, tracking_json: Path | str | None = None,
                              job_name: str = "evaluate_joint_generation") -> dict:
    """For T->F+L, L->F+T and F->L+T on the test studies with all three modalities (condition = the given modality's
    prompt embedding; seeds from (``seed``, study, direction, modality)): both outputs generated jointly
    (``joint_dir``, rule train_joint_alignment) and independently (same seeds, no joint layers), embedded in the
    shared space (images decoded by ``ae_dir`` then the prompt encoders' image tower, reports decoded by ``vae_dir``
    then the text tower) and compared by cosine similarity (Table 6; paired bootstrap of joint − independent). For
    L->F+T the generated frontal image's evaluator labels (probability >= threshold) vs the labeler's positives of the
    generated report give the Hamming distances of Fig. 7. ``cfg`` = section ``medcodi.joint``."""
    from cxrgen.evaluate.classifier import load_evaluator
    from cxrgen.icu.image_quality import decode_scaled
    from cxrgen.medcodi.ldm import load_embeddings
    from cxrgen.medcodi.prompt_encoders import load_prompt_encoders
    from cxrgen.medcodi.prompting import combine
    from cxrgen.medcodi.text_vae import load_text_vae
    from cxrgen.models.autoencoder import load_autoencoder
    from cxrgen.text.labeler import label_reports

    ecfg, scfg = cfg["evaluation"], cfg["sampling"]
    out_json, out_png = Path(out_json), Path(out_png)
    generators = load_generators(frontal_dir, lateral_dir, report_dir)
    joint = load_joint(joint_dir, generators)
    prompts = load_embeddings(embeddings)
    rows, at = complete_studies(pd.read_parquet(studies), prompts, ["test"])
    if ecfg["max_studies"] is not None:
        rows, at = rows.head(int(ecfg["max_studies"])), at[:int(ecfg["max_studies"])]
    if rows.empty:
        return _no_test_study(out_json, out_png)
    pids = rows["study_pid"].astype(str).tolist()
    settings = PairSettings(steps=int(scfg["steps"]), image_guidance=float(scfg["image_guidance"]),
                            image_eta=float(scfg["image_eta"]), report_guidance=float(scfg["report_guidance"]),
                            report_eta=float(scfg["report_eta"]))
    autoencoder = load_autoencoder(ae_dir)
    vae = load_text_vae(vae_dir)
    encoders = load_prompt_encoders(encoders_dir)
    evaluator = load_evaluator(evaluator_dir)
    scaling = {v: float(generators.image_manifests[v]["scaling_factor"]) for v in ("frontal", "lateral")}
    latent_scale = float(generators.report_manifest["latent_scale"])
    batch = int(ecfg["batch_size"])

    def outputs(modality: str, z: torch.Tensor):
        """(shared-space embeddings, decoded output): images in [0, 1] or report texts."""
        if modality == "report":
            texts = vae.decode(z / latent_scale)
            return encoders.encode_texts(texts).cpu(), texts
        images = decode_scaled(autoencoder, z, scaling[modality], batch)
        resized = torch.nn.functional.interpolate(images, size=(encoders.resolution,) * 2, mode="bilinear",
                                                  antialias=True, align_corners=False)
        return encoders.encode_images(resized * 2.0 - 1.0).cpu(), images

    params = {"joint": cfg, "seed": seed, "n_test_studies": len(rows)}
    with tracked_job(tracking_json, job_name, params=params, tags={"cxrgen.stage": "medcodi:joint_eval"}) as job:
        started = time.perf_counter()
        similarity, decoded = {}, {}
        for d_index, (direction, (given, pair)) in enumerate(DIRECTIONS.items()):
            given_embeddings = torch.as_tensor(prompts[given][at], dtype=torch.float32)[:, None, :]
            conditions = combine(given_embeddings, torch.ones(len(rows), 1, dtype=torch.bool))
            seeds = {m: [pair_seed(seed, pid, direction, m) for pid in pids] for m in pair}
            cosines = {}
            for mode in MODES:
                parts = {m: [] for m in pair}
                for start in range(0, len(rows), batch):
                    chunk = slice(start, start + batch)
                    z = sample_pair(generators, joint, pair, conditions[chunk], {m: seeds[m][chunk] for m in pair},
                                    settings, use_joint=mode == "joint")
                    for m in pair:
                        parts[m].append(z[m])
                embedded = {}
                for m in pair:
                    embedded[m], decoded[(direction, mode, m)] = outputs(m, torch.cat(parts[m]))
                cosines[mode] = cosine_rows(embedded[pair[0]], embedded[pair[1]])
            similarity[direction] = {"n": len(rows), "pair": list(pair), "given": given,
                                     **{mode: _interval(cosines[mode], ecfg, seed + d_index) for mode in MODES},
                                     "difference": _interval(cosines["joint"] - cosines["independent"], ecfg,
                                                             seed + d_index)}

        labels = [name for name in CHEXPERT_LABELS if name in evaluator.findings]  # both sides' findings
        image_columns = [evaluator.findings.index(name) for name in labels]
        report_columns = [list(CHEXPERT_LABELS).index(name) for name in labels]
        counts = {}
        for mode in MODES:
            images = decoded[(HAMMING_DIRECTION, mode, "frontal")]
            image_labels = evaluator.predict_proba(images).numpy()[:, image_columns] >= float(ecfg["threshold"])
            texts = decoded[(HAMMING_DIRECTION, mode, "report")]
            report_labels = label_reports([None] * len(texts), texts)[:, report_columns] == 1.0
            counts[mode] = hamming_counts(image_labels, report_labels)
        hamming = {"pair": HAMMING_DIRECTION, "n": len(rows), "labels": labels, "threshold": float(ecfg["threshold"]),
                   **{mode: counts[mode] for mode in MODES},
                   "mean_independent": mean_of_counts(counts["independent"]),
                   "mean_joint": mean_of_counts(counts["joint"])}
        payload = {"similarity": similarity, "hamming": hamming,
                   "examples": {mode: decoded[(HAMMING_DIRECTION, mode, "report")][:4] for mode in MODES},
                   "sampling": scfg, "seconds": time.perf_counter() - started}

        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        staged_png = out_png.with_name(f".{out_png.stem}.tmp{out_png.suffix}")
        plot_hamming(counts, len(labels), staged_png,
                     f"{HAMMING_DIRECTION}: evaluator vs labeler labels (n = {len(rows)})")
        staged = out_json.with_name(f".{out_json.name}.tmp")
        staged.write_text(json.dumps(payload, indent=1, default=json_default))
        job.log_metrics({f"{direction}_{mode}": values[mode]["mean"] for direction, values in similarity.items()
                         for mode in (*MODES, "difference") if values[mode]["mean"] is not None})
        job.log_metrics({"hamming_mean_independent": hamming["mean_independent"],
                         "hamming_mean_joint": hamming["mean_joint"]})
        job.publish(staged_png, out_png, artifacts=[str(out_png)])
        job.publish(staged, out_json, artifacts=[str(out_json)])
    return payload


def _no_test_study(out_json: Path, out_png: Path) -> dict:
    """No test study has a frontal image, a lateral image and a report (a small corpus): every direction and the
    Hamming histogram are reported with n = 0, so the report prints "–" instead of the DAG failing."""
    from cxrgen.report.medcodi import missing_figure

    note = "no test study has a frontal image, a lateral image and a report"
    log.warning("joint generation: %s", note)
    payload = {"note": note, "similarity": {direction: {"n": 0} for direction in DIRECTIONS},
               "hamming": {"pair": HAMMING_DIRECTION, "n": 0}}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    missing_figure(out_png, f"Fig. 7 ({note})")
    out_json.write_text(json.dumps(payload, indent=1))
    return payload
