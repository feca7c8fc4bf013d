"""Training sets of the downstream augmentation experiments (MedCoDi-M §4.5; Diff-CXR's low-data setting).

Pure functions of (real index, synthetic index, config, seed): no I/O, no training. Every arm is a frame of store
rows with ``store_root`` and ``origin`` ("real" | "synthetic") columns, ready for
:func:`cxrgen.evaluate.classifier.train_classifier`.

* ``anonymisation``: real-only vs synthetic-only of equal size N. The synthetic arm is drawn first; the real arm
  holds the real images those synthetic twins were prompted from (same labels, same patients), topped up at random.
* ``imbalance``: all real training images vs the same plus synthetic images positive for the minority findings until
  the chosen findings (MedCoDi-M: its five most frequent) have exactly as many positives as the most frequent one;
  the classifier is trained and scored on those findings only (a 5-class task, as in MedCoDi-M).
* ``scarcity``: fixed total size T with 0, 25, 50, 75, 90, 95 % synthetic images (nested: each arm's real part is a
  prefix of one seeded permutation, and so is its synthetic part).
* ``low_data``: a fraction p of the real training images (Diff-CXR: 1 %), that fraction plus synthetic images
  (mixing), the same synthetic images as pre-training followed by fine-tuning on that fraction (CheXGenBench's
  "pretrain on synthetic, fine-tune on real"), and 100 % real.

Leakage rules: real rows come only from the real train split; a synthetic row whose prompt came from a real image
(``source_image_id``) is used only when that image is in the train split; template prompts (no source image) carry
no patient data. :func:`check_no_leakage` re-checks every arm against the real index.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS, label_column

EXPERIMENTS = ("anonymisation", "imbalance", "scarcity", "low_data")


class NotEnoughSynthetic(ValueError):
    """The synthetic pool cannot fill an arm as requested."""


class LeakageError(AssertionError):
    """A training set contains a non-train real image or a synthetic image prompted from one."""


@dataclass
class Arm:
    """One training set. ``pretrain``: rows a first model is trained on before it is fine-tuned on ``rows``
    (None = trained on ``rows`` from scratch)."""

    name: str
    rows: pd.DataFrame
    description: str
    task_findings: list[str] = field(default_factory=lambda: list(CHEXPERT_LABELS))
    pretrain: pd.DataFrame | None = None

    def _count(self, origin: str) -> int:
        frames = [self.rows] + ([self.pretrain] if self.pretrain is not None else [])
        return sum(int((frame["origin"] == origin).sum()) for frame in frames)

    @property
    def n_real(self) -> int:
        return self._count("real")

    @property
    def n_synthetic(self) -> int:
        return self._count("synthetic")


def _rng(seed: int, experiment: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(experiment.encode())])


def _shuffled(rows: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Rows in a seeded random order that does not depend on the input order (sorted by image id first)."""
    rows = rows.sort_values("image_id").reset_index(drop=True)
    return rows.iloc[rng.permutation(len(rows))].reset_index(drop=True)


def _has_label(rows: pd.DataFrame, findings: list[str]) -> pd.Series:
    return rows[[label_column(f) for f in findings]].notna().any(axis=1)


def real_rows(index: pd.DataFrame, split: str, store_root: Path | str, views: list[str] | None = None,
              findings: list[str] | None = None) -> pd.DataFrame:
    """Real rows of ``split`` (and ``views``) with at least one known label among ``findings``, by image id."""
    rows = index[index["split"] == split]
    if views:
        rows = rows[rows["view"].isin(views)]
    rows = rows[_has_label(rows, findings or list(CHEXPERT_LABELS))].sort_values("image_id").copy()
    rows["store_root"], rows["origin"] = str(store_root), "real"
    return rows.reset_index(drop=True)


def synthetic_pool(synthetic: pd.DataFrame, real_index: pd.DataFrame, store_root: Path | str,
                   sets: list[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Synthetic rows of prompt ``sets`` usable for training, and how many were excluded and why.

    Excluded: rows prompted from a real image outside the train split (``prompt_from_held_out``), or from an image id
    the real index does not know (``prompt_source_unknown``), and rows without any known label (``unlabelled``).
    """
    rows = synthetic[synthetic["set"].isin(sets)].copy()
    source = rows["source_image_id"].fillna("").astype(str) if "source_image_id" in rows else \
        pd.Series("", index=rows.index)
    split_of = dict(zip(real_index["image_id"].astype(str), real_index["split"], strict=True))
    has_source = source != ""
    known = source.map(lambda s: s in split_of)
    held_out = has_source & known & (source.map(split_of) != "train")
    unknown = has_source & ~known
    unlabelled = ~_has_label(rows, list(CHEXPERT_LABELS))
    keep = ~(held_out | unknown | unlabelled)
    excluded = {"prompt_from_held_out": int(held_out.sum()), "prompt_source_unknown": int((unknown & ~held_out).sum()),
                "unlabelled": int((unlabelled & ~held_out & ~unknown).sum())}
    rows = rows[keep].sort_values("image_id").copy()
    rows["store_root"], rows["origin"] = str(store_root), "synthetic"
    return rows.reset_index(drop=True), excluded


def check_no_leakage(train: pd.DataFrame, real_index: pd.DataFrame) -> None:
    """Raise :class:`LeakageError` unless every real row is a train-split image of ``real_index`` and every synthetic
    row was prompted from a train-split image (or from no image)."""
    split_of = dict(zip(real_index["image_id"].astype(str), real_index["split"], strict=True))
    real = train[train["origin"] == "real"]
    bad = [i for i in real["image_id"].astype(str) if split_of.get(i) != "train"]
    if bad:
        raise LeakageError(f"{len(bad)} real training rows are not train-split images, e.g. {bad[:3]}")
    syn = train[train["origin"] == "synthetic"]
    if len(syn):
        sources = syn["source_image_id"].fillna("").astype(str) if "source_image_id" in syn else pd.Series([""])
        bad = [s for s in sources if s and split_of.get(s) != "train"]
        if bad:
            raise LeakageError(f"{len(bad)} synthetic training rows were prompted from non-train images, e.g. "
                               f"{bad[:3]}")
    if set(train["origin"]) - {"real", "synthetic"}:
        raise LeakageError(f"unknown origins {sorted(set(train['origin']) - {'real', 'synthetic'})}")


def positives(rows: pd.DataFrame, findings: list[str]) -> dict[str, int]:
    return {f: int((rows[label_column(f)] == 1).sum()) for f in findings}


def most_frequent_findings(rows: pd.DataFrame, k: int, exclude: tuple[str, ...] = ("No Finding",)) -> list[str]:
    """The k findings with the most positives (ties: CheXpert order), ``exclude``d findings left out."""
    counts = positives(rows, [f for f in CHEXPERT_LABELS if f not in exclude])
    return sorted(counts, key=lambda f: (-counts[f], CHEXPERT_LABELS.index(f)))[:k]


def _count(fraction: float, total: int) -> int:
    """round(fraction × total), halves up (exact whenever fraction × total is a whole number)."""
    return int(np.floor(fraction * total + 0.5 + 1e-9))


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}"


# --------------------------------------------------------------------------------------------------- experiments
def anonymisation_arms(real: pd.DataFrame, pool: pd.DataFrame, cfg: dict, seed: int) -> list[Arm]:
    rng = _rng(seed, "anonymisation")
    size = cfg["size"] if cfg["size"] is not None else min(len(real), len(pool))
    if size < 1:
        raise NotEnoughSynthetic("anonymisation: the real train pool or the synthetic pool is empty")
    if size > len(pool):
        raise NotEnoughSynthetic(f"anonymisation: downstream.anonymisation.size={size} but the synthetic pool has "
                                 f"{len(pool)} images; lower the size or generate more train twins")
    if size > len(real):
        raise ValueError(f"anonymisation: downstream.anonymisation.size={size} exceeds the {len(real)} real "
                         "training images")
    synthetic = _shuffled(pool, rng).head(size)
    paired_ids = set(synthetic.get("source_image_id", pd.Series(dtype=str)).fillna("").astype(str)) - {""}
    paired = real[real["image_id"].astype(str).isin(paired_ids)]
    others = _shuffled(real[~real["image_id"].isin(paired["image_id"])], rng)
    real_arm = pd.concat([paired, others.head(size - len(paired))], ignore_index=True)
    return [Arm("real", real_arm, f"{size} real training images ({len(paired)} are the sources of the "
                                  "synthetic arm's prompts)"),
            Arm("synthetic", synthetic, f"{size} synthetic images")]


def imbalance_arms(real: pd.DataFrame, pool: pd.DataFrame, cfg: dict, seed: int) -> list[Arm]:
    rng = _rng(seed, "imbalance")
    findings = list(cfg["findings"]) or most_frequent_findings(real, int(cfg["top_k"]))
    before = positives(real, findings)
    target = max(before.values())
    deficit = {f: target - before[f] for f in findings}
    candidates = _shuffled(pool, rng)
    pos = {f: (candidates[label_column(f)] == 1).to_numpy() for f in findings}
    used = np.zeros(len(candidates), bool)
    chosen: list[int] = []
    while any(d > 0 for d in deficit.values()):
        needy = max((f for f in findings if deficit[f] > 0), key=lambda f: (deficit[f], -findings.index(f)))
        # an image may be positive for several chosen findings: only take it if none of them is already balanced
        fits = pos[needy] & ~used
        for other in findings:
            if deficit[other] <= 0:
                fits &= ~pos[other]
        hits = np.flatnonzero(fits)
        if not len(hits):
            if cfg["shortfall"] == "error":
                raise NotEnoughSynthetic(
                    f"imbalance: {deficit[needy]} more synthetic images positive for {needy!r} (and not for an "
                    f"already balanced finding) are needed to reach {target} positives, but the pool has none left "
                    f"(pool: {len(pool)} images, sets {sorted(set(pool['set']))}); generate more images of that "
                    "finding or set downstream.imbalance.shortfall: partial")
            deficit[needy] = -1  # partial: give up on this finding, keep balancing the others
            continue
        k = int(hits[0])
        used[k] = True
        chosen.append(k)
        for f in findings:
            if pos[f][k]:
                deficit[f] -= 1
    added = candidates.iloc[chosen]
    augmented = pd.concat([real, added], ignore_index=True)
    after = positives(augmented, findings)
    return [Arm("real", real, f"all {len(real)} real training images; positives {before}", findings),
            Arm("real+synthetic", augmented, f"+{len(added)} synthetic minority-finding images; positives {after} "
                                             f"(target {target})", findings)]


def scarcity_arms(real: pd.DataFrame, pool: pd.DataFrame, cfg: dict, seed: int) -> list[Arm]:
    rng = _rng(seed, "scarcity")
    fractions = sorted(float(f) for f in cfg["fractions"])
    top, bottom = max(fractions), min(fractions)

    def needs(total: int) -> tuple[int, int]:  # (synthetic images of the top arm, real images of the bottom arm)
        return _count(top, total), total - _count(bottom, total)

    if cfg["total"] is not None:
        total = int(cfg["total"])
    else:  # the largest total both pools can fill
        total = len(real) + len(pool)
        while total > 0 and (needs(total)[0] > len(pool) or needs(total)[1] > len(real)):
            total -= 1
    need_syn, need_real = needs(total)
    if need_syn > len(pool):
        raise NotEnoughSynthetic(f"scarcity: {_pct(top)} % of downstream.scarcity.total={total} needs {need_syn} "
                                 f"synthetic images; the pool has {len(pool)}")
    if need_real > len(real) or total < 1:
        raise ValueError(f"scarcity: total {total} with {_pct(bottom)} % synthetic needs {need_real} real training "
                         f"images; there are {len(real)}")
    real_order, syn_order = _shuffled(real, rng), _shuffled(pool, rng)
    arms = []
    for fraction in fractions:
        n_syn = _count(fraction, total)
        rows = pd.concat([real_order.head(total - n_syn), syn_order.head(n_syn)], ignore_index=True)
        arms.append(Arm(f"syn_{_pct(fraction)}pct", rows,
                        f"{total} images: {total - n_syn} real + {n_syn} synthetic ({_pct(fraction)} %)"))
    return arms


def low_data_arms(real: pd.DataFrame, pool: pd.DataFrame, cfg: dict, seed: int) -> list[Arm]:
    rng = _rng(seed, "low_data")
    fraction = float(cfg["real_fraction"])
    n_small = max(1, _count(fraction, len(real)))
    n_syn = len(pool) if cfg["synthetic_images"] is None else int(cfg["synthetic_images"])
    if n_syn > len(pool) or n_syn < 1:
        raise NotEnoughSynthetic(f"low_data: downstream.low_data.synthetic_images={cfg['synthetic_images']} but the "
                                 f"synthetic pool has {len(pool)} images")
    small = _shuffled(real, rng).head(n_small)
    synthetic = _shuffled(pool, rng).head(n_syn)
    tag = _pct(fraction)
    arms = [Arm("real_100pct", real, f"all {len(real)} real training images"),
            Arm(f"real_{tag}pct", small, f"{n_small} real images ({tag} % of the real training set)"),
            Arm(f"real_{tag}pct+synthetic", pd.concat([small, synthetic], ignore_index=True),
                f"{n_small} real ({tag} %) + {n_syn} synthetic images")]
    if cfg["pretrain_finetune"]:
        arms.append(Arm(f"synthetic->real_{tag}pct", small, f"pre-trained on {n_syn} synthetic images, then "
                        f"fine-tuned on {n_small} real ({tag} %)", pretrain=synthetic))
    return arms


BUILDERS = {"anonymisation": anonymisation_arms, "imbalance": imbalance_arms, "scarcity": scarcity_arms,
            "low_data": low_data_arms}


def build_arms(experiment: str, real: pd.DataFrame, pool: pd.DataFrame, cfg: dict, seed: int,
               real_index: pd.DataFrame | None = None) -> list[Arm]:
    """The training sets of ``experiment`` from the real train rows ``real`` and the synthetic ``pool`` (both from
    :func:`real_rows` / :func:`synthetic_pool`), with the experiment's section of ``downstream`` config ``cfg``.
    Deterministic per ``seed``; each arm is checked against ``real_index`` for leakage when given."""
    if experiment not in BUILDERS:
        raise ValueError(f"unknown downstream experiment {experiment!r}; allowed: {list(EXPERIMENTS)}")
    real = real.sort_values("image_id").reset_index(drop=True)  # the input order must not matter
    pool = pool.sort_values("image_id").reset_index(drop=True)
    arms = BUILDERS[experiment](real, pool, cfg, seed)
    for arm in arms:
        arm.rows = arm.rows.reset_index(drop=True)
        if arm.pretrain is not None:
            arm.pretrain = arm.pretrain.reset_index(drop=True)
        if real_index is not None:
            check_no_leakage(arm.rows, real_index)
            if arm.pretrain is not None:
                check_no_leakage(arm.pretrain, real_index)
    return arms


def label_frame(rows: pd.DataFrame) -> np.ndarray:
    return rows[list(LABEL_COLUMNS)].to_numpy(np.float64)
