"""Rule ``inpaint_images``: Cheff's in- and outpainting (§5, Figs. 5, 7, 14) on store images, as data from the config
section ``inpainting`` (:mod:`cxrgen.models.inpainting`).

Each edit names a store image (``image_id``, or the nth frontal image of a split with a finding positive/negative),
a mask in fractions of the image and a prompt; the images are read at the autoencoder's resolution. Outputs: the
figure (original, mask, result, difference per edit and seed), ``metrics.json`` (settings, per sample PSNR and max
|difference| outside the mask against the original and against the autoencoder round trip, the in-domain evaluator's
probability of the edit's finding before and after, timings) and a markdown fragment for ``results/summary.md``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from cxrgen.evaluate.outputs import StagedFiles
from cxrgen.labels import label_column
from cxrgen.models.inpainting import InpaintSettings, inpaint, outside_mask_fidelity, parse_mask_spec
from cxrgen.pipeline import CxrPipeline
from cxrgen.report.inpainting import inpainting_markdown, save_inpainting_grid
from cxrgen.store import ShardStore
from cxrgen.train.job import tracked_job, write_json

SETTINGS_KEYS = ("steps", "eta", "guidance_scale", "jump_length", "jump_n_sample", "latent_dilation", "paste_known")


def inpaint_settings(cfg: dict) -> InpaintSettings:
    """The sampler settings of the ``inpainting`` section."""
    return InpaintSettings(**{key: cfg[key] for key in SETTINGS_KEYS})


def select_image(index: pd.DataFrame, edit: dict, key: str) -> str:
    """The image id an edit names: ``image_id``, or the ``select`` rule's nth match (by image id; without a finding,
    the nth image of the split and views)."""
    if edit.get("image_id"):
        if not (index["image_id"] == edit["image_id"]).any():
            raise ValueError(f"{key}.image_id: {edit['image_id']!r} is not in the store index")
        return str(edit["image_id"])
    select = edit.get("select") or {}
    keep = index["split"] == select.get("split", "test")
    if select.get("finding"):
        keep &= index[label_column(select["finding"])] == float(select.get("value", 1))
    if select.get("views", ["PA", "AP"]):
        keep &= index["view"].isin(select.get("views", ["PA", "AP"]))
    ids = sorted(index.loc[keep, "image_id"])
    nth = int(select.get("nth", 0))
    if nth >= len(ids):
        raise ValueError(f"{key}.select: {len(ids)} images match {select}, so there is no nth={nth}")
    return ids[nth]


def inpaint_images(*, index_path: Path | str, ldm_dir: Path | str, cfg: dict, seed: int, out_png: Path | str,
                   out_json: Path | str, out_md: Path | str, ae_dir: Path | str | None = None,
                   clip_dir: Path | str | None = None, evaluator_dir: Path | str | None = None,
                   tracking_json: Path | str | None = None, job_name: str = "inpaint_images") -> dict:
    """Apply every edit of ``cfg["edits"]`` to its image of the store at ``index_path`` with the LDM in ``ldm_dir``
    (sample k of an edit uses seed ``seed + k``); write the figure, the metrics json and the markdown fragment.
    Returns the json's payload."""
    settings = inpaint_settings(cfg)
    with tracked_job(tracking_json, job_name, params={"inpainting": cfg, "seed": seed},
                     tags={"cxrgen.stage": "inpaint_images"}) as job:
        started = time.perf_counter()
        pipe = CxrPipeline.from_dir(ldm_dir, ae_dir=ae_dir, clip_dir=clip_dir, use_sr=False)
        resolution = int(pipe.autoencoder.config.sample_size)
        index_path = Path(index_path)
        index = pd.read_parquet(index_path)
        if f"offset_{resolution}" not in index.columns:
            raise ValueError(f"the store {index_path.parent} holds no {resolution} px images (the autoencoder's size)")
        store = ShardStore(index_path.parent, index)
        items = []  # (edit, image id, seed)
        images, masks = [], []
        for i, edit in enumerate(cfg["edits"]):
            key = f"inpainting.edits[{i}]"
            image_id = select_image(index, edit, key)
            mask = parse_mask_spec(edit["mask"], f"{key}.mask").pixels(resolution, resolution)
            pixels = torch.from_numpy(store.read_id(image_id, resolution).astype("float32") / 65535.0) * 2 - 1
            for k in range(int(edit.get("seeds", 1))):
                items.append((edit, image_id, int(seed) + k))
                images.append(pixels[None])
                masks.append(mask[None])
        store.close()
        loaded = time.perf_counter()
        samples, rows = [], []
        if items:
            before, mask_batch = torch.stack(images), torch.stack(masks)
            out = inpaint(pipe.autoencoder, pipe.sampler, before, mask_batch, [e.get("prompt", "") for e, _, _ in items],
                          [s for _, _, s in items], settings)
            probabilities = _finding_probabilities(evaluator_dir, before, out, cfg)
            for j, (edit, image_id, sample_seed) in enumerate(items):
                finding = edit.get("finding")
                row = {"name": edit["name"], "image_id": image_id, "seed": sample_seed, "prompt": edit.get("prompt", ""),
                       "mask": edit["mask"], "finding": finding, "masked_fraction": float(mask_batch[j].float().mean()),
                       "latent_masked_fraction": float(out["latent_masks"][j].float().mean()),
                       **outside_mask_fidelity(before[j], out["images"][j], mask_batch[j])}
                # what the autoencoder alone loses outside the mask, and what inpainting changes in the latent cells
                # it keeps (the regenerated cells include a dilation ring outside the mask)
                row["psnr_outside_autoencoder"] = outside_mask_fidelity(
                    before[j], out["reconstructions"][j], mask_batch[j])["psnr_outside"]
                kept = outside_mask_fidelity(out["reconstructions"][j], out["images"][j], out["regenerated"][j])
                row["psnr_kept_cells_vs_autoencoder"] = kept["psnr_outside"]
                row["max_abs_kept_cells_vs_autoencoder"] = kept["max_abs_outside"]
                if probabilities is not None and finding:
                    column = probabilities["findings"].index(finding)
                    for when in ("before", "autoencoder", "after"):
                        row[f"p_{when}"] = float(probabilities[when][j, column])
                samples.append(row)
                rows.append({"title": f"{edit['name']} (seed {sample_seed})", "before": before[j], "mask": mask_batch[j],
                             "after": out["images"][j]})
        payload = {"ldm": Path(ldm_dir).name, "resolution": resolution, "settings": {**settings.__dict__},
                   "model_calls_per_sample": out["model_calls"] if items else 0, "samples": samples,
                   "load_seconds": loaded - started, "seconds": time.perf_counter() - loaded,
                   "ldm_mlflow_run_id": pipe.info.get("mlflow_run_id"), "mlflow_run_id": job.run_id}
        files = StagedFiles(job, {"figure": out_png, "json": out_json, "markdown": out_md})
        save_inpainting_grid(rows, files["figure"])
        write_json(files["json"], payload)
        files["markdown"].write_text(inpainting_markdown(payload, Path(out_png).name), encoding="utf-8")
        job.log_metrics({"seconds": payload["seconds"]})
        files.publish(artifacts=["figure", "json"])
    return payload


def _finding_probabilities(evaluator_dir: Path | str | None, before: torch.Tensor, out: dict, cfg: dict) -> dict | None:
    if evaluator_dir is None or not cfg["evaluator_findings"]:
        return None
    from cxrgen.evaluate.classifier import load_evaluator

    evaluator = load_evaluator(evaluator_dir)
    return {"findings": evaluator.findings, "before": evaluator.predict_proba((before + 1) / 2).numpy(),
            "autoencoder": evaluator.predict_proba((out["reconstructions"] + 1) / 2).numpy(),
            "after": evaluator.predict_proba((out["images"] + 1) / 2).numpy()}
