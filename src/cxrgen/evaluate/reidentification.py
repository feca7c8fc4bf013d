"""Patient re-identification: a Siamese patient-verification network and the audit of generated images against the
training image of their prompt.

The network follows Packhäuser et al. 2022 ("Deep learning-based patient re-identification is able to exploit the
biometric nature of medical chest X-ray data", Sci. Rep. 12): two weight-sharing ResNet-50 branches embed the two
radiographs, the absolute difference of the embeddings goes through a fully connected layer and a sigmoid, trained
with binary cross-entropy on balanced pairs of images of the same vs different patients (verification). The residual
trunk here is written with a configurable width and depth: ``block: bottleneck, layers: [3, 4, 6, 3], base_width:
64`` is the ResNet-50 trunk (He et al. 2016), the demo config uses a much smaller trunk. Trained from scratch on 1
channel (no ImageNet weights offline).

Pairs never cross splits: the train pairs come from the train split's patients; the verification AUC is measured
on pairs within the held-out val / test splits (patients the network never saw; the splits are patient-disjoint).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from cxrgen.evaluate.metrics import auroc

BLOCKS = ("basic", "bottleneck")


# --------------------------------------------------------------------------------------------------- pairs
def patient_pairs(patients, n_pairs: int, seed) -> np.ndarray:
    """``[n_pairs, 3]`` int rows ``(i, j, same)`` of positions into ``patients`` (one patient id per image):
    ``n_pairs // 2`` same-patient pairs (two different images of one patient, the patient drawn uniformly among
    those with at least two images) first, then different-patient pairs (two images of two different patients).
    A pure function of (patients, n_pairs, seed); ``seed`` may be a list (e.g. ``[seed, step]``)."""
    patients = np.asarray(patients).astype(str)
    rng = np.random.default_rng(seed)
    groups = pd.Series(np.arange(len(patients))).groupby(patients, sort=True).indices
    repeated = [np.sort(v) for v in groups.values() if len(v) >= 2]
    if not repeated:
        raise ValueError("patient pairs need at least one patient with two or more images")
    if len(groups) < 2:
        raise ValueError("patient pairs need at least two patients")
    n_same = n_pairs // 2
    out = np.zeros((n_pairs, 3), dtype=np.int64)
    for k in range(n_same):
        group = repeated[int(rng.integers(len(repeated)))]
        i, j = rng.choice(group, 2, replace=False)
        out[k] = (i, j, 1)
    k = n_same
    while k < n_pairs:
        i, j = rng.integers(len(patients), size=2)
        if patients[i] != patients[j]:
            out[k] = (i, j, 0)
            k += 1
    return out


def pair_counts(patients) -> dict:
    """Images, patients and patients with at least two images (the ones that give same-patient pairs)."""
    counts = pd.Series(np.asarray(patients).astype(str)).value_counts()
    return {"images": int(counts.sum()), "patients": int(len(counts)),
            "patients_with_2plus_images": int((counts >= 2).sum())}


# --------------------------------------------------------------------------------------------------- network
class _Block(nn.Module):
    def __init__(self, kind: str, cin: int, width: int, stride: int):
        super().__init__()
        expansion = 4 if kind == "bottleneck" else 1
        cout = width * expansion
        if kind == "bottleneck":
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        else:
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())
        self.out_channels = cout

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


class SiameseVerifier(ModelMixin, ConfigMixin):
    """Same-patient probability of two radiographs: ``sigmoid(fc(|f(a) - f(b)|))`` with one shared residual trunk
    ``f`` (stem 7×7/2 conv + 3×3/2 max-pool, then ``len(layers)`` stages of width ``base_width·2^s``, global average
    pool). Inputs: float ``[B, 1, R, R]`` in [0, 1], mapped to [-1, 1]."""

    @register_to_config
    def __init__(self, block: str = "bottleneck", layers: tuple[int, ...] = (3, 4, 6, 3), base_width: int = 64,
                 resolution: int = 256):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"reid.model.block = {block!r}; allowed: {', '.join(BLOCKS)}")
        stages, cin = [], base_width
        for s, count in enumerate(layers):
            for b in range(int(count)):
                unit = _Block(block, cin, base_width * 2**s, 2 if (b == 0 and s > 0) else 1)
                stages.append(unit)
                cin = unit.out_channels
        self.stem = nn.Sequential(nn.Conv2d(1, base_width, 7, 2, 3, bias=False), nn.BatchNorm2d(base_width),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        self.trunk = nn.Sequential(*stages)
        self.head = nn.Linear(cin, 1)
        self.embedding_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        r = int(self.config.resolution)
        images = images.float()
        if images.shape[-2:] != (r, r):
            images = F.interpolate(images, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        return images * 2.0 - 1.0

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` global-pooled trunk features of images in [0, 1]."""
        x = self.trunk(self.stem(self.prepare(images).to(self.device)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def pair_logits(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Same-patient logits ``[B]`` of image pairs (one forward pass through the shared trunk)."""
        both = self.embed(torch.cat([left, right]))
        a, b = both[: len(left)], both[len(left):]
        return self.head((a - b).abs()).squeeze(1)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return self.pair_logits(left, right)


def build_verifier(model_cfg: dict, resolution: int) -> SiameseVerifier:
    return SiameseVerifier(block=str(model_cfg["block"]), layers=tuple(int(v) for v in model_cfg["layers"]),
                           base_width=int(model_cfg["base_width"]), resolution=int(resolution))


@torch.no_grad()
def pair_probabilities(model: SiameseVerifier, left: torch.Tensor, right: torch.Tensor,
                       batch_size: int = 64) -> np.ndarray:
    """Same-patient probabilities of aligned image stacks ``left[k]`` / ``right[k]`` (eval mode, batched)."""
    model.eval()
    out = [torch.sigmoid(model.pair_logits(left[s : s + batch_size], right[s : s + batch_size])).cpu()
           for s in range(0, len(left), batch_size)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


@torch.no_grad()
def embeddings(model: SiameseVerifier, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    model.eval()
    out = [model.embed(images[s : s + batch_size]).cpu() for s in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.embedding_dim), np.float32)


# --------------------------------------------------------------------------------------------------- operating point
def operating_threshold(labels: np.ndarray, scores: np.ndarray, point: str, target_fpr: float) -> dict:
    """The decision threshold (score >= threshold = same patient) at ``point``: ``eer`` (false-positive rate =
    false-negative rate, the smallest threshold where FPR <= FNR) or ``fpr`` (the smallest threshold whose FPR on
    these pairs is at most ``target_fpr``), with the FPR / TPR it gives on these pairs."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not (y.any() and (~y).any()):
        raise ValueError("an operating threshold needs same- and different-patient pairs")
    candidates = np.unique(np.concatenate([s, [np.inf]]))
    fpr = np.array([(s[~y] >= t).mean() for t in candidates])
    tpr = np.array([(s[y] >= t).mean() for t in candidates])
    if point == "eer":
        k = int(np.flatnonzero(fpr <= 1.0 - tpr)[0])
    elif point == "fpr":
        k = int(np.flatnonzero(fpr <= float(target_fpr))[0])
    else:
        raise ValueError(f"reid.operating_point = {point!r}; allowed: eer, fpr")
    threshold = float(candidates[k]) if np.isfinite(candidates[k]) else float(np.nextafter(s.max(), np.inf))
    return {"threshold": threshold, "fpr": float(fpr[k]), "tpr": float(tpr[k]), "point": point,
            **({"target_fpr": float(target_fpr)} if point == "fpr" else {})}


def rates_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    return {"fpr": float((s[~y] >= threshold).mean()) if (~y).any() else None,
            "tpr": float((s[y] >= threshold).mean()) if y.any() else None}


# --------------------------------------------------------------------------------------------------- training
@dataclass
class TrainedVerifier:
    model: SiameseVerifier
    steps: int
    resumed_from: int | None
    selected_step: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)


class PairImages:
    """Images of store rows (with ``store_root``) read on demand at ``resolution``, by position."""

    def __init__(self, rows: pd.DataFrame, resolution: int):
        from cxrgen.evaluate.classifier import LabelledImages

        self._data = LabelledImages(rows.reset_index(drop=True), resolution)

    def __len__(self) -> int:
        return len(self._data)

    def stack(self, positions) -> torch.Tensor:
        return torch.stack([self._data.image(int(i)) for i in positions]) if len(positions) else torch.zeros(0)


def score_pairs(model: SiameseVerifier, images: PairImages, pairs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    out = []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s : s + batch_size]
        out.append(pair_probabilities(model, images.stack(chunk[:, 0]), images.stack(chunk[:, 1]), batch_size))
    return np.concatenate(out) if out else np.zeros(0)


def train_verifier(train_rows: pd.DataFrame, *, cfg: dict, resolution: int, seed: int, state_dir: Path | str,
                   val_rows: pd.DataFrame | None = None, extra_state: dict | None = None, on_log=None,
                   on_eval=None, stop_after_steps: int | None = None) -> tuple[TrainedVerifier, object]:
    """Train (or resume) the verifier on pairs of ``train_rows`` (store rows with ``store_root`` and
    ``patient_pid``) with the shared loop; returns ``(trained, loop_result)``.

    Every step draws a fresh balanced global batch of ``cfg["batch_size"]`` pairs, a pure function of (seed, step)
    (:func:`patient_pairs` seeded ``[seed, step]``), so an interrupted and an uninterrupted run see the same pairs;
    each image of a pair gets its own light augmentation (:func:`cxrgen.evaluate.classifier.augment`). With several
    ranks each rank takes its slice of the global batch of pairs, augmentations are drawn for the global batch and
    batch normalisation uses global statistics. Every ``eval_every`` steps and at the end rank 0 scores
    ``cfg["eval_pairs"]`` fixed val pairs (AUC); the weights of the best val AUC are returned (else the last)."""
    from cxrgen.evaluate.classifier import augment
    from cxrgen.train.collectives import global_batch_norm
    from cxrgen.train.loop import BestOnValidation, run_training, seed_everything
    from cxrgen.train.sections import loop_config

    train_images = PairImages(train_rows, resolution)
    patients = train_rows["patient_pid"].astype(str).to_numpy()
    loop = loop_config(cfg, seed, stop_after_steps=stop_after_steps)
    world = loop.resolved_world()
    batch = int(cfg["batch_size"])
    if batch % world.world_size:
        raise ValueError(f"reid.batch_size {batch} is not divisible by {world.world_size} ranks")
    val_images = val_pairs = None
    if val_rows is not None and len(val_rows) and pair_counts(val_rows["patient_pid"])["patients_with_2plus_images"]:
        val_images = PairImages(val_rows, resolution)
        val_pairs = patient_pairs(val_rows["patient_pid"], int(cfg["eval_pairs"]), [seed, 1])
    seed_everything(seed)
    model = build_verifier(cfg["model"], resolution)
    if world.world_size > 1:
        global_batch_norm(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]), betas=tuple(cfg["adam_betas"]),
                                 weight_decay=float(cfg["weight_decay"]))
    tracker = BestOnValidation(model, extra_state, on_log=on_log, on_eval=on_eval)

    def loader_for(start: int):
        local = batch // world.world_size
        for step in range(start, loop.max_steps):
            pairs = patient_pairs(patients, batch, [seed, 0, step])[world.rank * local:(world.rank + 1) * local]
            yield {"left": train_images.stack(pairs[:, 0]), "right": train_images.stack(pairs[:, 1]),
                   "same": torch.from_numpy(pairs[:, 2].astype(np.float32))}

    def validate(step: int) -> None:
        scores = score_pairs(model, val_images, val_pairs)
        value = auroc(val_pairs[:, 2], scores)
        value = float("nan") if value is None else value
        model.train()
        tracker.record(step, {"val/auc": value}, value)

    def train_step(data: dict, ctx) -> dict[str, float]:
        left = augment(data["left"], cfg["augment"], ctx.generator, ctx)
        right = augment(data["right"], cfg["augment"], ctx.generator, ctx)
        with ctx.autocast():
            logits = model.pair_logits(left.to(ctx.device), right.to(ctx.device))
            loss = F.binary_cross_entropy_with_logits(logits.float(), data["same"].to(ctx.device))
        grad_norm = ctx.backward_step(loss, model, optimizer)
        done = ctx.step + 1
        if ctx.is_main_process and val_pairs is not None and tracker.due(done, cfg["eval_every"], loop.max_steps):
            validate(done)
        return {"loss": loss.item(), "grad_norm": grad_norm}

    started = time.perf_counter()
    result = run_training(loop, modules={"verifier": model}, optimizers={"verifier": optimizer},
                          loader_for=loader_for, train_step=train_step, state_dir=Path(state_dir),
                          on_log=tracker.log_hook, extra_state=tracker.extra, desc="reid", distributed_ready=True)
    seconds = time.perf_counter() - started
    selected = tracker.restore_best(result.steps_done)
    model.cpu().eval()
    trained = TrainedVerifier(model=model, steps=result.steps_done, resumed_from=result.resumed_from,
                              selected_step=selected, seconds=seconds, history=tracker.history,
                              evals=tracker.evals)
    return trained, result


def load_verifier(model_dir: Path | str) -> SiameseVerifier:
    return SiameseVerifier.from_pretrained(str(model_dir)).eval()


# --------------------------------------------------------------------------------------------------- audit
def prompt_summary(scores: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per prompt (``set`` + ``source_image_id``) over its seeds: n, mean and max verifier score, and how many of its
    generated images reach the threshold. ``scores`` has one row per generated image (``set``, ``source_image_id``,
    ``seed``, ``score``)."""
    grouped = scores.groupby(["set", "source_image_id"], sort=True)["score"]
    out = grouped.agg(n="size", mean="mean", max="max").reset_index()
    out["above_threshold"] = grouped.apply(lambda s: int((s >= threshold).sum())).to_numpy()
    return out


def audit_generated(model: SiameseVerifier, generated: pd.DataFrame, train: pd.DataFrame, *, pixel_resolution: int,
                    batch_size: int = 64) -> pd.DataFrame:
    """One row per generated image (store rows with ``store_root``, ``source_image_id``, ``seed``, ``set``):

    * ``score``: the verifier's same-patient probability of the generated image and the training image of its prompt
      (``source_image_id``; NaN when the prompt has no source image among ``train``);
    * ``nn_pixel`` / ``nn_feature``: the distance (1 − cosine similarity; pixels mean-centred per image at
      ``pixel_resolution``, features = the verifier's embedding) to the nearest image of ``train``, computed for this
      image itself (each seed's image has its own nearest neighbour), with ``nn_*_same_patient``: whether that
      nearest training image belongs to the patient of the prompt's source image.
    """
    from cxrgen.evaluate import memorisation as mem
    from cxrgen.evaluate.features import iter_images

    generated = generated.reset_index(drop=True)
    train = train.reset_index(drop=True)
    train_pos = {str(i): k for k, i in enumerate(train["image_id"].astype(str))}
    train_patient = train["patient_pid"].astype(str).to_numpy()
    source = generated["source_image_id"].fillna("").astype(str)
    source_pos = source.map(train_pos)
    resolution = int(model.config.resolution)

    gen_pixels, gen_features, scores = [], [], np.full(len(generated), np.nan)
    train_images = PairImages(train, resolution)
    start = 0
    for images in iter_images(generated, resolution, batch_size):
        stop = start + len(images)
        gen_pixels.append(mem.pixel_vectors(images, pixel_resolution))
        gen_features.append(embeddings(model, images, batch_size))
        known = np.flatnonzero(source_pos.iloc[start:stop].notna().to_numpy())
        if len(known):
            partners = train_images.stack(source_pos.iloc[start:stop].iloc[known].astype(int).to_numpy())
            scores[start + known] = pair_probabilities(model, images[known], partners, batch_size)
        start = stop
    search_pixel = mem.NearestNeighbours(np.concatenate(gen_pixels) if gen_pixels else np.zeros((0, 1)))
    search_feature = mem.NearestNeighbours(np.concatenate(gen_features) if gen_features else np.zeros((0, 1)))
    for images in iter_images(train, resolution, batch_size):
        search_pixel.update(mem.pixel_vectors(images, pixel_resolution))
        search_feature.update(mem.unit_rows(embeddings(model, images, batch_size)))
    source_patient = source_pos.map(lambda k: train_patient[int(k)] if pd.notna(k) else None).to_numpy()
    out = generated[["image_id", "set", "source_image_id", "seed"]].copy()
    out["score"] = scores
    for name, search in (("pixel", search_pixel), ("feature", search_feature)):
        out[f"nn_{name}"] = search.distance
        nn_patient = np.where(search.index >= 0, train_patient[np.maximum(search.index, 0)], None)
        out[f"nn_{name}_image_id"] = np.where(search.index >= 0,
                                              train["image_id"].astype(str).to_numpy()[np.maximum(search.index, 0)],
                                              None)
        out[f"nn_{name}_same_patient"] = [bool(s is not None and n == s) for s, n in zip(source_patient, nn_patient,
                                                                                         strict=True)]
    return out
