"""Synthetic DDL-CXR inputs in the formats of the issue-13 contract (``results/icu/cohort/`` and a latent cache), so
the model stages can be tested before the real cohort exists. Stays get a "fluid" trajectory in the EHR that moves the
later latent away from the prior one and drives mortality and the first phenotypes, so the tasks are learnable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.config import validate_config
from cxrgen.hashing import dir_digest
from cxrgen.icu.inputs import last_image_bin
from cxrgen.labels import LABEL_COLUMNS

N_FEATURES, N_PHENOTYPES, LATENT_SHAPE = 76, 25, (2, 8, 8)

TINY_UNET = {"base_channels": 16, "channel_mult": [1, 2], "layers_per_block": 1, "attention_downsample_factors": [2],
             "attention_head_dim": 8, "norm_num_groups": 8}
TINY_EHR = {"d_model": 16, "n_heads": 2, "n_layers": 1, "ff_dim": 32, "dropout": 0.1}


def icu_cfg(section: str, **overrides) -> dict:
    """A validated ``icu.<section>`` with tiny sizes (overrides win)."""
    tiny = {"ldm": {"unet": TINY_UNET, "ehr_encoder": TINY_EHR, "batch_size": 4, "max_steps": 3, "checkpoint_every": 2,
                    "log_every": 1, "ema_decay": 0.9, "lr": 1e-3, "val_max_items": 8},
            "generation": {"steps": 3, "batch_size": 4},
            "predictor": {"ehr_encoder": TINY_EHR, "fusion": {"patch_size": 4, "heads": 2, "ff_dim": 32},
                          "batch_size": 8, "max_steps": 4, "checkpoint_every": 2, "log_every": 1, "lr": 1e-3},
            "evaluation": {"bootstrap": {"resamples": 50}}}[section]
    cfg = validate_config({"sources": {"nih": {}}, "icu": {section: {**tiny, **overrides}}})["icu"][section]
    return cfg


def write_cohort(root: Path | str, n_stays: int = 24, hours: int = 24, seed: int = 0,
                 latent_shape: tuple[int, int, int] = LATENT_SHAPE) -> dict[str, Path]:
    """stays.parquet, pairs.parquet, ehr.npz under ``root/cohort`` and a matching latent cache (``root/latents``, made
    by the stand-in autoencoder directory ``root/ae``). Returns the three paths."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    cohort, latents, ae = root / "cohort", root / "latents", root / "ae"
    for d in (cohort, latents, ae):
        d.mkdir(parents=True, exist_ok=True)
    (ae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "stand_in": True}))

    splits = np.array(["train", "val", "test"])[np.arange(n_stays) % 4 // 2 + (np.arange(n_stays) % 4 == 3)]
    stay_keys = [f"stay{i:03d}" for i in range(n_stays)]
    severity = rng.normal(size=n_stays)
    values = rng.normal(size=(n_stays, hours, N_FEATURES)).astype(np.float32) * 0.3
    trend = np.linspace(0, 1, hours)[None, :] * severity[:, None]
    values[:, :, 0] += trend.astype(np.float32)  # "fluid balance" rising with severity
    values[:, :, 1] -= trend.astype(np.float32)  # "SpO2" falling
    static = np.stack([rng.uniform(0.2, 0.9, n_stays), rng.integers(0, 2, n_stays)], axis=1).astype(np.float32)
    np.savez(cohort / "ehr.npz", stay_keys=np.array(stay_keys), values=values, static=static,
             observed=np.ones((n_stays, hours, 17), bool), columns=np.array([f"f{i}" for i in range(N_FEATURES)]))

    image_rows, stays, pairs = [], [], []
    base = rng.normal(size=(n_stays, *latent_shape)).astype(np.float32)
    for i, key in enumerate(stay_keys):
        n_images = 2 + i % 2
        times = np.sort(rng.uniform(-6, hours - 4, n_images))
        ids = [f"mimic-img{i:03d}-{k}" for k in range(n_images)]
        for k, (image_id, h) in enumerate(zip(ids, times, strict=True)):
            progress = max(0.0, h) / hours * severity[i]
            latent = base[i] + progress * np.ones(latent_shape, np.float32) + 0.05 * rng.normal(size=latent_shape)
            image_rows.append({"image_id": image_id, "split": splits[i], "latent": latent, "hours": h, "k": k})
        for k in range(n_images - 1):
            labels = {}
            for j, column in enumerate(LABEL_COLUMNS):
                labels[f"label_{column}"] = [1.0, 0.0, np.nan][(i + j + k) % 3]
            labels[f"label_{LABEL_COLUMNS[10]}"] = float(severity[i] > 0)  # pleural effusion follows the trajectory
            pairs.append({"pair_key": f"{key}-{k}", "stay_key": key, "patient_pid": f"mimic-p{i:03d}",
                          "split": splits[i], "prior_image_id": ids[k], "later_image_id": ids[k + 1],
                          "prior_hours": times[k], "later_hours": times[k + 1],
                          "ehr_start_bin": int(max(0, np.floor(times[k]))),
                          "ehr_end_bin": int(min(hours, np.ceil(times[k + 1]))), **labels})
        last_hours = float(times[-1])
        since = hours - last_hours
        phenos = {f"pheno_p{j:02d}": int((severity[i] + rng.normal(scale=0.5)) > 0.3 * j / 5) if j < 3
                  else int(rng.random() < 0.3) for j in range(N_PHENOTYPES)}
        stays.append({"stay_key": key, "patient_pid": f"mimic-p{i:03d}", "split": splits[i],
                      "age": float(static[i, 0] * 100), "sex": "M" if static[i, 1] else "F", "los_hours": 72.0,
                      "mortality": int(severity[i] > 0.5), **phenos, "last_image_id": ids[-1],
                      "last_image_hours": last_hours, "hours_since_last_image": since,
                      "last_image_bin": str(last_image_bin([since])[0])})
    pd.DataFrame(stays).to_parquet(cohort / "stays.parquet", index=False)
    pd.DataFrame(pairs).to_parquet(cohort / "pairs.parquet", index=False)

    mean = np.stack([r["latent"] for r in image_rows]).astype(np.float32) / 0.5  # stored unscaled; scale 0.5
    np.save(latents / "latents.npy", mean)
    np.save(latents / "latents_std.npy", np.full_like(mean, 0.02))
    index = pd.DataFrame({"image_id": [r["image_id"] for r in image_rows], "split": [r["split"] for r in image_rows],
                          "row": np.arange(len(image_rows)), "source": "mimic", "view": "AP", "text": ""})
    index.to_parquet(latents / "latents_index.parquet", index=False)
    (latents / "meta.json").write_text(json.dumps({"autoencoder_sha256": dir_digest(ae), "scaling_factor": 0.5,
                                                   "shape": list(mean.shape), "resolution": 32}))
    return {"cohort": cohort, "latents": latents, "ae": ae}
