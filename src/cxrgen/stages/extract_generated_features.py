"""Rule ``extract_generated_features``: the features of one generated variant's images, once per variant."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from cxrgen.evaluate.backbones import load_backbones
from cxrgen.evaluate.features import META, extract, save_feature_sets, with_root
from cxrgen.prompts import PROBE_SET
from cxrgen.train.job import tracked_job

log = logging.getLogger(__name__)


def extract_generated_features(*, synthetic_root: Path | str, evaluator_dir: Path | str, cfg: dict, resolution: int,
                               out_dir: Path | str, tracking_json: Path | str | None = None,
                               job_name: str = "extract_generated_features", clip_dir: Path | str | None = None
                               ) -> dict:
    """Every image of a synthetic store (``generated`` set) but the re-identification probe set (``reid_probe``,
    read by the audit alone): features of every usable backbone, evaluator
    probabilities and (with ``clip_dir``) the CLIP score of each image with its prompt into the feature-set directory
    ``out_dir``, as one tracked job."""
    from cxrgen.evaluate.classifier import load_evaluator
    from cxrgen.models.clip import load_clip

    with tracked_job(tracking_json, job_name, params={"evaluation": cfg, "resolution": resolution},
                     tags={"cxrgen.stage": "extract_generated_features"}) as job:
        started = time.perf_counter()
        evaluator = load_evaluator(evaluator_dir)
        backbones, skipped = load_backbones(cfg["backbones"]["use"], cfg["backbones"], evaluator=evaluator)
        for s in skipped:
            log.warning("backbone %s", s.line())
        rows = pd.read_parquet(Path(synthetic_root) / "index.parquet").sort_values("image_id")
        rows = with_root(rows[rows["set"] != PROBE_SET], synthetic_root)
        clip = load_clip(clip_dir) if clip_dir else None
        generated = extract(rows, backbones=backbones, evaluator=evaluator, resolution=resolution,
                            batch_size=int(cfg["batch_size"]), name="generated", clip=clip,
                            texts=rows["prompt"].fillna("").astype(str))
        seconds = time.perf_counter() - started
        tmp = job.staging(out_dir)
        save_feature_sets(tmp, [generated], resolution=resolution, backbones=backbones, skipped=skipped,
                          extra={"evaluator_dir": str(evaluator_dir), "synthetic_root": str(synthetic_root),
                                 "clip_dir": str(clip_dir) if clip_dir else None, "seconds": seconds})
        job.log_metrics({"images/generated": len(rows), "seconds": seconds})
        job.set_tags({"cxrgen.backbones": ",".join(b.name for b in backbones)})
        job.publish(tmp, out_dir, artifacts=[META])
    return {"generated": len(rows)}
