"""The in-domain evaluator: a torchvision DenseNet trained from scratch as a 14-finding multi-label classifier.

It is the feature extractor of the in-domain FID (global-pooled penultimate features), the judge of conditional
fidelity, and the classifier every downstream experiment trains with identical hyperparameters (CheXpert baseline,
Irvin et al. 2019: DenseNet-121, Adam 1e-4, batch 16; MedCoDi-M §4.5 trains DenseNet-121 from scratch).

Interface used by the metric harness::

    ev = load_evaluator("results/models/evaluator")   # strict load of evaluator.json + model.safetensors
    ev.findings            # the 14 CheXpert observations, output order
    ev.resolution          # the training resolution; inputs of any size are resized to it
    ev.features(images)    # [B, D] global-pooled penultimate features (images: float [B, 1, H, W] in [0, 1])
    ev.predict_proba(images)  # [B, 14] sigmoid probabilities

Training data is a frame of store rows with a ``store_root`` column (:func:`with_store_root`), so real rows
(``results/store``) and synthetic rows (``results/synthetic/<variant>/store``) mix freely in one training set.
Labels are 1/0/NaN; NaN (unknown) entries are masked out of the loss.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cxrgen.evaluate.metrics import multilabel_scores
from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS
from cxrgen.store import ShardStore
from cxrgen.train.losses import masked_bce

log = logging.getLogger(__name__)

EVALUATOR_CONFIG = "evaluator.json"
WEIGHTS = "model.safetensors"
FORMAT = "cxrgen-evaluator/1"
ARCH_KEYS = ("growth_rate", "block_config", "num_init_features", "bn_size", "drop_rate")
ARCH_DEFAULTS = {"growth_rate": 32, "block_config": [6, 12, 24, 16], "num_init_features": 64, "bn_size": 4,
                 "drop_rate": 0.0}  # DenseNet-121 (Huang et al. 2017; torchvision densenet121)


# --------------------------------------------------------------------------------------------------- architecture
def build_classifier(cfg: dict) -> nn.Module:
    """A torchvision ``DenseNet`` (random init, nothing downloaded) with a 1-channel stem and 14 outputs.

    ``cfg``: growth_rate, block_config, num_init_features, bn_size, drop_rate (missing keys = DenseNet-121).
    """
    from torchvision.models import DenseNet

    unknown = sorted(set(cfg) - set(ARCH_KEYS))
    if unknown:
        raise ValueError(f"unknown classifier architecture key(s) {unknown}; allowed: {list(ARCH_KEYS)}")
    arch = {**ARCH_DEFAULTS, **cfg}
    model = DenseNet(growth_rate=int(arch["growth_rate"]), block_config=tuple(int(b) for b in arch["block_config"]),
                     num_init_features=int(arch["num_init_features"]), bn_size=int(arch["bn_size"]),
                     drop_rate=float(arch["drop_rate"]), num_classes=len(LABEL_COLUMNS))
    stem = model.features.conv0
    model.features.conv0 = nn.Conv2d(1, stem.out_channels, kernel_size=stem.kernel_size, stride=stem.stride,
                                     padding=stem.padding, bias=False)
    nn.init.kaiming_normal_(model.features.conv0.weight)  # as torchvision initialises every conv
    return model


def architecture(cfg: dict) -> dict:
    """The full architecture dict (defaults filled in, lists not tuples) as saved with the weights."""
    arch = {**ARCH_DEFAULTS, **{k: cfg[k] for k in ARCH_KEYS if k in cfg}}
    arch["block_config"] = [int(b) for b in arch["block_config"]]
    return arch


def tiny_classifier_config() -> dict:
    """A DenseNet small enough for unit tests (a few ms per 32 px image on one core)."""
    return {"growth_rate": 4, "block_config": [1, 1], "num_init_features": 8, "bn_size": 2, "drop_rate": 0.0}


def tiny_evaluator(resolution: int = 32, seed: int = 0) -> Evaluator:
    """An untrained evaluator with :func:`tiny_classifier_config` (deterministic weights): for tests of code that
    consumes an evaluator (metrics, memorisation) without training one."""
    torch.manual_seed(seed)
    model_cfg = tiny_classifier_config()
    return Evaluator(build_classifier(model_cfg), model_cfg, resolution)


def prepare(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Network input from images in [0, 1] ([B, 1, H, W], any size): resized to ``resolution`` (bilinear with
    antialiasing) and mapped to [-1, 1] (the store-wide model convention)."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected images of shape [B, 1, H, W], got {tuple(images.shape)}")
    images = images.float()
    if images.shape[-2:] != (resolution, resolution):
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True,
                               align_corners=False)
    return images * 2.0 - 1.0


class Evaluator:
    """A trained classifier with its input convention. Inference only (eval mode, no gradients)."""

    def __init__(self, model: nn.Module, model_cfg: dict, resolution: int,
                 findings: list[str] | tuple[str, ...] = CHEXPERT_LABELS, batch_size: int = 64):
        self.model = model.eval()
        self.model_cfg = architecture(model_cfg)
        self.resolution = int(resolution)
        self.findings = list(findings)
        self.batch_size = batch_size

    @property
    def feature_dim(self) -> int:
        return int(self.model.classifier.in_features)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> Evaluator:
        self.model.to(device)
        return self

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.model.features(x))  # what torchvision's DenseNet.forward does before the classifier
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    @torch.no_grad()
    def _batched(self, images: torch.Tensor, head: bool) -> torch.Tensor:
        self.model.eval()
        outs = []
        for start in range(0, len(images), self.batch_size):
            x = prepare(images[start : start + self.batch_size], self.resolution).to(self.device)
            pooled = self._pooled(x)
            outs.append((torch.sigmoid(self.model.classifier(pooled)) if head else pooled).cpu())
        if not outs:
            return torch.zeros(0, len(self.findings) if head else self.feature_dim)
        return torch.cat(outs)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """[B, D] global-average-pooled penultimate features (the in-domain FID backbone)."""
        return self._batched(images, head=False)

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 14] finding probabilities, columns in the order of ``findings``."""
        return self._batched(images, head=True)


def save_evaluator(evaluator: Evaluator, out_dir: Path | str, extra: dict | None = None) -> Path:
    """``evaluator.json`` (format, architecture, resolution, findings, input convention, ``extra``) and
    ``model.safetensors`` in ``out_dir``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "model": evaluator.model_cfg, "resolution": evaluator.resolution,
            "findings": evaluator.findings, "architecture": "torchvision.models.DenseNet, 1-channel stem",
            "input": "float [B, 1, H, W] in [0, 1]; resized (bilinear, antialiased) to resolution, then x * 2 - 1",
            "features": "relu(features(x)) global-average-pooled (the input of the classifier layer)",
            **(extra or {})}
    state = {k: v.detach().cpu().contiguous() for k, v in evaluator.model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS))
    (out_dir / EVALUATOR_CONFIG).write_text(json.dumps(meta, indent=1))
    return out_dir


def load_evaluator(model_dir: Path | str, device: torch.device | str = "cpu") -> Evaluator:
    """Load a directory written by :func:`save_evaluator`; fails if any weight is missing, unexpected or
    mis-shaped."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    if not (model_dir / EVALUATOR_CONFIG).is_file():
        raise FileNotFoundError(f"{model_dir} is not an evaluator directory (no {EVALUATOR_CONFIG})")
    meta = json.loads((model_dir / EVALUATOR_CONFIG).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{model_dir / EVALUATOR_CONFIG}: format {meta.get('format')!r}, expected {FORMAT!r}")
    model = build_classifier(meta["model"])
    model.load_state_dict(load_file(str(model_dir / WEIGHTS)), strict=True)
    return Evaluator(model, meta["model"], meta["resolution"], meta["findings"]).to(device)


# --------------------------------------------------------------------------------------------------- loss, metrics
def positive_weights(labels: np.ndarray, max_weight: float) -> np.ndarray:
    """Per-finding n_negative / n_positive over the known labels, clipped to [1/max_weight, max_weight]; 1 where a
    finding has no positive or no negative example."""
    labels = np.asarray(labels, dtype=np.float64)
    pos = np.nansum(labels == 1, axis=0).astype(np.float64)
    neg = np.nansum(labels == 0, axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((pos > 0) & (neg > 0), neg / np.maximum(pos, 1), 1.0)
    return np.clip(ratio, 1.0 / max_weight, max_weight).astype(np.float32)


# --------------------------------------------------------------------------------------------------- data
def with_store_root(rows: pd.DataFrame, store_root: Path | str) -> pd.DataFrame:
    """``rows`` (index rows of one store) with a ``store_root`` column, ready to concatenate with other stores."""
    out = rows.copy()
    out["store_root"] = str(store_root)
    return out


class LabelledImages(torch.utils.data.Dataset):
    """Images in [0, 1] ([1, R, R] float) and the 14 labels (NaN = unknown) of rows from one or more stores.

    ``frame`` needs ``store_root``, the store's blob columns and ``lbl_*``. Each store is read at ``resolution`` when
    it holds it, else at the nearest larger (else the largest) stored resolution and resized. ``label_mask`` (14
    bools) keeps only those findings' labels (the others become NaN)."""

    def __init__(self, frame: pd.DataFrame, resolution: int, label_mask: np.ndarray | None = None):
        if "store_root" not in frame.columns:
            raise ValueError("LabelledImages needs a store_root column (see with_store_root)")
        self.frame = frame.reset_index(drop=True)
        self.resolution = int(resolution)
        labels = self.frame[list(LABEL_COLUMNS)].to_numpy(dtype=np.float32).copy()
        if label_mask is not None:
            labels[:, ~np.asarray(label_mask, bool)] = np.nan
        self.labels = torch.from_numpy(labels)
        self._where: list[tuple[int, int]] = [(0, 0)] * len(self.frame)
        self._stores: list[tuple[ShardStore, int]] = []
        for root, group in self.frame.groupby("store_root", sort=True):
            stored = _resolution_to_read(group, self.resolution)
            self._stores.append((ShardStore(root, group.reset_index(drop=True)), stored))
            for local, position in enumerate(group.index):
                self._where[position] = (len(self._stores) - 1, local)

    def __len__(self) -> int:
        return len(self.frame)

    def image(self, i: int) -> torch.Tensor:
        store_id, local = self._where[i]
        store, stored = self._stores[store_id]
        pixels = torch.from_numpy(store.read_float(local, stored))[None]
        if stored != self.resolution or pixels.shape[-2:] != (self.resolution, self.resolution):
            pixels = F.interpolate(pixels[None], size=(self.resolution, self.resolution), mode="bilinear",
                                   antialias=True, align_corners=False)[0]
        return pixels

    def __getitem__(self, i: int) -> dict:
        return {"image": self.image(i), "labels": self.labels[i]}


def _resolution_to_read(rows: pd.DataFrame, resolution: int) -> int:
    stored = sorted(int(c.removeprefix("offset_")) for c in rows.columns
                    if c.startswith("offset_") and rows[c].notna().all())
    if not stored:
        raise ValueError(f"store {rows['store_root'].iloc[0]} has no resolution stored for all its rows")
    if resolution in stored:
        return resolution
    larger = [r for r in stored if r > resolution]
    return larger[0] if larger else stored[-1]


def predict_rows(evaluator: Evaluator, rows: pd.DataFrame, batch_size: int = 64) -> np.ndarray:
    """[N, 14] probabilities for store rows (with ``store_root``)."""
    return predict_dataset(evaluator, LabelledImages(rows, evaluator.resolution), batch_size)


def predict_dataset(evaluator: Evaluator, data: LabelledImages, batch_size: int = 64) -> np.ndarray:
    """[N, 14] probabilities of a dataset's images, read batch by batch (never all in memory)."""
    out = []
    for start in range(0, len(data), batch_size):
        images = torch.stack([data.image(i) for i in range(start, min(len(data), start + batch_size))])
        out.append(evaluator.predict_proba(images).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(evaluator.findings)), np.float32)


def augment(images: torch.Tensor, cfg: dict, generator: torch.Generator, ctx=None) -> torch.Tensor:
    """Light random affine (rotation, isotropic scale, translation; no flips — laterality matters) and
    brightness/contrast jitter of [0, 1] images, drawn from ``generator`` (the training loop's resumable RNG), so the
    augmentation of step k is the same in an interrupted and an uninterrupted run.

    ``ctx`` (the loop's :class:`~cxrgen.train.loop.TrainContext`) with several ranks: ``images`` are this rank's rows
    of the global batch; every draw is made for the global batch and this rank keeps its rows (``ctx.local``), so the
    ranks together augment as the single process does."""
    b = images.shape[0]
    world_size = ctx.world_size if ctx is not None else 1

    def uniform(limit: float) -> torch.Tensor:
        drawn = (torch.rand(b * world_size, generator=generator) * 2 - 1) * float(limit)
        return ctx.local(drawn) if ctx is not None else drawn

    angle = uniform(cfg["rotation_deg"]) * math.pi / 180
    scale = 1.0 + uniform(cfg["scale"])
    tx, ty = uniform(cfg["translate"]) * 2, uniform(cfg["translate"]) * 2  # affine_grid's [-1, 1] = image width
    brightness, contrast = uniform(cfg["brightness"]), 1.0 + uniform(cfg["contrast"])
    if any(float(cfg[k]) > 0 for k in ("rotation_deg", "scale", "translate")):
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * contrast.view(b, 1, 1, 1) + mean + brightness.view(b, 1, 1, 1)
    return images.clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------------- training
@dataclass
class TrainedClassifier:
    evaluator: Evaluator
    steps: int
    resumed_from: int | None
    selected_step: int
    selection: str
    n_train: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    pos_weight: list[float] | None = None


def finding_mask(task_findings: list[str] | None) -> np.ndarray:
    """14 bools: the findings whose labels train the model (None/empty = all)."""
    if not task_findings:
        return np.ones(len(CHEXPERT_LABELS), bool)
    unknown = sorted(set(task_findings) - set(CHEXPERT_LABELS))
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown}; allowed: {list(CHEXPERT_LABELS)}")
    return np.array([name in task_findings for name in CHEXPERT_LABELS])


def train_classifier(train_rows: pd.DataFrame, *, cfg: dict, resolution: int, seed: int, state_dir: Path | str,
                     val_rows: pd.DataFrame | None = None, task_findings: list[str] | None = None,
                     extra_state: dict | None = None, on_log=None, on_eval=None,
                     stop_after_steps: int | None = None, desc: str = "classifier",
                     init_state: dict | None = None) -> TrainedClassifier:
    """Train (or resume) a classifier on ``train_rows`` (store rows with ``store_root``) with the shared loop.

    ``cfg`` = the validated ``evaluator`` section (model, optimiser, steps, augmentation, selection); the data order
    and augmentations are functions of (seed, step); checkpoints go to ``state_dir`` (resumable, bit-exact on CPU).
    Every ``eval_every`` steps (and at the end) the model is scored on ``val_rows``: masked BCE and AUROC per task
    finding; ``selection: best_val_auroc`` returns the weights of the best macro AUROC (else the last weights).
    ``task_findings`` restricts the loss (and the model-selection AUROC) to those findings.
    ``on_log(metrics, step)`` / ``on_eval(metrics, step)`` receive the training / validation metrics (MLflow).
    ``init_state``: a state dict of the same architecture to start from (fine-tuning) instead of the seeded random
    initialisation; a checkpoint in ``state_dir`` still takes precedence (resume).

    Data parallel (ranks of :func:`cxrgen.train.distributed.launch` or torchrun): each rank trains on its slice of
    every global batch of ``batch_size`` images, augmentations are drawn for the global batch, the loss is the global
    batch's mean over its known labels and batch normalisation uses the global batch's statistics
    (:func:`cxrgen.train.collectives.global_batch_norm`), so the ranks train the single-process weights up to float
    summation order (DenseNet dropout, ``drop_rate`` > 0, draws its masks per rank). Only rank 0 validates and
    calls ``on_log``/``on_eval``: its result holds the selected weights; the other ranks' the last ones.
    """
    from cxrgen.train.collectives import global_batch_norm, sum_over_ranks
    from cxrgen.train.loop import BestOnValidation, LoopConfig, StepBatchSampler, run_training, seed_everything

    mask = finding_mask(task_findings)
    train_set = LabelledImages(train_rows, resolution, label_mask=mask)
    val_set = None
    if val_rows is not None and len(val_rows):
        val_rows = val_rows.sort_values("image_id").head(int(cfg["val_max_images"]))
        val_set = LabelledImages(val_rows, resolution, label_mask=mask)
    loop_cfg = LoopConfig(max_steps=int(cfg["max_steps"]), checkpoint_every=int(cfg["checkpoint_every"]),
                          log_every=int(cfg["log_every"]), keep_checkpoints=int(cfg["keep_checkpoints"]), seed=seed,
                          grad_clip=cfg["grad_clip"], mixed_precision=cfg["mixed_precision"],
                          channels_last=cfg["channels_last"], device=cfg["device"],
                          stop_after_steps=stop_after_steps)
    device = loop_cfg.resolved_device()
    world = loop_cfg.resolved_world()
    seed_everything(seed)
    model = build_classifier(cfg["model"])
    if init_state is not None:
        model.load_state_dict(init_state, strict=True)
    if world.world_size > 1:
        # per-rank batch statistics would normalise each rank's rows by its own share of the batch (2 of 4 images
        # in the tests), and the running statistics would be rank 0's: the weights would drift from the single
        # process's. Global statistics keep 2 ranks equal to one process (checked by test_evaluator_distributed).
        global_batch_norm(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]), betas=tuple(cfg["adam_betas"]),
                                 weight_decay=float(cfg["weight_decay"]))
    pos_weight = None
    if cfg["pos_weight"] == "balanced":
        pos_weight = torch.from_numpy(positive_weights(train_set.labels.numpy(), float(cfg["pos_weight_max"])))
    tracker = BestOnValidation(model, extra_state, on_log=on_log, on_eval=on_eval)
    evaluator = Evaluator(model, cfg["model"], resolution)

    def validate(step: int) -> dict[str, float]:
        probs = torch.from_numpy(predict_dataset(evaluator, val_set, evaluator.batch_size))
        labels = val_set.labels
        with torch.no_grad():
            logits = torch.logit(probs.clamp(1e-7, 1 - 1e-7))
            loss = float(masked_bce(logits, labels))
        found = multilabel_scores(labels.numpy(), probs.numpy(), None, CHEXPERT_LABELS)
        out = {"val/loss": loss, "val/auroc_macro": _nan(found["auroc"]["macro"])}
        out.update({f"val/auroc/{name}": _nan(v["auroc"]) for name, v in found["per_finding"].items() if mask[
            CHEXPERT_LABELS.index(name)]})
        model.train()
        tracker.record(step, out, out["val/auroc_macro"])
        return out

    def loader_for(start: int):
        sampler = StepBatchSampler(len(train_set), int(cfg["batch_size"]), seed=seed, start_step=start,
                                   max_steps=loop_cfg.max_steps, rank=world.rank, world_size=world.world_size)
        return iter(torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=int(cfg["num_workers"])))

    weight = pos_weight.to(device) if pos_weight is not None else None

    def train_step(batch: dict, ctx) -> dict[str, float]:
        images = augment(batch["image"], cfg["augment"], ctx.generator, ctx)
        targets = batch["labels"].to(ctx.device)
        known_count = None
        if ctx.world_size > 1:  # the ranks' rows may hold different numbers of known labels
            known_count = sum_over_ranks((~torch.isnan(targets)).sum().float()) / ctx.world_size
        with ctx.autocast():
            logits = model(prepare(images, resolution).to(ctx.device))
            loss = masked_bce(logits.float(), targets, weight, known_count)
        grad_norm = ctx.backward_step(loss, model, optimizer)
        done = ctx.step + 1
        if ctx.is_main_process and val_set is not None and tracker.due(done, cfg["eval_every"], loop_cfg.max_steps):
            validate(done)
        return {"loss": loss.item(), "grad_norm": grad_norm}

    started = time.perf_counter()
    result = run_training(loop_cfg, modules={"classifier": model}, optimizers={"classifier": optimizer},
                          loader_for=loader_for, train_step=train_step, state_dir=Path(state_dir),
                          on_log=tracker.log_hook, extra_state=tracker.extra, desc=desc, distributed_ready=True)
    seconds = time.perf_counter() - started
    selected = tracker.restore_best(result.steps_done) if cfg["selection"] == "best_val_auroc" else result.steps_done
    model.cpu().eval()
    return TrainedClassifier(evaluator=evaluator, steps=result.steps_done, resumed_from=result.resumed_from,
                             selected_step=selected, selection=cfg["selection"], n_train=len(train_set),
                             seconds=seconds, history=tracker.history, evals=tracker.evals,
                             pos_weight=pos_weight.tolist() if pos_weight is not None else None)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def save_curve(history: list[dict], evals: list[dict], path: Path | str, title: str = "") -> None:
    """Training loss and validation loss / macro AUROC against steps (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if history:
        ax.plot([h["step"] for h in history], [h["loss"] for h in history], color="tab:blue", label="train BCE")
    if evals:
        ax.plot([e["step"] for e in evals], [e["val/loss"] for e in evals], color="tab:orange", marker="o",
                label="val BCE")
        right = ax.twinx()
        right.plot([e["step"] for e in evals], [e["val/auroc_macro"] for e in evals], color="tab:green",
                   marker="s", linestyle="--", label="val macro AUROC")
        right.axhline(0.5, color="grey", linewidth=0.6)
        right.set_ylim(0, 1)
        right.set_ylabel("val macro AUROC (grey: chance)")
        right.legend(loc="upper right", fontsize=7)
    ax.set_xlabel("step")
    ax.set_ylabel("masked BCE")
    ax.legend(loc="upper left", fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
