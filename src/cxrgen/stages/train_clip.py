"""Rule ``train_clip``: contrastive image–report pretraining on the store's train split (MedCoDi-M §3.2.1), retrieval
recall@k on the evaluation splits, the model directory that the LDM's text encoder is loaded from.

Rule ``train_clip_avatls`` (:func:`train_clip_avatls`): Diff-CXR's AVA-TLS — the trained CLIP fine-tuned with an
information squeeze after its text tower (:mod:`cxrgen.models.squeeze`), as Diff-CXR fine-tunes a pretrained VLM
(BiomedCLIP) with its 77-token squeeze; retrieval then compares squeezed reports with images."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
import torch

from cxrgen.labels import CHEXPERT_LABELS, label_column
from cxrgen.models.clip import (
    ClipBundle,
    attach_squeeze,
    clip_optimizer,
    contrastive_loss,
    encode_images,
    encode_texts,
    load_clip,
    pretrained_clip,
    retrieval_metrics,
    save_clip,
    scratch_clip,
    warmup_cosine,
    zero_shot_label_auroc,
)
from cxrgen.prompts import side_free_variants
from cxrgen.report.figures import Panel, plot_curves, series
from cxrgen.train.data import StoreImages, conditioning_texts, report_texts, select_rows
from cxrgen.train.job import TrackedJob, Trained, tracked_training, write_json
from cxrgen.train.loop import LoopResult, StepBatchSampler, run_training, seed_everything
from cxrgen.train.sections import loop_config
from cxrgen.train.tracking import config_digest

log = logging.getLogger(__name__)


def train_clip(*, index_path: Path | str, store_root: Path | str, resolution: int, cfg: dict, seed: int,
               state_dir: Path | str, out_dir: Path | str, tracking_json: Path | str | None, job_name: str,
               stop_after_steps: int | None = None, init_dir: Path | str | None = None, squeeze: bool = False,
               rule: str = "train_clip") -> dict:
    """Train (or resume) the CLIP model and write ``out_dir`` atomically (via ``<out_dir>.tmp``).

    Inputs: the unified index + store; training pairs = train-split rows with a non-empty FINDINGS+IMPRESSION report
    (restricted to ``cfg["views"]`` / ``cfg["sources"]`` when set), images at ``resolution`` px; ``cfg`` = the
    validated ``clip`` section (from scratch, or from ``clip.pretrained_path``); ``state_dir`` = resumable checkpoints
    (not an output); ``tracking_json`` = the file written by ``init_tracking`` (None: no MLflow).
    Outputs in ``out_dir``: ``open_clip_config.json`` (``{"model_cfg", "preprocess_cfg"}``) + ``model.safetensors``
    (load with :func:`cxrgen.models.clip.load_clip` / ``load_text_encoder`` / ``load_image_encoder``, or plain
    ``open_clip.create_model("local-dir:<out_dir>")``), ``metrics.json`` (final recall@1/5/10 both ways per
    evaluation split, their chance levels, loss, timings, MLflow run id), ``loss_curve.png``. Returns the metrics.
    ``stop_after_steps`` simulates a kill (tests). ``init_dir``: start from a CLIP model directory of this stage
    (instead of ``clip.pretrained_path`` / scratch). ``squeeze``: add an AVA-TLS squeeze (section ``clip.squeeze``;
    its own learning rate ``clip.squeeze.lr``; towers frozen unless ``clip.squeeze.train_towers``), saved with the
    model and used by every text embedding of it.

    Data parallel: run on every rank by :func:`cxrgen.train.distributed.launch` (``launch(train_clip, n, **kwargs)``;
    the arguments must pickle) or torchrun, each rank encodes its slice of every global batch of ``batch_size`` pairs
    and the InfoNCE loss contrasts it with every rank's embeddings (:func:`cxrgen.models.clip.contrastive_loss`), so
    the ranks train the single-process model (up to float summation order; a pretrained tower with dropout draws
    its masks per rank). Rank 0 alone opens the MLflow run, evaluates retrieval and writes ``out_dir``; the other
    ranks return ``{"rank": r, "steps": n}`` once training is done.
    """
    state_dir, out_dir = Path(state_dir), Path(out_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    index = pd.read_parquet(index_path)
    views, sources = list(cfg["views"]) or None, list(cfg["sources"]) or None
    train_rows = select_rows(index, splits=["train"], views=views, sources=sources)
    train_texts = conditioning_texts(train_rows, cfg["unreported_text"])
    n_report_pairs = int((report_texts(train_rows).str.len() > 0).sum())
    train_rows, train_texts = train_rows[train_texts.str.len() > 0], train_texts[train_texts.str.len() > 0]
    if train_rows.empty:
        raise ValueError("train_clip: no train-split images with a report (FINDINGS/IMPRESSION) or, with "
                         "clip.unreported_text = label_template, a positive label among the selected "
                         f"sources {sources or 'all'} and views {views or 'all'}; enable a source with reports "
                         "(mimic, iuxray) or widen clip.views / clip.sources")
    eval_sets = {}
    for split in cfg["eval_splits"]:
        rows = select_rows(index, splits=[split], views=views, sources=sources, require_report=True)
        if len(rows) >= 2:
            eval_sets[split] = StoreImages(store_root, rows.head(cfg["eval_max_pairs"]), resolution)
        else:
            log.warning("train_clip: split %s has %d report pairs; no retrieval metrics for it", split, len(rows))
    train_set = StoreImages(store_root, train_rows, resolution, texts=train_texts.tolist())
    zero_shot_sets = {split: StoreImages(store_root, rows.head(cfg["eval_max_pairs"]), resolution)
                      for split in cfg["eval_splits"]
                      if len(rows := select_rows(index, splits=[split], views=views, sources=sources)) >= 2}
    loop_cfg = loop_config(cfg, seed, stop_after_steps=stop_after_steps)
    device = loop_cfg.resolved_device()
    world = loop_cfg.resolved_world()

    seed_everything(seed)
    pretrained = bool(init_dir or cfg["pretrained_path"] or cfg["pretrained_tag"])
    if init_dir is not None:
        bundle = load_clip(init_dir)
        bundle.model.train()
    else:
        bundle = pretrained_clip(cfg) if pretrained else scratch_clip(cfg, resolution)
    model = bundle.model
    if squeeze and bundle.squeeze is None:
        attach_squeeze(bundle, cfg["squeeze"])
        if bundle.squeeze.length >= bundle.context_length:
            log.warning("clip.squeeze.length = %d does not shorten the text tower's %d tokens",
                        bundle.squeeze.length, bundle.context_length)
    if bundle.squeeze is not None and not cfg["squeeze"]["train_towers"]:
        model.requires_grad_(False)
        model.logit_scale.requires_grad_(True)  # the temperature stays learnable for the squeezed embeddings
    modules = {"clip": model} if bundle.squeeze is None else {"clip": model, "squeeze": bundle.squeeze}
    trainable = torch.nn.ModuleList(modules.values())  # for gradient clipping over every trained parameter
    optimizer = clip_optimizer(modules, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg["warmup_steps"], cfg["max_steps"]))
    max_logit = math.log(cfg["max_logit_scale"])

    def loader_for(start: int):
        sampler = StepBatchSampler(len(train_set), cfg["batch_size"], seed=seed, start_step=start,
                                   max_steps=loop_cfg.max_steps, rank=world.rank, world_size=world.world_size)
        return iter(torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=cfg["num_workers"]))

    def train_step(batch: dict, ctx) -> dict[str, float]:
        with ctx.autocast():
            image_features = encode_images(bundle, batch["image"].to(ctx.device))
            text_features = encode_texts(bundle, batch["text"])
            loss = contrastive_loss(image_features, text_features, model.logit_scale.exp(), rank=ctx.rank,
                                    world_size=ctx.world_size)
        grad_norm = ctx.backward_step(loss, trainable, optimizer)
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_logit)
        return {"loss": loss.item(), "logit_scale": float(model.logit_scale.detach().exp()), "grad_norm": grad_norm,
                "lr": optimizer.param_groups[0]["lr"]}

    def evaluate(job: TrackedJob, step: int) -> dict[str, float]:
        features: dict[str, torch.Tensor] = {}  # image id -> embedding; retrieval and zero-shot share the images
        found = {f"{split}/{k}": v for split, ds in eval_sets.items()
                 for k, v in _retrieval(bundle, ds, cfg, features).items()}
        for split, ds in zero_shot_sets.items():
            found.update({f"{split}/zero_shot_auroc/{k}": v
                          for k, v in _zero_shot(bundle, ds, cfg, features).items()})
        trainable.train()
        job.log_metrics(found, step)
        return found

    def fit(job: TrackedJob) -> LoopResult:
        def on_log(metrics: dict[str, float], step: int) -> None:
            job.record(metrics, step, prefix="train/")
            if cfg["eval_every"] and step % cfg["eval_every"] == 0 and step < loop_cfg.max_steps:
                job.extra["evals"].append({"step": step, **evaluate(job, step)})

        job.extra["evals"] = []
        return run_training(loop_cfg, modules=modules, optimizers={"clip": optimizer},
                            schedulers={"clip": scheduler}, loader_for=loader_for, train_step=train_step,
                            state_dir=state_dir, on_log=on_log, extra_state=job.extra, desc="clip",
                            distributed_ready=True)

    def publish(trained: Trained) -> dict:  # rank 0 alone evaluates and writes
        job, result = trained.job, trained.result
        final = evaluate(job, result.steps_done)
        trainable.eval()
        job.extra["evals"].append({"step": result.steps_done, **final})
        history = job.extra["history"]
        metrics = {
            "steps": result.steps_done, "resumed_from": result.resumed_from,
            "final_train_loss": history[-1]["loss"] if history else None,
            "n_train_pairs": len(train_set),
            "n_train_report_pairs": n_report_pairs,
            "resolution": resolution, "parameters": _parameters(model),
            "pretrained": pretrained, "seconds_per_step_this_run": trained.seconds_per_step,
            "retrieval": final, "mlflow_run_id": job.run_id,
            "init_dir": str(init_dir) if init_dir else None, "text_tokens": bundle.context_length,
            "squeeze": bundle.squeeze.config if bundle.squeeze is not None else None,
            "squeeze_parameters": _parameters(bundle.squeeze) if bundle.squeeze is not None else 0,
            "trained_parameters": sum(p.numel() for p in trainable.parameters() if p.requires_grad),
            "world_size": trained.world.world_size,
        }
        tmp = job.staging(out_dir)
        trainable.cpu()
        save_clip(bundle, tmp)
        write_json(tmp / "metrics.json", metrics)
        _save_curve(history, job.extra["evals"], tmp / "loss_curve.png")
        job.publish(tmp, out_dir, artifacts=["loss_curve.png", "metrics.json"])
        return metrics

    params = {"clip": cfg, "resolution": resolution, "seed": seed, "n_train_pairs": len(train_set),
              "model_cfg": bundle.model_cfg, "parameters": _parameters(model),
              "init_dir": str(init_dir) if init_dir else None,
              "squeeze": bundle.squeeze.config if bundle.squeeze is not None else None}
    return tracked_training(tracking_json, job_name, world=world, params=params, state_dir=state_dir,
                            tags={"snakemake.rule": rule, "config.sha256": config_digest(cfg)}, fit=fit,
                            publish=publish)


def train_clip_avatls(*, index_path: Path | str, store_root: Path | str, resolution: int, cfg: dict, seed: int,
                      baseline_dir: Path | str, state_dir: Path | str, out_dir: Path | str,
                      tracking_json: Path | str | None, job_name: str, stop_after_steps: int | None = None) -> dict:
    """Rule ``train_clip_avatls``: fine-tune the CLIP model in ``baseline_dir`` (rule train_clip) with an AVA-TLS
    squeeze for ``clip.squeeze.max_steps`` steps (tower learning rate ``clip.squeeze.tower_lr``, squeeze
    ``clip.squeeze.lr``, warm-up ``clip.squeeze.warmup_steps``); everything else as :func:`train_clip`, whose outputs
    (model dir with the squeeze in ``squeeze/``, ``metrics.json`` with the same recall@k keys) it
    writes to ``out_dir``. The LDM loading this directory cross-attends to ``clip.squeeze.length`` tokens. Data
    parallel like :func:`train_clip` (``launch(train_clip_avatls, n, **kwargs)``)."""
    squeeze_cfg = cfg["squeeze"]
    fine_tune = {**cfg, "max_steps": squeeze_cfg["max_steps"], "lr": squeeze_cfg["tower_lr"],
                 "warmup_steps": squeeze_cfg["warmup_steps"], "pretrained_path": None, "pretrained_tag": None}
    return train_clip(index_path=index_path, store_root=store_root, resolution=resolution, cfg=fine_tune, seed=seed,
                      state_dir=state_dir, out_dir=out_dir, tracking_json=tracking_json, job_name=job_name,
                      stop_after_steps=stop_after_steps, init_dir=baseline_dir, squeeze=True, rule="train_clip_avatls")


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _eval_device(bundle: ClipBundle) -> torch.device:
    """Put the model (and its squeeze) in eval mode; the device its parameters are on."""
    model = bundle.model.eval()
    if bundle.squeeze is not None:
        bundle.squeeze.eval()
    return next(model.parameters()).device


def _batches(n: int, batch_size: int):
    return (range(start, min(n, start + batch_size)) for start in range(0, n, batch_size))


@torch.no_grad()
def _image_features(bundle: ClipBundle, dataset: StoreImages, batch_size: int,
                    cache: dict[str, torch.Tensor]) -> torch.Tensor:
    """Embeddings of the dataset's images in row order; images already in ``cache`` (by image id) are not encoded
    again, new ones are added to it."""
    device = _eval_device(bundle)
    ids = dataset.rows["image_id"].astype(str).tolist()
    missing = [i for i, image_id in enumerate(ids) if image_id not in cache]
    for batch in _batches(len(missing), batch_size):
        rows = [missing[j] for j in batch]
        encoded = encode_images(bundle, torch.stack([dataset.image(i) for i in rows]).to(device)).cpu()
        cache.update({ids[i]: feature for i, feature in zip(rows, encoded, strict=True)})
    return torch.stack([cache[image_id] for image_id in ids])


@torch.no_grad()
def _retrieval(bundle: ClipBundle, dataset: StoreImages, cfg: dict,
               cache: dict[str, torch.Tensor]) -> dict[str, float]:
    image_features = _image_features(bundle, dataset, cfg["batch_size"], cache)
    text_features = torch.cat([encode_texts(bundle, [dataset.texts[i] for i in batch]).cpu()
                               for batch in _batches(len(dataset), cfg["batch_size"])])
    return retrieval_metrics(image_features, text_features, list(dataset.texts))


@torch.no_grad()
def _zero_shot(bundle: ClipBundle, dataset: StoreImages, cfg: dict,
               cache: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-finding zero-shot AUROC of the split's images (reports or not) against the findings' side-free prompts."""
    image_features = _image_features(bundle, dataset, cfg["batch_size"], cache)
    findings = [f for f in CHEXPERT_LABELS if f != "No Finding"]
    prompts = {f: encode_texts(bundle, side_free_variants(f)).cpu() for f in findings}
    labels = {f: dataset.rows[label_column(f)].to_numpy(dtype=float) for f in findings}
    return zero_shot_label_auroc(image_features, prompts, labels)


def _save_curve(history: list[dict], evals: list[dict], path: Path) -> None:
    """Train InfoNCE (left) and recall@5 of the evaluation splits (right, grey lines: chance)."""
    recall_keys = sorted({k for e in evals for k in e if k.endswith(("i2t_recall_at_5", "t2i_recall_at_5"))})
    lines = [series(history, "loss", "train InfoNCE")]
    lines += [series(evals, key, axis="right", marker="o", linestyle="--") for key in recall_keys]
    chances = [next((e[key + "_chance"] for e in evals if key + "_chance" in e), None) for key in recall_keys]
    plot_curves(path, [Panel(lines=lines, right_ylabel="recall@5 (grey: chance)", right_ylim=(0, 1),
                             right_hlines=[c for c in chances if c is not None])], panel_size=(6, 3.5))
