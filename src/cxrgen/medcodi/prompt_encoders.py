"""MedCoDi-M's prompt encoders (§2.1, §3.2.1): frontal films, lateral films and reports mapped into one shared,
L2-normalised space by one image encoder shared by both views and one text encoder (an open_clip CLIP model built by
:mod:`cxrgen.models.clip`), aligned with the symmetric InfoNCE loss (Eq. 4) in pairwise rounds (the bridging
alignment of CoDi, the paper's ref. 11).

Round schedule (:class:`PairRounds`): the rounds are the modality pairs (frontal, report), (lateral, report) and
(frontal, lateral) that the training studies have. Step ``t`` trains the pair ``pairs[t % len(pairs)]`` on a batch of
studies that have both modalities of that pair, drawn by that pair's own :class:`~cxrgen.train.loop.StepBatchSampler`
at its round count ``t // len(pairs)``: the pairs alternate per step, so every pair sees the current encoders (no
pair is trained to convergence and then drifted away from), and each batch is a pure function of (seed, step, rank)
(resume and data parallel). One learnable temperature is shared by the pairs.

A model directory is a CLIP model directory (:func:`cxrgen.models.clip.save_clip`) plus ``prompt_encoders.json``
(the pairs, the image resolution, the embedding size); load it with :func:`load_prompt_encoders`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrgen.medcodi.studies import MODALITIES, modality_mask
from cxrgen.models.clip import ClipBundle, chance_recall_at_k, encode_images, encode_texts, load_clip, recall_at_k
from cxrgen.train.data import StoreImages
from cxrgen.train.loop import StepBatchSampler

MANIFEST = "prompt_encoders.json"
PAIRS: tuple[tuple[str, str], ...] = (("frontal", "report"), ("lateral", "report"), ("frontal", "lateral"))
IMAGE_MODALITIES = ("frontal", "lateral")


def pair_name(pair: tuple[str, str]) -> str:
    return f"{pair[0]}-{pair[1]}"


@dataclass
class PromptEncoders:
    """The shared space: ``encode_images(images)`` with images [B, 1, H, W] in [-1, 1] at the store's resolution
    (either view) and ``encode_texts(texts)`` → L2-normalised [B, ``dim``] embeddings (no gradients)."""

    bundle: ClipBundle
    resolution: int

    @property
    def dim(self) -> int:
        return int(self.bundle.model_cfg["embed_dim"])

    @property
    def device(self) -> torch.device:
        return next(self.bundle.model.parameters()).device

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        self.bundle.model.eval()
        return encode_images(self.bundle, images.to(self.device)).float()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        self.bundle.model.eval()
        return encode_texts(self.bundle, [str(t) for t in texts]).float()


def save_manifest(out_dir: Path | str, *, resolution: int, embed_dim: int, pairs: Sequence[tuple[str, str]]) -> None:
    manifest = {"method": "MedCoDi-M (XGeM) prompt encoders", "resolution": int(resolution),
                "embed_dim": int(embed_dim), "pairs": [list(p) for p in pairs],
                "image_encoder": "shared by the frontal and lateral views", "text_encoder": "report impression"}
    (Path(out_dir) / MANIFEST).write_text(json.dumps(manifest, indent=1))


def load_prompt_encoders(model_dir: Path | str, device: str | torch.device = "cpu") -> PromptEncoders:
    """Load a directory written by rule ``train_prompt_encoders``."""
    model_dir = Path(model_dir)
    if not (model_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"{model_dir} is not a prompt-encoder directory (no {MANIFEST}; rule "
                                "train_prompt_encoders writes it)")
    manifest = json.loads((model_dir / MANIFEST).read_text())
    return PromptEncoders(load_clip(model_dir, device), int(manifest["resolution"]))


# ---- round schedule ------------------------------------------------------------------------------------------------


def pair_members(studies: pd.DataFrame, pairs: Sequence[tuple[str, str]] = PAIRS) -> dict[tuple[str, str], np.ndarray]:
    """Row positions of the studies that have both modalities of each pair (pairs no study has are left out)."""
    mask = modality_mask(studies).to_numpy()
    column = {m: i for i, m in enumerate(MODALITIES)}
    found = {}
    for a, b in pairs:
        rows = np.flatnonzero(mask[:, column[a]] & mask[:, column[b]])
        if len(rows):
            found[(a, b)] = rows
    return found


class PairRounds:
    """The per-step (pair, study rows) schedule of the module docstring; ``batch(step)`` is this rank's share."""

    def __init__(self, members: dict[tuple[str, str], np.ndarray], batch_size: int, seed: int, max_steps: int, *,
                 rank: int = 0, world_size: int = 1):
        if not members:
            raise ValueError("no study has two modalities: nothing to align")
        self.pairs = list(members)
        self.members = members
        self.samplers = {pair: StepBatchSampler(len(rows), batch_size, seed=seed + k, start_step=0,
                                                max_steps=math.ceil(max_steps / len(self.pairs)), rank=rank,
                                                world_size=world_size)
                         for k, (pair, rows) in enumerate(members.items())}

    def pair_at(self, step: int) -> tuple[str, str]:
        return self.pairs[step % len(self.pairs)]

    def batch(self, step: int) -> tuple[tuple[str, str], np.ndarray]:
        pair = self.pair_at(step)
        local = self.samplers[pair].indices_for_step(step // len(self.pairs))
        return pair, self.members[pair][local]

    def steps_per_epoch(self) -> int:
        """Steps in which every pair has seen each of its studies once on average."""
        batch = next(iter(self.samplers.values())).batch_size
        return max(1, sum(math.ceil(len(rows) / batch) for rows in self.members.values()))

    def iterate(self, start: int, stop: int) -> Iterator[tuple[tuple[str, str], np.ndarray]]:
        for step in range(start, stop):
            yield self.batch(step)


# ---- retrieval ------------------------------------------------------------------------------------------------------


def cross_modal_recall(queries: torch.Tensor, gallery: torch.Tensor, keys: Sequence[str],
                       ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k of row-aligned (query i, gallery item i) pairs: each query ranks the gallery by cosine similarity and
    is right when an item with its key is among the first k. Gallery items with equal keys (identical report texts)
    count as one candidate, as in :func:`cxrgen.models.clip.retrieval_metrics`; ``<k>_chance`` = a random ranking."""
    keys = [str(k) for k in keys]
    unique: dict[str, int] = {}
    group = torch.tensor([unique.setdefault(k, len(unique)) for k in keys])
    first = torch.tensor([keys.index(k) for k in unique])
    positives = group[:, None] == torch.arange(len(unique))[None]
    out = {"queries": float(len(keys)), "candidates": float(len(unique))}
    for k, v in recall_at_k(queries @ gallery[first].T, positives, ks).items():
        out[f"recall_at_{k}"] = v
    for k, v in chance_recall_at_k(positives, ks).items():
        out[f"recall_at_{k}_chance"] = v
    return out


def retrieval_by_pair(embeddings: dict[str, np.ndarray], studies: pd.DataFrame, ks: Sequence[int] = (1, 5, 10),
                      pairs: Sequence[tuple[str, str]] = PAIRS) -> dict[str, dict[str, float]]:
    """Recall@k for every pair and both directions (``"frontal->report"`` …) over the studies that have both
    modalities; ``embeddings[m]`` are row-aligned with ``studies`` (NaN rows where absent). Reports are keyed by
    their text, images by study. Pairs with fewer than 2 such studies are left out."""
    mask = modality_mask(studies).reset_index(drop=True)
    keys = {"report": studies["report"].astype(str).tolist(), "frontal": studies["study_pid"].astype(str).tolist(),
            "lateral": studies["study_pid"].astype(str).tolist()}
    out = {}
    for a, b in pairs:
        rows = np.flatnonzero((mask[a] & mask[b]).to_numpy())
        if len(rows) < 2:
            continue
        fa, fb = (torch.from_numpy(np.asarray(embeddings[m][rows], dtype=np.float32)) for m in (a, b))
        ka, kb = ([keys[m][i] for i in rows] for m in (a, b))
        out[f"{a}->{b}"] = cross_modal_recall(fa, fb, kb, ks)
        out[f"{b}->{a}"] = cross_modal_recall(fb, fa, ka, ks)
    return out


def retrieval_markdown(results: dict[str, dict[str, float]], ks: Sequence[int] = (1, 5, 10)) -> str:
    """A markdown table: one row per direction, recall@k (chance in brackets)."""
    lines = ["| query -> gallery | pairs | " + " | ".join(f"R@{k}" for k in ks) + " |",
             "|---|---|" + "---|" * len(ks)]
    for name, r in results.items():
        cells = " | ".join(f"{r[f'recall_at_{k}']:.3f} ({r[f'recall_at_{k}_chance']:.3f})" for k in ks)
        lines.append(f"| {name} | {int(r['queries'])} | {cells} |")
    return "\n".join(lines) + "\n\n(chance level of a random ranking in brackets)\n"


class StudyImages:
    """The store images of a study table's frontal and lateral films, read by image id ([1, H, W] in [-1, 1])."""

    def __init__(self, index: pd.DataFrame, studies: pd.DataFrame, store_root: Path | str, resolution: int):
        ids = pd.concat([studies["frontal_image_id"], studies["lateral_image_id"]]).dropna().astype(str).unique()
        rows = index[index["image_id"].astype(str).isin(set(ids))]
        missing = set(ids) - set(rows["image_id"].astype(str))
        if missing:
            raise ValueError(f"{len(missing)} study images are not in the store index (e.g. {sorted(missing)[:3]}); "
                             "rebuild the study table from this index")
        self.images = StoreImages(store_root, rows.sort_values("image_id"), resolution)
        self.position = {str(i): k for k, i in enumerate(self.images.rows["image_id"])}

    def __call__(self, image_id: str) -> torch.Tensor:
        return self.images.image(self.position[str(image_id)])


# ---- study embeddings ---------------------------------------------------------------------------------------------


def embed_studies(encoders: PromptEncoders, studies: pd.DataFrame, read_image, batch_size: int = 64
                  ) -> dict[str, np.ndarray]:
    """``{"frontal", "lateral", "report"}`` → float32 [N, D] embeddings row-aligned with ``studies``, NaN rows where a
    study lacks the modality. ``read_image(image_id)`` → [1, H, W] tensor in [-1, 1]."""
    n, dim = len(studies), encoders.dim
    out = {m: np.full((n, dim), np.nan, dtype=np.float32) for m in MODALITIES}
    mask = modality_mask(studies).reset_index(drop=True)
    for modality in MODALITIES:
        rows = np.flatnonzero(mask[modality].to_numpy())
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            if modality == "report":
                features = encoders.encode_texts(studies["report"].iloc[chunk].tolist())
            else:
                ids = studies[f"{modality}_image_id"].iloc[chunk].tolist()
                features = encoders.encode_images(torch.stack([read_image(i) for i in ids]))
            out[modality][chunk] = features.cpu().numpy().astype(np.float32)
    return out
