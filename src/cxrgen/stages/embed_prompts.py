"""Rule ``embed_prompts``: every study of the study table in MedCoDi-M's shared space (the conditions the generators
are trained and sampled with)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.medcodi.prompt_encoders import StudyImages, embed_studies, load_prompt_encoders
from cxrgen.medcodi.studies import MODALITIES


def embed_prompts(*, studies_path: Path | str, index_path: Path | str, store_root: Path | str,
                  encoders_dir: Path | str, out_npz: Path | str, batch_size: int = 64) -> dict:
    """Write ``out_npz`` with ``study_pids`` [N] and float32 ``frontal``, ``lateral``, ``report`` [N, D] (L2-normalised;
    NaN rows where the study lacks the modality) for every study of ``studies_path`` (all splits, its row order),
    encoded by the prompt encoders in ``encoders_dir`` from the store images at their training resolution; returns
    the counts of embedded rows per modality."""
    encoders = load_prompt_encoders(encoders_dir)
    studies = pd.read_parquet(studies_path)
    images = StudyImages(pd.read_parquet(index_path), studies, store_root, encoders.resolution)
    embeddings = embed_studies(encoders, studies, images, batch_size)
    out_npz = Path(out_npz)
    out_npz.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_npz.with_name(out_npz.stem + ".tmp.npz")
    np.savez(tmp, study_pids=np.asarray(studies["study_pid"].astype(str).tolist(), dtype=str), **embeddings)
    tmp.replace(out_npz)
    return {m: int(np.isfinite(embeddings[m][:, 0]).sum()) for m in MODALITIES} | {"studies": len(studies),
                                                                                     "dim": encoders.dim}
