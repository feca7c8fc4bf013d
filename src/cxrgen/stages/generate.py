"""Stage ``generate``: DDIM sampling of the prompt sets (:mod:`cxrgen.stages.build_prompts`) → AE decoding → SR cascade into a store.

Generated images go into the store format of the unified store (:mod:`cxrgen.store`): lossless 16-bit blobs in shard
files ``<out_root>/<res>px/synthetic/shard-XXXX.bin`` and ``<out_root>/index.parquet`` with one row per image, readable by
:class:`cxrgen.train.data.StoreImages` (the prompt is in ``report_findings``; ``split`` = "synthetic"). The
re-identification probe set (``reid_probe``) is sampled last, in its own batches, without SR: its rows hold only the
decoded (low) resolution, their blob columns of the SR resolution are null.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS, label_column
from cxrgen.pipeline import to_uint16
from cxrgen.prompts import PROBE_SET
from cxrgen.report.figures import save_grid
from cxrgen.store import ShardWriter
from cxrgen.train.job import tracked_job, write_json

SOURCE = "synthetic"


def _provenance(pipe) -> dict[str, str]:
    from cxrgen.hashing import dir_digest

    out = {}
    for key, name in (("ldm_dir", "ldm"), ("autoencoder", "ae"), ("super_resolution", "sr"), ("text_encoder", "clip"),
                      ("dkim", "dkim")):
        path = pipe.info.get(key)
        run_id = ""
        if path is not None and (Path(path) / "metrics.json").is_file():
            run_id = str(json.loads((Path(path) / "metrics.json").read_text()).get("mlflow_run_id") or "")
        out[f"{name}_run_id"] = run_id
        out[f"{name}_sha"] = dir_digest(path) if path is not None else ""
    return out


def generate(*, ldm_dir: Path | str, ae_dir: Path | str | None, clip_dir: Path | str | None,
             sr_dir: Path | str | None, prompts_path: Path | str, cfg: dict, out_root: Path | str,
             tracking_json: Path | str | None = None, job_name: str = "generate",
             dkim_dir: Path | str | None = None) -> dict:
    """Sample one image per prompt row of ``prompts_path`` (rule make_prompts) with the LDM in ``ldm_dir`` (rule
    train_ldm), decode with the autoencoder ``ae_dir`` and super-resolve with ``sr_dir`` (None = no SR). ``ae_dir`` /
    ``clip_dir`` None = the ones named in ``<ldm_dir>/cxrgen_pipeline.json``. ``dkim_dir``: a DKIM adapter of this
    LDM (rule train_dkim; Diff-CXR), fed each prompt's labels. Settings from section ``generate``.

    Writes ``out_root`` atomically: shards ``<res>px/synthetic/shard-XXXX.bin`` at the decoded resolution and (with SR)
    the SR resolution (never for the ``reid_probe`` rows, sampled last), ``index.parquet`` (image_id, prompt_id, set, prompt, report_findings, laterality, lbl_*, seed,
    split="synthetic", source, view, shard, offset/nbytes/sha256 per resolution, model run ids and content hashes),
    ``grid.png`` (rows = findings of the template set, columns = samples), ``metrics.json``. Returns the metrics.
    """
    from cxrgen.models.diffusion import SamplerSettings
    from cxrgen.pipeline import CxrPipeline

    out_root = Path(out_root)
    prompts = pd.read_parquet(prompts_path)
    prompts = prompts[prompts["set"].isin(cfg["sets"])]
    prompts = prompts.iloc[np.argsort((prompts["set"] == PROBE_SET).to_numpy(), kind="stable")].reset_index(drop=True)
    if prompts.empty:
        raise ValueError(f"no prompts of sets {cfg['sets']} in {prompts_path}")
    torch.manual_seed(int(cfg["seed"]))
    pipe = CxrPipeline.from_dir(ldm_dir, ae_dir=ae_dir, clip_dir=clip_dir, sr_dir=sr_dir, use_sr=sr_dir is not None,
                                dkim_dir=dkim_dir)
    settings = SamplerSettings(steps=int(cfg["steps"]), eta=float(cfg["eta"]),
                               guidance_scale=float(cfg["guidance_scale"]))
    provenance = _provenance(pipe)
    tags = {"cxrgen.stage": "generate", **{f"cxrgen.{k}": v for k, v in provenance.items() if v}}
    with tracked_job(tracking_json, job_name, params={"generate": cfg, "n_prompts": len(prompts)},
                     tags=tags) as job:
        tmp = job.staging(out_root)
        rows, grid_images, seconds = _sample_shards(pipe, prompts, settings, cfg, tmp, provenance,
                                                    with_labels=dkim_dir is not None)

        index = pd.DataFrame.from_records(rows)
        index[list(LABEL_COLUMNS)] = index[list(LABEL_COLUMNS)].astype(np.float32)
        for column in index.columns:  # probe rows lack the SR resolution: nullable integers, not floats
            if column.startswith(("offset_", "nbytes_")) and index[column].isna().any():
                index[column] = index[column].astype("Int64")
        index.to_parquet(tmp / "index.parquet", index=False)
        resolutions = sorted(int(c.removeprefix("offset_")) for c in index.columns if c.startswith("offset_"))
        if not grid_images:  # no template set: one row of the first images (of the final resolution)
            columns = min(int(index[f"offset_{resolutions[-1]}"].notna().sum()), int(cfg["grid_columns"]))
            grid_images = {"samples": [_read_back(tmp, index, i) for i in range(columns)]}
        _write_grid(grid_images, int(cfg["grid_columns"]), tmp / "grid.png")
        metrics = {"n_images": len(index), "sets": {k: int(v) for k, v in index["set"].value_counts().items()},
                   "resolutions": resolutions, "seconds": seconds["all"], "seconds_per_image": seconds["all"] / len(index),
                   "sr_skipped_sets": [PROBE_SET] if (index["set"] == PROBE_SET).any() else [],
                   "seconds_by_set": seconds["by_set"],
                   "steps": settings.steps, "eta": settings.eta, "guidance_scale": settings.guidance_scale,
                   "super_resolution": pipe.sr is not None, **provenance,
                   "mlflow_run_id": job.run_id}
        write_json(tmp / "metrics.json", metrics)
        job.log_metrics({"seconds_per_image": metrics["seconds_per_image"], "n_images": len(index)})
        job.publish(tmp, out_root, artifacts=["grid.png", "metrics.json"])
    return metrics


def _batches(prompts: pd.DataFrame, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the sampling batches: the probe set (last, see :func:`generate`) in batches of its own."""
    n_main = int((prompts["set"] != PROBE_SET).sum())
    return [(start, min(start + batch_size, stop)) for begin, stop in ((0, n_main), (n_main, len(prompts)))
            for start in range(begin, stop, batch_size)]


def _sample_shards(pipe, prompts: pd.DataFrame, settings, cfg: dict, tmp: Path, provenance: dict,
                   with_labels: bool) -> tuple[list[dict], dict[str, list[torch.Tensor]], dict]:
    """Sample every prompt into shards under ``tmp``; returns the index rows, the grid's images per finding and the
    seconds spent (``all``, and ``by_set``: per prompt set)."""
    per_shard, batch_size = int(cfg["images_per_shard"]), int(cfg["batch_size"])
    writers: dict[int, ShardWriter] = {}
    shard_of_writers = -1
    rows: list[dict] = []
    grid_images: dict[str, list[torch.Tensor]] = {}
    by_set: dict[str, float] = {}
    started = time.perf_counter()
    try:
        for start, stop in tqdm(_batches(prompts, batch_size), desc="generate", mininterval=5.0):
            batch = prompts.iloc[start:stop]
            batch_started = time.perf_counter()
            out = pipe(batch["prompt"].tolist(), batch["seed"].tolist(), settings,
                       sr_steps=int(cfg["sr_steps"]), sr_eta=float(cfg["sr_eta"]),
                       labels=batch[list(LABEL_COLUMNS)] if with_labels else None,
                       use_sr=not (batch["set"] == PROBE_SET).all())
            batch_seconds = time.perf_counter() - batch_started
            for name, count in batch["set"].value_counts().items():
                by_set[name] = by_set.get(name, 0.0) + batch_seconds * int(count) / len(batch)
            outputs = {int(out["low"].shape[-1]): to_uint16(out["low"])}
            if out["high"] is not None:
                outputs[int(out["high"].shape[-1])] = to_uint16(out["high"])
            final = out["high"] if out["high"] is not None else out["low"]
            for j, (_, prompt) in enumerate(batch.iterrows()):
                k = start + j
                shard = k // per_shard
                if shard != shard_of_writers:
                    for writer in writers.values():
                        writer.close()
                    writers, shard_of_writers = {}, shard
                for res in outputs:  # a shard's file of a resolution opens with its first image of that resolution
                    if res not in writers:
                        writers[res] = ShardWriter(_shard_file(tmp, res, shard))
                row = {"image_id": f"syn-{prompt['prompt_id']}-s{int(prompt['seed'])}", "prompt_id": prompt["prompt_id"],
                       "set": prompt["set"], "prompt": prompt["prompt"], "report_findings": prompt["prompt"],
                       "report_impression": "", "laterality": prompt.get("laterality", ""),
                       "source_image_id": prompt.get("source_image_id", ""), "seed": int(prompt["seed"]),
                       "split": "synthetic", "source": SOURCE, "view": "PA", "shard": shard, **provenance}
                for column in LABEL_COLUMNS:
                    row[column] = float(prompt[column])
                for res, pixels in outputs.items():
                    offset, nbytes, digest = writers[res].append(pixels[j])
                    row[f"offset_{res}"], row[f"nbytes_{res}"], row[f"sha256_{res}"] = offset, nbytes, digest
                rows.append(row)
                if prompt["set"] == "class_balanced":
                    finding = _template_finding(prompt)
                    grid_images.setdefault(finding, [])
                    if len(grid_images[finding]) < int(cfg["grid_columns"]):
                        grid_images[finding].append(final[j : j + 1].cpu())
        for writer in writers.values():
            writer.close()
    except BaseException:
        for writer in writers.values():
            writer.__exit__(RuntimeError, None, None)
        raise
    return rows, grid_images, {"all": time.perf_counter() - started, "by_set": by_set}


def _shard_file(root: Path, resolution: int, shard: int) -> Path:
    from cxrgen.store import shard_path

    return shard_path(root, resolution, SOURCE, shard)


def _template_finding(prompt: pd.Series) -> str:
    for name in CHEXPERT_LABELS:
        if prompt[label_column(name)] == 1.0 and (name == "No Finding" or prompt[label_column("No Finding")] == 0.0):
            return name
    return "other"


def _read_back(root: Path, index: pd.DataFrame, position: int) -> torch.Tensor:
    from cxrgen.store import ShardStore

    resolution = max(int(c.removeprefix("offset_")) for c in index.columns if c.startswith("offset_"))
    stored = index[index[f"offset_{resolution}"].notna()].reset_index(drop=True)  # not the probe rows (no SR)
    store = ShardStore(root, stored)
    pixels = store.read_float(position, resolution)
    store.close()
    return torch.from_numpy(pixels * 2 - 1)[None, None]


def _write_grid(grid_images: dict[str, list[torch.Tensor]], columns: int, path: Path) -> None:
    names = list(grid_images)
    size = max(t.shape[-1] for ts in grid_images.values() for t in ts)
    blank = torch.full((1, 1, size, size), -1.0)
    tiles = [grid_images[n][c] if c < len(grid_images[n]) else blank for n in names for c in range(columns)]
    save_grid(torch.cat(tiles), names, columns, path)
