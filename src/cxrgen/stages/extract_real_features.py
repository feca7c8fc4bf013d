"""Rule ``extract_real_features``: the real image sets of the metric harness and their features, once per store."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from cxrgen.evaluate.backbones import load_backbones
from cxrgen.evaluate.features import META, extract, real_sets, save_feature_sets
from cxrgen.train.job import tracked_job

log = logging.getLogger(__name__)


def extract_real_features(*, index_path: Path | str, store_root: Path | str, evaluator_dir: Path | str, cfg: dict,
                          resolution: int, seed: int, out_dir: Path | str, tracking_json: Path | str | None = None,
                          job_name: str = "extract_real_features", clip_dir: Path | str | None = None) -> dict:
    """The real ``reference`` set (features of every usable backbone + evaluator probabilities + with ``clip_dir``
    the CLIP score of each image with its own report, the alignment reference), ``train`` (evaluator features, for
    the memorisation search) and ``val`` (evaluator probabilities, for decision thresholds) into the feature-set
    directory ``out_dir`` (:mod:`cxrgen.evaluate.features`), as one tracked job."""
    from cxrgen.evaluate.classifier import load_evaluator
    from cxrgen.models.clip import load_clip
    from cxrgen.train.data import report_texts

    with tracked_job(tracking_json, job_name, params={"evaluation": cfg, "resolution": resolution, "seed": seed},
                     tags={"cxrgen.stage": "extract_real_features"}) as job:
        started = time.perf_counter()
        evaluator = load_evaluator(evaluator_dir)
        backbones, skipped = load_backbones(cfg["backbones"]["use"], cfg["backbones"], evaluator=evaluator)
        for s in skipped:
            log.warning("backbone %s", s.line())
        sets = real_sets(pd.read_parquet(index_path), store_root, cfg, seed)
        batch = int(cfg["batch_size"])
        evaluator_only = [b for b in backbones if b.name == "evaluator"]
        extracted = [
            extract(sets["reference"], backbones=backbones, evaluator=evaluator, resolution=resolution,
                    batch_size=batch, name="reference", clip=load_clip(clip_dir) if clip_dir else None,
                    texts=report_texts(sets["reference"])),
            extract(sets["train"], backbones=evaluator_only, evaluator=None, resolution=resolution,
                    batch_size=batch, name="train"),
            extract(sets["val"], backbones=[], evaluator=evaluator, resolution=resolution, batch_size=batch,
                    name="val", with_features=False),
        ]
        counts = {s.name: len(s.rows) for s in extracted}
        seconds = time.perf_counter() - started
        tmp = job.staging(out_dir)
        save_feature_sets(tmp, extracted, resolution=resolution, backbones=backbones, skipped=skipped,
                          extra={"evaluator_dir": str(evaluator_dir), "reference_splits": cfg["reference_splits"],
                                 "views": cfg["views"], "clip_dir": str(clip_dir) if clip_dir else None,
                                 "seconds": seconds})
        job.log_metrics({**{f"images/{name}": n for name, n in counts.items()}, "seconds": seconds})
        job.set_tags({"cxrgen.backbones": ",".join(b.name for b in backbones)})
        job.publish(tmp, out_dir, artifacts=[META])
    return counts
