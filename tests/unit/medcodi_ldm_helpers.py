"""Synthetic MedCoDi-M inputs in the formats of the issue-12 contract (``results/medcodi/studies.parquet``,
``results/medcodi/embeddings.npz``) plus a latent cache made by a stand-in autoencoder directory, so the view LDMs can
be tested before the prompt encoders exist. Embeddings are unit vectors that carry a per-study "severity" (so a
condition is informative about the latent), NaN where the study lacks the modality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.config import validate_config
from cxrgen.hashing import dir_digest
from cxrgen.labels import LABEL_COLUMNS

LATENT_SHAPE, DIM = (3, 8, 8), 16
TINY_UNET = {"base_channels": 16, "channel_mult": [1, 2], "layers_per_block": 1, "attention_downsample_factors": [2],
             "attention_head_dim": 8, "norm_num_groups": 8}


def medcodi_ldm_cfg(**overrides) -> dict:
    """A validated ``medcodi.ldm`` with tiny sizes (overrides win)."""
    tiny = {"unet": TINY_UNET, "batch_size": 4, "max_steps": 2, "checkpoint_every": 1, "log_every": 1,
            "ema_decay": 0.9, "lr": 1e-3, "val_max_items": 8}
    return validate_config({"sources": {"nih": {}}, "medcodi": {"ldm": {**tiny, **overrides}}})["medcodi"]["ldm"]


def _unit(rng, n: int, dim: int) -> np.ndarray:
    vectors = rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def write_medcodi_inputs(root: Path | str, n_studies: int = 24, seed: int = 0, dim: int = DIM,
                         latent_shape: tuple[int, int, int] = LATENT_SHAPE) -> dict[str, Path]:
    """studies.parquet + embeddings.npz under ``root/medcodi`` and a latent cache ``root/latents`` (stand-in AE
    ``root/ae``). Study i (0-based) has: a frontal image unless i % 6 == 5, a lateral image unless i % 3 == 2, a report
    unless i % 8 == 7; study 21 (train) has a frontal image only. Splits: i % 4 in (0, 1) train, 2 val, 3 test."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    medcodi, latents, ae = root / "medcodi", root / "latents", root / "ae"
    for d in (medcodi, latents, ae):
        d.mkdir(parents=True, exist_ok=True)
    (ae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "stand_in": True}))
    splits = np.array(["train", "train", "val", "test"])
    severity = rng.normal(size=n_studies)
    direction = _unit(rng, 1, dim)[0]
    studies, images = [], []
    embeddings = {m: np.full((n_studies, dim), np.nan, np.float32) for m in ("frontal", "lateral", "report")}
    for i in range(n_studies):
        has = {"frontal": i % 6 != 5, "lateral": i % 3 != 2, "report": i % 8 != 7}
        if i == 21:
            has = {"frontal": True, "lateral": False, "report": False}
        study = f"mimic-s{i:03d}"
        row = {"study_pid": study, "patient_pid": f"mimic-p{i // 2:03d}", "split": splits[i % 4], "source": "mimic",
               "frontal_image_id": None, "lateral_image_id": None,
               "report": f"impression {i}" if has["report"] else "",
               **{c: [1.0, 0.0, np.nan][(i + j) % 3] for j, c in enumerate(LABEL_COLUMNS)}}
        for modality in ("frontal", "lateral", "report"):
            if has[modality]:
                vector = _unit(rng, 1, dim)[0] * 0.5 + direction * severity[i]
                embeddings[modality][i] = vector / np.linalg.norm(vector)
        for view in ("frontal", "lateral"):
            if has[view]:
                image_id = f"mimic-img{i:03d}-{view[0]}"
                row[f"{view}_image_id"] = image_id
                latent = severity[i] + 0.3 * rng.normal(size=latent_shape) + (0.5 if view == "lateral" else 0.0)
                images.append({"image_id": image_id, "split": row["split"], "latent": latent.astype(np.float32),
                               "view": "PA" if view == "frontal" else "LATERAL"})
        studies.append(row)
    pd.DataFrame(studies).to_parquet(medcodi / "studies.parquet", index=False)
    np.savez(medcodi / "embeddings.npz", study_pids=np.array([s["study_pid"] for s in studies]), **embeddings)

    mean = np.stack([r["latent"] for r in images]) / 0.5  # stored unscaled; scaling factor 0.5
    np.save(latents / "latents.npy", mean)
    np.save(latents / "latents_std.npy", np.full_like(mean, 0.02))
    index = pd.DataFrame({"image_id": [r["image_id"] for r in images], "split": [r["split"] for r in images],
                          "row": np.arange(len(images)), "source": "mimic", "view": [r["view"] for r in images],
                          "text": ""})
    index.to_parquet(latents / "latents_index.parquet", index=False)
    (latents / "meta.json").write_text(json.dumps({"autoencoder_sha256": dir_digest(ae), "scaling_factor": 0.5,
                                                   "shape": list(mean.shape), "resolution": 32}))
    return {"studies": medcodi / "studies.parquet", "embeddings": medcodi / "embeddings.npz", "latents": latents,
            "ae": ae}
