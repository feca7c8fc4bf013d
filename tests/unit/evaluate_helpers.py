"""Fabricated real and synthetic stores for the evaluator and downstream-experiment tests (written with the store's
own shard writer, same index columns as results/store and results/synthetic/<variant>/store)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.labels import LABEL_COLUMNS
from cxrgen.store import ShardWriter, shard_path


def _image(rng: np.random.Generator, res: int, labels: np.ndarray) -> np.ndarray:
    """A grey square with one bright blob per positive finding (finding j at a fixed place), plus noise."""
    yy, xx = np.mgrid[:res, :res] / res
    image = np.full((res, res), 0.3) + rng.normal(0, 0.02, (res, res))
    for j in np.flatnonzero(labels == 1):
        cy, cx = 0.2 + 0.6 * (j // 4) / 3, 0.2 + 0.6 * (j % 4) / 3
        image[((xx - cx) / 0.08) ** 2 + ((yy - cy) / 0.08) ** 2 < 1] = 0.9
    return (np.clip(image, 0, 1) * 65535).astype(np.uint16)


def random_labels(rng: np.random.Generator, n: int, prevalence: np.ndarray | None = None,
                  unknown: float = 0.2) -> np.ndarray:
    """n × 14 labels in {1, 0, NaN}; finding j positive with probability prevalence[j]."""
    prevalence = np.linspace(0.4, 0.05, len(LABEL_COLUMNS)) if prevalence is None else prevalence
    labels = (rng.random((n, len(LABEL_COLUMNS))) < prevalence).astype(np.float32)
    labels[rng.random(labels.shape) < unknown] = np.nan
    labels[np.isnan(labels).all(axis=1), 0] = 1.0  # at least one known label per image
    return labels


def write_store(root: Path | str, ids: list[str], labels: np.ndarray, *, source: str, resolutions=(32,),
                extra: dict[str, list] | None = None, seed: int = 0) -> pd.DataFrame:
    """Images for ``ids`` with ``labels`` in one shard per resolution; writes and returns ``index.parquet``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = [{"image_id": image_id, "source": source, "shard": 0} for image_id in ids]
    for res in resolutions:
        with ShardWriter(shard_path(root, res, source, 0)) as writer:
            for i, row in enumerate(rows):
                offset, nbytes, digest = writer.append(_image(rng, res, labels[i]))
                row.update({f"offset_{res}": offset, f"nbytes_{res}": nbytes, f"sha256_{res}": digest})
    index = pd.DataFrame(rows)
    for j, column in enumerate(LABEL_COLUMNS):
        index[column] = labels[:, j].astype(np.float32)
    for key, values in (extra or {}).items():
        index[key] = values
    index.to_parquet(root / "index.parquet", index=False)
    return index


def real_store(root: Path | str, n: int = 60, resolutions=(32,), seed: int = 0,
               splits=("train", "train", "train", "train", "train", "train", "val", "val", "test", "test"),
               prevalence: np.ndarray | None = None) -> pd.DataFrame:
    """A unified-store-like index: image ids ``real-NNNN``, splits cycling through ``splits``, views PA, reports."""
    rng = np.random.default_rng(seed)
    labels = random_labels(rng, n, prevalence)
    ids = [f"real-{i:04d}" for i in range(n)]
    extra = {"split": [splits[i % len(splits)] for i in range(n)], "view": ["PA"] * n,
             "patient_pid": [f"p{i // 2:04d}" for i in range(n)],
             "sex": [("F", "M", "U")[(i // 2) % 3] for i in range(n)],  # per patient, "U" = not recorded
             "age_bucket": [("40-59", "60-79", "unknown")[(i // 2) % 3] for i in range(n)],
             "report_findings": [f"Report {i}." for i in range(n)], "report_impression": [""] * n}
    return write_store(root, ids, labels, source="mimic", resolutions=resolutions, extra=extra, seed=seed)


def synthetic_store(root: Path | str, real: pd.DataFrame, *, twins_of: list[str], n_balanced: int = 0,
                    balanced_finding: int = 6, resolutions=(32, 64), seed: int = 1) -> pd.DataFrame:
    """A generated-set index: one ``train_twins`` image per real id in ``twins_of`` (its report and labels), plus
    ``n_balanced`` ``class_balanced`` template images positive for finding ``balanced_finding``."""
    by_id = real.set_index("image_id")
    twin_labels = by_id.loc[twins_of, list(LABEL_COLUMNS)].to_numpy(np.float32)
    balanced = np.full((n_balanced, len(LABEL_COLUMNS)), np.nan, np.float32)
    balanced[:, 0] = 0.0
    balanced[:, balanced_finding] = 1.0
    labels = np.concatenate([twin_labels, balanced])
    n = len(labels)
    ids = [f"syn-rep-{i}" for i in twins_of] + [f"syn-tpl-{k:04d}" for k in range(n_balanced)]
    prompts = [str(by_id.at[i, "report_findings"]) for i in twins_of] + ["Consolidation."] * n_balanced
    extra = {"prompt_id": ids, "set": ["train_twins"] * len(twins_of) + ["class_balanced"] * n_balanced,
             "prompt": prompts, "report_findings": prompts, "report_impression": [""] * n,
             "source_image_id": list(twins_of) + [""] * n_balanced, "seed": list(range(n)),
             "split": ["synthetic"] * n, "view": ["PA"] * n}
    return write_store(root, ids, labels, source="synthetic", resolutions=resolutions, extra=extra, seed=seed)


def narrowed(section: dict, rule: str) -> dict:
    """What the workflow passes ``rule`` of its config section (workflow/config_sections.yaml), so a stage function
    that reads a key its rule does not declare fails here."""
    from cxrgen.config import load_rule_sections, narrow

    entry = load_rule_sections(Path(__file__).parents[2] / "workflow" / "config_sections.yaml")[rule]
    return narrow(section, entry.get("include"), tuple(entry.get("exclude", ())), where=rule)
