"""Model cards: ``MODEL_CARD.md`` + ``model_card.json`` written next to every trained model's weights.

Every trainer runs inside :func:`cxrgen.train.job.tracked_job`; when that job is a training job it carries a
:class:`CardContext` and :meth:`cxrgen.train.job.TrackedJob.publish` writes the card into the staging directory, so it
is published atomically with the weights and logged to the job's MLflow run. Nothing here is trainer-specific: the
card is built from what every trainer already has (its MLflow params and tags, the loop's result, the files it staged:
saved configs, weights, ``metrics.json``) and from the job description the workflow adapter leaves in the state
directory (:func:`write_job_description`, called by :func:`cxrgen.train.state.claim_job_state`: rule, wildcards and
input paths), whose inputs are digested here.

Evaluation results arrive later in the DAG; :func:`complete_card` adds them (rule ``write_model_cards``).

No PHI: input paths are kept relative (an absolute one is reduced to its name), metrics are numbers only, and nothing
is read from image headers or source metadata.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrgen.hashing import dir_digest, model_files

CARD_MD = "MODEL_CARD.md"
CARD_JSON = "model_card.json"
CARD_FILES = (CARD_MD, CARD_JSON)
JOB_FILE = "job.json"
ATTEMPTS_FILE = "attempts.json"
CARD_SCHEMA = 1

# Files above this size are digested by their size, first and last MiB (a full sha256 of multi-GB weights or latents
# would cost seconds per job; every file a demo job reads is below it).
FULL_HASH_LIMIT = 32 * 2**20
_CHUNK = 2**20
_SKIPPED_SUFFIXES = (".png", ".jpg", ".log", ".tmp")

# rule -> what the model is, the paper it reproduces and the section(s) describing it
MODEL_KINDS: dict[str, dict[str, str]] = {
    "train_clip": {"kind": "CLIP image-report encoder (open_clip, trained from scratch): the report encoder of the "
                           "conditional LDMs", "paper": "Cheff / MaCheX",
                   "section": "§3 Semantic generation (report encoder τφ)"},
    "train_clip_avatls": {"kind": "CLIP text encoder fine-tuned with the AVA-TLS information squeeze",
                          "paper": "Diff-CXR", "section": "AVA-TLS (adaptive vision-aware textual learning)"},
    "train_autoencoder": {"kind": "KL autoencoder (f = 4) for the latent space", "paper": "Cheff / MaCheX",
                          "section": "§3 Autoencoder training; §7.3.1"},
    "train_ldm": {"kind": "report-conditioned latent diffusion model", "paper": "Cheff / MaCheX; Diff-CXR variants",
                  "section": "Cheff §3 Semantic generation, §7.3.2; Diff-CXR LNFS / AVA-TLS"},
    "train_dkim": {"kind": "disease-knowledge injection adapter on a frozen LDM", "paper": "Diff-CXR",
                   "section": "DKIM (disease-knowledge injection module)"},
    "train_sr": {"kind": "SR3 super-resolution diffusion model (bicubic low-resolution input)",
                 "paper": "Cheff / MaCheX", "section": "§3 Super-resolution; §7.3.3"},
    "finetune_sr": {"kind": "SR3 super-resolution diffusion model fine-tuned on autoencoder-decoded inputs",
                    "paper": "Cheff / MaCheX", "section": "§3 Super-resolution; §5; §7.3.3"},
    "train_evaluator": {"kind": "in-domain DenseNet finding classifier (the evaluation harness' feature extractor "
                                "and fidelity judge)", "paper": "Cheff / MaCheX; Diff-CXR",
                        "section": "Cheff §5 Experiments (conditional fidelity)"},
    "run_downstream": {"kind": "downstream finding classifiers trained on real / synthetic mixes",
                       "paper": "MedCoDi-M; Diff-CXR", "section": "MedCoDi-M §4.5 (utility of synthetic data)"},
    "run_view_downstream": {"kind": "per-view downstream classifiers trained on real / MedCoDi-M twins",
                            "paper": "MedCoDi-M", "section": "§4.5 (utility of synthetic data)"},
    "train_prompt_encoders": {"kind": "prompt encoders aligned in a shared latent space (pairwise InfoNCE)",
                              "paper": "MedCoDi-M", "section": "§2.1 Building a shared latent space; §3.2.1"},
    "train_text_vae": {"kind": "report VAE (Optimus-style, from scratch)", "paper": "MedCoDi-M",
                       "section": "§3.2 Model architecture and training"},
    "train_medcodi_ldm": {"kind": "per-view image latent diffusion model with multi-/single-prompt conditioning",
                          "paper": "MedCoDi-M", "section": "§2.2 Multi-prompt approach; §3.2.2"},
    "train_report_diffusion": {"kind": "report latent diffusion model prompted by the X-ray views",
                               "paper": "MedCoDi-M", "section": "§2.2 Multi-prompt approach; §3.2.2"},
    "train_joint_alignment": {"kind": "joint-generation layers (environment encoders + cross-flow attention)",
                              "paper": "MedCoDi-M", "section": "§2.3 Multi-output generation via cross-modal "
                                                              "latent alignment"},
    "train_reid": {"kind": "Siamese patient-verification network (the re-identification auditor of generated images)",
                   "paper": "Packhäuser et al. 2022 (Sci. Rep. 12); CheXGenBench 2025",
                   "section": "re-identification audit of the evaluation harness"},
    "train_ddl_ldm": {"kind": "EHR-conditioned latent diffusion model (contrastive LDM loss)", "paper": "DDL-CXR",
                      "section": "method: individualized CXR generation"},
    "train_icu_predictor": {"kind": "multimodal fusion predictor (in-hospital mortality / phenotypes)",
                            "paper": "DDL-CXR", "section": "method: asynchronous multimodal fusion"},
}

INTENDED_USE = (
    "Research reproduction of the cited paper inside the cxrgen pipeline: to study the method, compare variants and "
    "feed the pipeline's own evaluation. Not for clinical use: no diagnostic, screening or treatment decision may "
    "rest on this model or its outputs.")
DEMO_LIMITS = (
    "Demo-scale model: trained for few steps on the embedded demo corpus, whose images are synthetic phantoms "
    "(no real patient data). Its metrics show that the pipeline runs end to end; they say nothing about the "
    "method's quality at full scale.")
FULL_LIMITS = (
    "Trained on the configured chest X-ray sources: it inherits their populations, devices, label noise and biases; "
    "synthetic images it produces may reproduce training images (see the memorisation result) and must not be "
    "released as anonymous data without that check.")

# metric protocols by key (exact) and by key fragment; each card metric names the protocol it was measured with
_PROTOCOLS_EXACT = {
    "steps": "optimizer steps done (across resumes)",
    "resumed_from": "step of the checkpoint this run resumed from (none: trained in one run)",
    "final_loss": "last logged training loss (the trainer's objective, on a training batch)",
    "scaling_factor": "1 / std of training-split latents (posterior samples), the LDM latent scale",
    "parameters": "trainable + frozen parameters of the saved model",
    "resolution": "image side in pixels",
    "median": "median over the images",
    "p05": "5th percentile over the images",
    "min": "minimum over the images",
    "world_size": "data-parallel ranks that trained the model",
}
_PROTOCOLS_FRAGMENT = (
    ("psnr", "PSNR in dB against the original, images in [-1, 1], averaged over the evaluated images"),
    ("ssim", "SSIM (11-px Gaussian window) against the original, averaged over the evaluated images"),
    ("mse", "mean squared pixel error against the original, images in [-1, 1]"),
    ("l1", "mean absolute pixel error against the original, images in [-1, 1]"),
    ("fid", "Fréchet distance between Gaussian fits of the two image sets' features (feature space: first element)"),
    ("kid", "kernel distance (unbiased polynomial-kernel MMD²) between the two image sets' features, averaged over "
            "subsets"),
    ("share_below_threshold", "share of the images whose nearest training image is closer than the space's "
                              "threshold (a copy candidate)"),
    ("count_below_threshold", "images whose nearest training image is closer than the space's threshold"),
    ("share_above_threshold", "share of the generated images (or prompts) the patient verifier scores above its "
                              "validation-chosen threshold, i.e. as the same patient as their prompt's training image"),
    ("threshold", "nearest-neighbour distance below which an image counts as a copy candidate"),
    ("auroc", "area under the ROC curve on held-out labelled images"),
    ("auc", "area under the ROC curve on held-out labelled images"),
    ("f1", "F1 at the stated threshold on held-out labelled images"),
    ("loss", "the trainer's objective"),
    ("recall", "retrieval recall@k on held-out pairs"),
    ("accuracy", "accuracy on held-out labelled data"),
    ("bleu", "BLEU against the held-out reference reports"),
    ("seconds", "wall-clock seconds on the job's hardware"),
)


def metric_protocol(key: str) -> str:
    """How a metric was measured, from its name or ``/``-separated path (the last part decides first)."""
    name = key.lower()
    parts = [part.strip() for part in name.split("/")]
    protocol = _PROTOCOLS_EXACT.get(parts[-1])
    if protocol is None and (parts[-1] == "n" or parts[-1].startswith("n_")):
        protocol = "number of items"
    if protocol is None:
        protocol = next((text for fragment, text in _PROTOCOLS_FRAGMENT if fragment in parts[-1]), None)
    if protocol is None:
        protocol = next((text for fragment, text in _PROTOCOLS_FRAGMENT if fragment in name), "as logged by the job")
    words = set(name.replace("/", "_").replace(" ", "_").split("_"))
    if "val" in words:
        protocol += "; validation split"
    elif "test" in words:
        protocol += "; test split"
    return protocol


# --- the job description the workflow adapter leaves in the state directory ---

def portable_path(path: Path | str) -> str:
    """A path fit for a card: relative paths as given; an absolute one relative to the working directory when it
    lies below it, else just its name (absolute paths can carry user or site names)."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path.name


def write_job_description(state_dir: Path | str, *, rule: str, wildcards: dict, inputs: dict,
                          ignored: tuple[str, ...] = ()) -> Path:
    """``<state_dir>/job.json``: the workflow job's rule, wildcards and input paths (portable), for the card."""
    payload = {"rule": rule, "wildcards": {k: str(v) for k, v in wildcards.items()},
               "inputs": {k: [portable_path(p) for p in (v if isinstance(v, list | tuple) else [v])]
                          for k, v in inputs.items() if k not in ignored}}
    path = Path(state_dir) / JOB_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    return path


def read_job_description(state_dir: Path | str | None) -> dict:
    if state_dir is None or not (Path(state_dir) / JOB_FILE).is_file():
        return {}
    return json.loads((Path(state_dir) / JOB_FILE).read_text())


def count_attempt(state_dir: Path | str | None) -> int:
    """Count this start of the job in its state directory (a resubmission after a kill is a new attempt; a changed
    job definition starts a fresh state directory, so the count is per job definition). Returns the attempt number."""
    if state_dir is None:
        return 1
    path = Path(state_dir) / ATTEMPTS_FILE
    attempts = json.loads(path.read_text()).get("attempts", 0) + 1 if path.is_file() else 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"attempts": attempts}))
    return attempts


# --- digests ---

def file_digest(path: Path) -> str:
    """sha256 of the content; above :data:`FULL_HASH_LIMIT`, ``sampled:`` sha256 of size + first + last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(_CHUNK), b""):
                h.update(block)
            return h.hexdigest()
        h.update(str(size).encode())
        h.update(f.read(_CHUNK))
        f.seek(size - _CHUNK)
        h.update(f.read(_CHUNK))
    return "sampled:" + h.hexdigest()


def tree_digest(path: Path | str, exclude: tuple[str, ...] = CARD_FILES) -> dict:
    """Digest of a file or a directory (sha256 over its files' relative names and digests, figures and logs
    skipped), with its file count and bytes."""
    path = Path(path)
    if path.is_file():
        return {"sha256": file_digest(path), "files": 1, "bytes": path.stat().st_size}
    if not path.is_dir():
        return {"missing": True}
    h, files, size = hashlib.sha256(), 0, 0
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            if name in exclude or name.endswith(_SKIPPED_SUFFIXES):
                continue
            file = Path(root) / name
            h.update(f"{file.relative_to(path).as_posix()}\0{file_digest(file)}\n".encode())
            files += 1
            size += file.stat().st_size
    return {"sha256": h.hexdigest(), "files": files, "bytes": size}


def weights_digest(model_dir: Path) -> dict:
    """The model's identity: :func:`cxrgen.hashing.dir_digest` (the digest every provenance record and staleness
    check uses, e.g. the latent cache's ``autoencoder_sha256``), with its file count and bytes; a file output (the
    metrics of classifiers that are not kept) is digested as a file."""
    if not model_dir.is_dir():
        return tree_digest(model_dir)
    files = model_files(model_dir)
    if not files:
        return {"sha256": None, "files": 0, "bytes": 0}
    return {"sha256": dir_digest(model_dir), "files": len(files), "bytes": sum(f.stat().st_size for f in files)}


def _read_json(path: Path) -> dict | None:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def input_lineage(inputs: dict[str, list[str]]) -> dict:
    """What the card says about the job's inputs: each input's digest, the split manifests and per-source counts of
    the store an index input belongs to, digests recorded by derived inputs (``meta.json`` ``*_sha256`` keys, e.g.
    the latent cache's index and autoencoder digests) and the cards of upstream models (their weights digest and,
    when this job reads no store index itself, the store splits they were trained on)."""
    digests, recorded, upstream = {}, {}, {}
    splits = sources = None
    for name, paths in inputs.items():
        for i, raw in enumerate(paths):
            label = name if len(paths) == 1 else f"{name}[{i}]"
            path = Path(raw)
            digests[label] = {"path": portable_path(raw), **tree_digest(path)}
            store_dir = path.parent if path.is_file() else path
            manifest = _read_json(store_dir / "splits" / "manifest_digests.json")
            if manifest is not None and splits is None:
                splits = {"from": label, "manifests": manifest}
                summary = _read_json(store_dir / "summary.json") or {}
                sources = {src: {"images": v.get("ingested"), "patients": v.get("patients"),
                                 "splits": v.get("splits")} for src, v in summary.get("sources", {}).items()}
            meta = _read_json(path / "meta.json") if path.is_dir() else None
            if meta:
                recorded[label] = {k: v for k, v in meta.items() if k.endswith("sha256") and isinstance(v, str)}
            card = _read_json(path / CARD_JSON) if path.is_dir() else None
            if card:
                upstream[label] = {"model": card.get("model", {}).get("name"),
                                   "weights_sha256": card.get("weights", {}).get("sha256"),
                                   "config_sha256": card.get("training", {}).get("config_sha256")}
                data = card.get("data", {})
                if splits is None and data.get("store_splits"):
                    splits = {**data["store_splits"], "from": f"{label} (upstream model card)"}
                    sources = data.get("sources")
    return {"inputs": digests, "store_splits": splits, "sources": sources, "recorded_digests": recorded,
            "upstream_models": upstream}


# --- architecture ---

def safetensors_parameters(path: Path) -> int:
    """Number of parameters in a ``.safetensors`` file, from its header alone."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def _plain(value: Any) -> bool:
    """A number, flag or short string that is not a path."""
    return isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= 64 and "/" not in value)


def _config_summary(config: dict) -> dict:
    """The sizes of a saved model config: scalars and short lists; private keys and run ids skipped."""
    kept = {}
    for key, value in config.items():
        if key.startswith("_") or "run_id" in key:
            continue
        if _plain(value) or (isinstance(value, list) and len(value) <= 8 and all(_plain(v) for v in value)):
            kept[key] = value
        elif isinstance(value, dict) and len(value) <= 24:
            nested = _config_summary(value)
            if nested:
                kept[key] = nested
    return kept


def architecture(model_dir: Path) -> dict:
    """Parameter count (safetensors headers; else ``metrics.json``'s ``parameters``) and the saved configs' sizes."""
    weights = sorted(p for p in model_dir.rglob("*.safetensors"))
    configs = {}
    for path in sorted(model_dir.rglob("*.json")):
        if path.name in (CARD_JSON, "metrics.json") or path.name.startswith("."):
            continue
        payload = _read_json(path)
        if payload is not None and path.stat().st_size <= 256 * 1024:
            summary = _config_summary(payload)
            if summary:
                configs[path.relative_to(model_dir).as_posix()] = summary
    per_file = {p.relative_to(model_dir).as_posix(): safetensors_parameters(p) for p in weights}
    return {"parameters_by_file": per_file, "parameters_saved": sum(per_file.values()) if per_file else None,
            "configs": configs}


# --- software ---

@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The cxrgen checkout's commit (``-dirty`` when it has local changes), or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("-dirty" if status.returncode == 0 and status.stdout.strip() else "")


def software_versions() -> dict:
    from importlib import metadata

    import cxrgen

    versions: dict[str, str | None] = {"python": platform.python_version(), "cxrgen": cxrgen.__version__,
                                       "cxrgen_git_commit": git_commit()}
    for name in ("torch", "diffusers", "open_clip_torch", "transformers", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# --- the card ---

@dataclass
class CardContext:
    """What a training job knows about itself when it publishes (set up by :func:`cxrgen.train.job.tracked_job`)."""

    name: str
    params: dict
    tags: dict
    state_dir: Path | None
    attempt: int = 1
    started: float = field(default_factory=time.perf_counter)
    cpu_started: float = field(default_factory=time.process_time)
    steps_done: int | None = None
    resumed_from: int | None = None
    fit_seconds: float | None = None
    world_size: int = 1


def _sections_and_settings(params: dict) -> tuple[dict, dict]:
    """Config sections (dict-valued params) and plain settings (numbers, flags, short non-path strings)."""
    sections = {k: v for k, v in params.items() if isinstance(v, dict)}
    settings = {k: v for k, v in params.items() if not isinstance(v, dict) and _plain(v)}
    return sections, settings


def config_hash(sections: dict) -> str:
    return hashlib.sha256(json.dumps(sections, sort_keys=True, default=str).encode()).hexdigest()


def numeric_metrics(metrics: dict, prefix: str = "", depth: int = 2) -> dict[str, float]:
    """Finite numbers of ``metrics`` (nested dicts flattened with ``/`` up to ``depth``); strings and ids dropped."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or "run_id" in key:
            continue
        if isinstance(value, int | float) and math.isfinite(value):
            flat[prefix + key] = value
        elif isinstance(value, dict) and depth > 0:
            flat.update(numeric_metrics(value, f"{prefix}{key}/", depth - 1))
    return flat


def build_card(context: CardContext, model_dir: Path | str, *, demo: bool | None = None) -> dict:
    """The card of the model staged in ``model_dir`` (its weights, configs and ``metrics.json`` already written)."""
    model_dir = Path(model_dir)
    job = read_job_description(context.state_dir)
    rule = job.get("rule") or context.tags.get("snakemake.rule") or context.name.split(":")[0]
    sections, settings = _sections_and_settings(context.params)
    metrics_file = model_dir / "metrics.json" if model_dir.is_dir() else model_dir
    metrics = _read_json(metrics_file) or {}
    steps = context.steps_done if context.steps_done is not None else metrics.get("steps")
    resumed_from = context.resumed_from if context.steps_done is not None else metrics.get("resumed_from")
    lineage = input_lineage(job.get("inputs", {}))
    seed = next((settings[k] for k in ("seed", "base_seed", "train_seed") if k in settings), None)
    card = {
        "schema": CARD_SCHEMA,
        "model": {"name": context.name, "rule": rule, "wildcards": job.get("wildcards", {}),
                  **MODEL_KINDS.get(rule, {"kind": rule, "paper": "", "section": ""})},
        "architecture": architecture(model_dir) if model_dir.is_dir() else {},
        "weights": weights_digest(model_dir),
        "data": {"sources": lineage["sources"], "store_splits": lineage["store_splits"],
                 "splits_used": {k: v for k, v in {**settings, **metrics}.items()
                                 if isinstance(v, int) and not isinstance(v, bool) and k.startswith("n_")},
                 "inputs": lineage["inputs"], "recorded_digests": lineage["recorded_digests"],
                 "upstream_models": lineage["upstream_models"]},
        "training": {"config_sha256": config_hash(sections) if sections else None, "sections": sections,
                     "settings": settings,
                     "seed": seed, "steps": steps, "resumed_from": resumed_from,
                     "attempts": context.attempt, "resume_count": context.attempt - 1,
                     "fit_wall_seconds": context.fit_seconds,
                     "job_wall_seconds": time.perf_counter() - context.started,
                     "job_cpu_seconds": time.process_time() - context.cpu_started,
                     "world_size": context.world_size},
        "metrics": {k: {"value": v, "protocol": metric_protocol(k)} for k, v in numeric_metrics(metrics).items()},
        "software": software_versions(),
        "intended_use": intended_use(demo),
        "evaluation": {},
    }
    if card["architecture"].get("parameters_saved") is None and "parameters" in metrics:
        card["architecture"]["parameters_saved"] = metrics["parameters"]
    return card


def intended_use(demo: bool | None) -> dict:
    """``demo``: trained on the embedded demo corpus (every source with ``root: null``); None = not known yet (a
    trainer does not see the source roots; rule ``write_model_cards`` settles it)."""
    if demo is None:
        limits = f"{FULL_LIMITS} If the store was built from the embedded demo corpus: {DEMO_LIMITS}"
    else:
        limits = DEMO_LIMITS if demo else FULL_LIMITS
    return {"use": INTENDED_USE, "limits": limits, "clinical_use": "not for clinical use", "demo_scale": demo}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return "`" + json.dumps(value, default=str) + "`"
    return "—" if value is None else str(value)


def render_markdown(card: dict) -> str:
    model, arch, data, training = card["model"], card["architecture"], card["data"], card["training"]
    lines = [f"# Model card: {model['name']}", "",
             f"**Kind:** {model['kind']}  ", f"**Paper:** {model['paper']}; section: {model['section']}  ",
             f"**Rule:** `{model['rule']}`" + (f" {_fmt(model['wildcards'])}" if model.get("wildcards") else ""), "",
             "## Intended use and limits", "", card["intended_use"]["use"], "", card["intended_use"]["limits"], "",
             "## Architecture", "",
             f"Parameters (saved weights): {_fmt(arch.get('parameters_saved'))}; weights sha256 "
             f"`{card['weights'].get('sha256')}` ({card['weights'].get('files')} files, "
             f"{card['weights'].get('bytes')} bytes).", ""]
    if len(arch.get("parameters_by_file") or {}) > 1:  # e.g. an LDM's EMA and raw UNets: each is a full copy
        lines += ["Parameters by weights file: " + ", ".join(
            f"`{file}` {count}" for file, count in arch["parameters_by_file"].items()), ""]
    for file, summary in arch.get("configs", {}).items():
        lines.append(f"- `{file}`: " + ", ".join(f"{k}={_fmt(v)}" for k, v in summary.items()))
    lines += ["", "## Data", ""]
    if data.get("sources"):
        lines += ["| source | images | patients | splits |", "|---|---|---|---|"]
        lines += [f"| {s} | {_fmt(v.get('images'))} | {_fmt(v.get('patients'))} | {_fmt(v.get('splits'))} |"
                  for s, v in data["sources"].items()]
        lines.append("")
    if data.get("store_splits"):
        lines.append(f"Store split manifests (from {data['store_splits']['from']}):")
        lines += [f"- {split}: {v.get('images')} images, sha256 `{v.get('sha256')}`"
                  for split, v in data["store_splits"]["manifests"].items()]
        lines.append("")
    if data.get("splits_used"):
        lines.append("Used by this model: " + ", ".join(f"{k}={v}" for k, v in data["splits_used"].items()))
        lines.append("")
    if data.get("inputs"):
        lines += ["| input | path | sha256 | files |", "|---|---|---|---|"]
        lines += [f"| {k} | `{v.get('path')}` | `{v.get('sha256')}` | {_fmt(v.get('files'))} |"
                  for k, v in data["inputs"].items()]
        lines.append("")
    for label, digests in data.get("recorded_digests", {}).items():
        lines += [f"- {label} records " + ", ".join(f"{k} `{v}`" for k, v in digests.items())]
    for label, up in data.get("upstream_models", {}).items():
        lines += [f"- upstream model {up.get('model')} ({label}): weights `{up.get('weights_sha256')}`, config "
                  f"`{up.get('config_sha256')}`"]
    lines += ["", "## Training", "",
              f"- config sha256 (sections {', '.join(training['sections']) or '—'}): `{training['config_sha256']}`",
              f"- seed {_fmt(training['seed'])}; steps {_fmt(training['steps'])}; resumed from "
              f"{_fmt(training['resumed_from'])}; attempts {training['attempts']} (resumes "
              f"{training['resume_count']}); world size {training['world_size']}",
              f"- fit wall time {_fmt(training['fit_wall_seconds'])} s; job wall time "
              f"{_fmt(training['job_wall_seconds'])} s; job CPU time (rank 0 process) {_fmt(training['job_cpu_seconds'])} s", ""]
    if training.get("settings"):
        lines.append("Settings: " + ", ".join(f"{k}={_fmt(v)}" for k, v in training["settings"].items()))
        lines.append("")
    for name, section in training["sections"].items():
        lines += [f"<details><summary>section <code>{name}</code></summary>", "", "```json",
                  json.dumps(section, indent=1, sort_keys=True, default=str), "```", "", "</details>", ""]
    lines += ["## Metrics (at training time)", "", "| metric | value | protocol |", "|---|---|---|"]
    lines += [f"| {k} | {_fmt(v['value'])} | {v['protocol']} |" for k, v in card["metrics"].items()]
    lines.append("")
    if card.get("evaluation"):
        lines += ["## Evaluation (later in the pipeline)", ""]
        for label, evaluation in card["evaluation"].items():
            lines += [f"### {label}", "", f"Source: `{evaluation['source']}`", "",
                      "| metric | value | 95% CI | protocol |", "|---|---|---|---|"]
            lines += [f"| {m['metric']} | {_fmt(m['value'])} | {_ci(m)} | {m['protocol']} |"
                      for m in evaluation["metrics"]]
            if evaluation.get("omitted"):
                lines.append(f"\n({evaluation['omitted']} further values in the source file.)")
            lines.append("")
    lines += ["## Software", "", ", ".join(f"{k} {_fmt(v)}" for k, v in card["software"].items()), ""]
    return "\n".join(lines)


def _ci(metric: dict) -> str:
    if metric.get("ci_low") is None:
        return "—"
    return f"[{_fmt(metric['ci_low'])}, {_fmt(metric['ci_high'])}]"


def write_card(card: dict, directory: Path | str) -> list[Path]:
    """Write ``model_card.json`` and ``MODEL_CARD.md`` into ``directory``; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / CARD_JSON, directory / CARD_MD
    json_path.write_text(json.dumps(card, indent=1, default=str, allow_nan=True))
    md_path.write_text(render_markdown(card))
    return [md_path, json_path]


# --- completion with the evaluation results (rule write_model_cards) ---

MAX_EVALUATION_ROWS = 40


def evaluation_metrics(payload: dict, skip: tuple[str, ...] = ("per_finding",)) -> tuple[list[dict], int]:
    """The metrics of an evaluation json: every ``{"value": number, ...}`` node (with its CI and ``ci_method``) and
    every other finite number, by its path; subtrees named in ``skip`` (per-finding breakdowns) are left to the
    source file. At most :data:`MAX_EVALUATION_ROWS` rows; returns (rows, how many were left out)."""
    rows: list[dict] = []

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            value = node.get("value")
            if isinstance(value, int | float) and not isinstance(value, bool):
                protocol = metric_protocol(" / ".join(path))
                if node.get("ci_method"):
                    protocol += f"; CI: {node['ci_method']}"
                rows.append({"metric": " / ".join(path), "value": value, "ci_low": node.get("ci_low"),
                             "ci_high": node.get("ci_high"), "protocol": protocol})
                return
            for key, child in node.items():
                if key not in skip and "run_id" not in key:  # the top-level "results" wrapper names nothing
                    walk(child, path if not path and key == "results" else (*path, str(key)))
        elif isinstance(node, int | float) and not isinstance(node, bool) and math.isfinite(node):
            rows.append({"metric": " / ".join(path), "value": node, "ci_low": None, "ci_high": None,
                         "protocol": metric_protocol(" / ".join(path))})

    walk(payload, ())
    return rows[:MAX_EVALUATION_ROWS], max(0, len(rows) - MAX_EVALUATION_ROWS)


def complete_card(card: dict, evaluations: dict[str, Path | str], *, demo: bool | None = None) -> dict:
    """The card with ``evaluation`` filled from the evaluation json files that concern the model (label -> path)
    and, when ``demo`` is given, the intended use and limits settled for the demo or a full-scale run."""
    done = {**card, "evaluation": dict(card.get("evaluation", {}))}
    if demo is not None:
        done["intended_use"] = intended_use(demo)
    for label, path in evaluations.items():
        payload = _read_json(Path(path))
        if payload is None:
            raise ValueError(f"write_model_cards: evaluation {label!r} is not a JSON object: {portable_path(path)}")
        rows, omitted = evaluation_metrics(payload)
        done["evaluation"][label] = {"source": portable_path(path), "metrics": rows, "omitted": omitted}
    return done


def card_file_name(model: str) -> str:
    return model.replace("/", "__") + ".md"
