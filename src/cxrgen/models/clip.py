"""open_clip image–report model: build from a config dict, save/load strictly, frozen text and image encoders.

A model directory holds ``open_clip_config.json`` (``{"model_cfg": …, "preprocess_cfg": …}``, open_clip's own
``local-dir:`` layout, so plain ``open_clip.create_model("local-dir:<dir>")`` loads it too) and ``model.safetensors``.

Grey radiographs enter the image tower as three identical channels: open_clip's preprocessing and every public
checkpoint (BiomedCLIP, OpenAI/LAION) are RGB, so repeating the channel keeps trained models loadable by plain
open_clip and lets a pretrained tower be fine-tuned unchanged; the extra patch-embedding work is measured at < 2% of a
step (see the stage's report).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "model.safetensors"


class ClipConfigError(ValueError):
    """A ``clip`` config value that cannot be used; the message names the key."""


@dataclass
class ClipBundle:
    """An open_clip model with the config it was built from, its image preprocessing and its tokenizer."""

    model: nn.Module
    model_cfg: dict
    preprocess_cfg: dict
    tokenizer: Callable[[list[str]], torch.Tensor]
    source_dir: Path | None = None  # a pretrained local-dir whose tokenizer files must travel with the weights
    squeeze: nn.Module | None = None  # AVA-TLS information squeeze after the text tower (cxrgen.models.squeeze)

    @property
    def image_size(self) -> int:
        size = self.model_cfg["vision_cfg"].get("image_size", 224)
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def context_length(self) -> int:
        return int(self.model_cfg["text_cfg"].get("context_length", 77))


def scratch_model_config(cfg: dict, resolution: int) -> dict:
    """open_clip model config for a model trained from scratch, from the ``clip`` config section."""
    vision, text = cfg["vision"], cfg["text"]
    layers = vision["layers"]
    if isinstance(layers, list):  # open_clip builds a ModifiedResNet from a 4-tuple of stage depths
        if resolution % 32:
            raise ClipConfigError(f"config key 'clip.vision.layers' selects a ResNet tower, which needs a resolution "
                                  f"divisible by 32; got {resolution}")
        vision_cfg = {"image_size": resolution, "layers": list(layers), "width": vision["width"],
                      "head_width": vision["head_width"]}
    else:
        if resolution % vision["patch_size"]:
            raise ClipConfigError(f"config key 'clip.vision.patch_size' = {vision['patch_size']} must divide the "
                                  f"image resolution {resolution}")
        vision_cfg = {"image_size": resolution, "layers": layers, "width": vision["width"],
                      "head_width": vision["head_width"], "patch_size": vision["patch_size"],
                      "mlp_ratio": vision["mlp_ratio"]}
    if text["width"] % text["heads"]:
        raise ClipConfigError(f"config key 'clip.text.heads' = {text['heads']} must divide clip.text.width "
                              f"= {text['width']}")
    text_cfg = {"context_length": text["context_length"], "vocab_size": 49408, "width": text["width"],
                "heads": text["heads"], "layers": text["layers"], "mlp_ratio": text["mlp_ratio"]}
    return {"embed_dim": cfg["embed_dim"], "vision_cfg": vision_cfg, "text_cfg": text_cfg}


def scratch_preprocess_config(resolution: int) -> dict:
    """mean = std = 0.5 maps open_clip's [0, 1] input convention back to the store's [-1, 1]."""
    return {"size": resolution, "mode": "RGB", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
            "interpolation": "bilinear", "resize_mode": "squash", "fill_color": 0}


def build_clip(model_cfg: dict, init_temperature: float | None = None) -> nn.Module:
    """An untrained open_clip model (``CLIP``, or ``CustomTextCLIP`` for HF text towers) from its config dict."""
    import open_clip

    cfg = copy.deepcopy(model_cfg)
    custom_text = bool(cfg.pop("custom_text", False)) or "hf_model_name" in cfg.get("text_cfg", {})
    # never fetch tower weights while building: weights come from our own safetensors file
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    if "hf_model_name" in cfg.get("text_cfg", {}):
        cfg["text_cfg"]["hf_model_pretrained"] = False
    if init_temperature is not None:
        cfg["init_logit_scale"] = math.log(1.0 / init_temperature)
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    return cls(**cfg)


def tokenizer_for(model_cfg: dict, model_dir: Path | str | None = None) -> Callable[[list[str]], torch.Tensor]:
    """open_clip's offline ``SimpleTokenizer`` for native text towers; an HF tokenizer read from ``model_dir``
    (as open_clip's ``local-dir:`` does) when the config names one."""
    import open_clip

    text_cfg = model_cfg["text_cfg"]
    if text_cfg.get("hf_tokenizer_name"):
        if model_dir is None:
            raise ClipConfigError("this CLIP config uses a Hugging Face tokenizer; it needs the model directory")
        return open_clip.get_tokenizer(f"local-dir:{model_dir}")
    return open_clip.SimpleTokenizer(context_length=int(text_cfg.get("context_length", 77)))


def scratch_clip(cfg: dict, resolution: int) -> ClipBundle:
    """A from-scratch model built from the ``clip`` config section (call ``seed_everything`` first)."""
    model_cfg = scratch_model_config(cfg, resolution)
    model = build_clip(model_cfg, init_temperature=cfg["init_temperature"])
    return ClipBundle(model, model_cfg, scratch_preprocess_config(resolution), tokenizer_for(model_cfg))


def pretrained_clip(cfg: dict) -> ClipBundle:
    """A pretrained open_clip model named by ``clip.pretrained_path`` (a ``local-dir`` directory with
    ``open_clip_config.json`` + weights, or a weights file of architecture ``clip.pretrained_arch``) or by
    ``clip.pretrained_tag`` (an open_clip hub tag; fails offline with a message naming the key to set)."""
    import open_clip

    path, arch, tag = cfg.get("pretrained_path"), cfg.get("pretrained_arch"), cfg.get("pretrained_tag")
    source_dir = None
    if path:
        path = Path(path)
        if not path.exists():
            raise ClipConfigError(f"config key 'clip.pretrained_path' = '{path}' does not exist; point it to a local "
                                  f"open_clip checkpoint (a directory with {CONFIG_FILE} + weights, or a weights "
                                  "file together with clip.pretrained_arch), or set it to null to train from scratch")
        if path.is_dir():
            if not (path / CONFIG_FILE).is_file():
                raise ClipConfigError(f"config key 'clip.pretrained_path' = '{path}' is a directory without "
                                      f"{CONFIG_FILE} (open_clip's local-dir layout)")
            name, weights, source_dir = f"local-dir:{path}", None, path
            model_cfg = json.loads((path / CONFIG_FILE).read_text())["model_cfg"]
        else:
            if not arch:
                raise ClipConfigError("config key 'clip.pretrained_arch' must name the open_clip architecture "
                                      f"(e.g. ViT-B-16) of the weights file clip.pretrained_path = '{path}'")
            name, weights = arch, str(path)
            model_cfg = _builtin_config(arch)
    elif tag:
        if not arch:
            raise ClipConfigError(f"config key 'clip.pretrained_arch' must name the open_clip architecture for "
                                  f"clip.pretrained_tag = '{tag}'")
        name, weights = arch, tag
        model_cfg = _builtin_config(arch)
    else:
        raise ClipConfigError("no pretrained CLIP configured: set 'clip.pretrained_path' (or clip.pretrained_tag)")
    try:
        model = open_clip.create_model(name, pretrained=weights, load_weights=True)
    except RuntimeError as err:
        if "Failed to download" in str(err):
            raise ClipConfigError(
                f"open_clip could not download the weights of clip.pretrained_tag = '{tag}' (offline?). Download the "
                f"checkpoint where there is network and set config key 'clip.pretrained_path' to the local file or "
                f"directory (and clip.pretrained_tag: null)") from err
        raise ClipConfigError(f"cannot build the pretrained CLIP from clip.pretrained_path/pretrained_tag: {err}"
                              ) from err
    except (OSError, ValueError) as err:
        raise ClipConfigError(f"cannot load config key 'clip.pretrained_path' = '{path}': {err}") from err
    preprocess_cfg = dict(model.visual.preprocess_cfg)
    return ClipBundle(model, model_cfg, preprocess_cfg, tokenizer_for(model_cfg, source_dir), source_dir)


def _builtin_config(arch: str) -> dict:
    import open_clip

    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise ClipConfigError(f"config key 'clip.pretrained_arch' = '{arch}' is not an open_clip architecture; "
                              f"known: {open_clip.list_models()[:20]} …")
    return model_cfg


def attach_squeeze(bundle: ClipBundle, squeeze_cfg: dict) -> ClipBundle:
    """Give the bundle a new AVA-TLS squeeze (config section ``clip.squeeze``) sized for its text tower; call
    ``seed_everything`` first for reproducible initial weights."""
    from cxrgen.models.squeeze import squeeze_from_config

    device = next(bundle.model.parameters()).device
    bundle.squeeze = squeeze_from_config(squeeze_cfg, width=_text_width(bundle.model),
                                         embed_dim=int(bundle.model_cfg["embed_dim"])).to(device)
    return bundle


def save_clip(bundle: ClipBundle, out_dir: Path | str) -> Path:
    """Write ``open_clip_config.json`` + ``model.safetensors`` (+ HF tokenizer files of a pretrained source, + the
    AVA-TLS squeeze in ``squeeze/`` when the bundle has one: :func:`cxrgen.models.squeeze.save_squeeze`)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_FILE).write_text(json.dumps(
        {"model_cfg": bundle.model_cfg, "preprocess_cfg": bundle.preprocess_cfg}, indent=1))
    state = {k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    if bundle.source_dir is not None:  # tokenizer files an HF text tower needs next to the config
        for item in Path(bundle.source_dir).iterdir():
            if item.is_file() and item.name.startswith(("tokenizer", "vocab", "special_tokens", "merges")):
                shutil.copy2(item, out_dir / item.name)
    if bundle.squeeze is not None:
        from cxrgen.models.squeeze import save_squeeze

        save_squeeze(bundle.squeeze, out_dir)
    return out_dir


def load_clip(model_dir: Path | str, device: str | torch.device = "cpu") -> ClipBundle:
    """Load a model directory written by :func:`save_clip`; every weight must match (strict), including the squeeze's
    when the directory has one."""
    from safetensors.torch import load_file

    from cxrgen.models.squeeze import load_squeeze

    model_dir = Path(model_dir)
    if not (model_dir / CONFIG_FILE).is_file() or not (model_dir / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{model_dir} is not a CLIP model directory (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    saved = json.loads((model_dir / CONFIG_FILE).read_text())
    model = build_clip(saved["model_cfg"])
    model.load_state_dict(load_file(str(model_dir / WEIGHTS_FILE)), strict=True)
    model.to(device).eval()
    squeeze = load_squeeze(model_dir)
    if squeeze is not None:
        if squeeze.config["width"] != _text_width(model) or squeeze.config["embed_dim"] != saved["model_cfg"]["embed_dim"]:
            raise ValueError(f"{model_dir}: the squeeze ({squeeze.config}) does not fit the text tower (width "
                             f"{_text_width(model)}, embed_dim {saved['model_cfg']['embed_dim']})")
        squeeze.to(device).eval()
    return ClipBundle(model, saved["model_cfg"], saved["preprocess_cfg"], tokenizer_for(saved["model_cfg"], model_dir),
                      squeeze=squeeze)


def prepare_images(images: torch.Tensor, preprocess_cfg: dict, image_size: int) -> torch.Tensor:
    """(B, 1, H, W) in [-1, 1] → the image tower's input: resized to ``image_size``, grey repeated on 3 channels,
    normalised with the checkpoint's mean/std (identity for scratch models)."""
    if images.shape[-2:] != (image_size, image_size):
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False,
                               antialias=images.shape[-1] > image_size)
    x = (images.expand(-1, 3, -1, -1) + 1.0) * 0.5
    mean = torch.tensor(preprocess_cfg["mean"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess_cfg["std"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def encode_images(bundle: ClipBundle, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    return bundle.model.encode_image(prepare_images(images, bundle.preprocess_cfg, bundle.image_size),
                                     normalize=normalize)


def encode_texts(bundle: ClipBundle, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
    """Report embeddings in the joint space: the tower's own pooling + projection, or, with an AVA-TLS squeeze, the
    squeeze's pooled output (always L2-normalised)."""
    device = next(bundle.model.parameters()).device
    tokens = bundle.tokenizer(list(texts)).to(device)
    if bundle.squeeze is not None:
        pad_id = int(bundle.model_cfg["text_cfg"].get("pad_id", 0))
        return bundle.squeeze.embed(*text_token_features(bundle.model, tokens, pad_id))
    return bundle.model.encode_text(tokens, normalize=normalize)


def text_token_features(model: nn.Module, tokens: torch.Tensor, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token outputs of the text tower's last layer (after ``ln_final``, before pooling and projection) and the
    mask of real tokens (start, words, end-of-text; padding is False)."""
    text = getattr(model, "text", model)  # CustomTextCLIP keeps its tower in .text, CLIP inlines it
    if hasattr(text, "transformer") and hasattr(text, "ln_final"):
        x = text.token_embedding(tokens) + text.positional_embedding[: tokens.shape[1]]
        x = text.transformer(x, attn_mask=text.attn_mask)
        x = text.ln_final(x)
        eot = tokens.argmax(dim=-1)  # end-of-text has the highest id in open_clip's vocabulary (its 'argmax' pool)
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None] <= eot[:, None]
        return x, mask
    if hasattr(text, "transformer") and hasattr(text, "config"):  # HF text tower (e.g. BiomedCLIP's PubMedBERT)
        mask = tokens != text.config.pad_token_id
        out = text.transformer(input_ids=tokens, attention_mask=mask.long())
        return out.last_hidden_state, mask
    raise TypeError(f"unsupported open_clip text tower {type(text).__name__}")


def _text_width(model: nn.Module) -> int:
    text = getattr(model, "text", model)
    if hasattr(text, "ln_final"):
        return int(text.ln_final.normalized_shape[0])
    return int(text.config.hidden_size)


class _Frozen(nn.Module):
    def train(self, mode: bool = True):  # frozen encoders stay in eval mode even inside a module being trained
        return super().train(False)


class TextEncoder(_Frozen):
    """The frozen text tower the LDM cross-attends to (Cheff conditions on per-token embeddings).

    ``encode(texts)`` → (tokens FloatTensor[B, L, D], attention_mask BoolTensor[B, L]), L = ``context_length``,
    D = ``dim``; with an AVA-TLS squeeze (``squeezed``) L is the squeezed length K and the mask is all True.
    ``encode_pooled(texts)`` → projected, L2-normalised embeddings [B, ``pooled_dim``] (the retrieval space;
    MedCoDi-M-style pooled conditioning). ``encode_summary(texts)`` → one width-D vector per text, the pooling the
    contrastive head uses before its projection (end-of-text token; mean of the squeezed tokens; masked mean for
    other towers). Deterministic; no gradients."""

    def __init__(self, bundle: ClipBundle):
        super().__init__()
        self.bundle = bundle
        self.model = bundle.model.eval().requires_grad_(False)
        self.squeeze = bundle.squeeze.eval().requires_grad_(False) if bundle.squeeze is not None else None
        self.squeezed = self.squeeze is not None
        self.dim = _text_width(self.model)
        self.context_length = self.squeeze.length if self.squeezed else bundle.context_length
        self.pooled_dim = int(bundle.model_cfg["embed_dim"])
        self.pad_id = int(bundle.model_cfg["text_cfg"].get("pad_id", 0))

    def _tokens(self, texts: Sequence[str]) -> torch.Tensor:
        return self.bundle.tokenizer([str(t) for t in texts]).to(next(self.model.parameters()).device)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, mask = text_token_features(self.model, self._tokens(texts), self.pad_id)
        return self.squeeze(tokens, mask) if self.squeezed else (tokens, mask)

    @torch.no_grad()
    def encode_pooled(self, texts: Sequence[str]) -> torch.Tensor:
        if self.squeezed:
            return self.squeeze.embed(*text_token_features(self.model, self._tokens(texts), self.pad_id))
        return self.model.encode_text(self._tokens(texts), normalize=True)

    @torch.no_grad()
    def encode_summary(self, texts: Sequence[str]) -> torch.Tensor:
        tokens, mask = self.encode(texts)
        if self.squeezed:
            return tokens.mean(dim=1)
        text = getattr(self.model, "text", self.model)
        if hasattr(text, "ln_final"):  # open_clip's causal tower pools its end-of-text token (the last real one)
            return tokens[torch.arange(len(tokens), device=tokens.device), mask.sum(dim=1) - 1]
        weights = mask.to(tokens.dtype)[..., None]
        return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class ImageEncoder(_Frozen):
    """The frozen image tower: ``encoder(images)`` with images (B, 1, H, W) in [-1, 1] (any size; resized to
    ``image_size``) → L2-normalised embeddings [B, ``dim``]. ``features(images)`` → the tower's intermediate feature
    maps (B, C, h, w) for every block plus the embedding, for an in-domain perceptual loss. Parameters are frozen but
    gradients flow to the input."""

    def __init__(self, bundle: ClipBundle):
        super().__init__()
        self.bundle = bundle
        self.model = bundle.model.eval().requires_grad_(False)
        self.image_size = bundle.image_size
        self.dim = int(bundle.model_cfg["embed_dim"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return encode_images(self.bundle, images, normalize=True)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = prepare_images(images, self.bundle.preprocess_cfg, self.image_size)
        out = self.model.visual.forward_intermediates(x, indices=None, output_fmt="NCHW")
        return [*out["image_intermediates"], F.normalize(out["image_features"], dim=-1)]


def load_text_encoder(model_dir: Path | str, device: str | torch.device = "cpu") -> TextEncoder:
    return TextEncoder(load_clip(model_dir, device))


def load_image_encoder(model_dir: Path | str, device: str | torch.device = "cpu") -> ImageEncoder:
    return ImageEncoder(load_clip(model_dir, device))


# ---- optimisation --------------------------------------------------------------------------------------------------


def clip_optimizer(modules: dict[str, torch.nn.Module], cfg: dict, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over ``modules`` (``cfg``: a ``clip``-like section with ``lr``, ``weight_decay``, ``adam_betas``,
    ``adam_eps``); weight decay on weight matrices only (CLIP/open_clip exclude gains, biases, embeddings, logit scale;
    the squeeze's learned queries count as embeddings). A module named ``squeeze`` trains at its own rate
    ``cfg["squeeze"]["lr"]`` (``clip.squeeze.lr``)."""
    groups = []
    for key, module in modules.items():
        decay, no_decay = [], []
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            excluded = p.ndim < 2 or "embedding" in name or "logit_scale" in name or "bias" in name or name == "queries"
            (no_decay if excluded else decay).append(p)
        lr = cfg["squeeze"]["lr"] if key == "squeeze" else cfg["lr"]
        groups += [{"params": decay, "weight_decay": cfg["weight_decay"], "lr": lr},
                   {"params": no_decay, "weight_decay": 0.0, "lr": lr}]
    groups = [g for g in groups if g["params"]]
    # the fused kernel is ~5x faster on CPU for the 49k-token embedding table and gives the same resumable state
    return torch.optim.AdamW(groups, lr=cfg["lr"], betas=tuple(cfg["adam_betas"]), eps=cfg["adam_eps"], fused=True)


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """LambdaLR factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` (CLIP's schedule)."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ---- contrastive loss and retrieval metrics -------------------------------------------------------------------------


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, *,
                     rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Symmetric InfoNCE over the batch (CLIP; MedCoDi-M §3.2.1 eq. 4): mean of image→text and text→image cross
    entropies with the matching pair as target. Features must be L2-normalised.

    Data parallel (``world_size`` > 1, inside a process group): the features are this rank's rows of the global
    batch. Its images are scored against every rank's texts and its texts against every rank's images (the other
    ranks' rows are the negatives a single process would have), and the loss is the mean over this rank's rows, so
    the mean over the ranks is the global batch's loss. The gathered rows carry gradient back to the rank that
    computed them (:func:`cxrgen.train.collectives.gather_rows`): with the loop's backward step (loss / world size,
    gradients summed over ranks) every rank gets the global loss's gradient."""
    if world_size == 1:
        from open_clip.loss import ClipLoss

        return ClipLoss()(image_features, text_features, logit_scale)
    from cxrgen.train.collectives import gather_rows

    all_images, all_texts = gather_rows(image_features), gather_rows(text_features)
    if len(all_images) != world_size * len(image_features):
        raise ValueError(f"world_size {world_size} does not match the process group ({len(all_images)} rows "
                         f"gathered from {len(image_features)} per rank)")
    targets = torch.arange(len(image_features), device=image_features.device) + rank * len(image_features)
    image_to_text = logit_scale * image_features @ all_texts.T
    text_to_image = logit_scale * text_features @ all_images.T
    return (F.cross_entropy(image_to_text, targets) + F.cross_entropy(text_to_image, targets)) / 2


def recall_at_k(similarity: torch.Tensor, positives: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Fraction of queries (rows) with at least one positive (``positives[q, c]``) among the k highest-scoring
    candidates (columns); ties keep column order."""
    order = torch.sort(similarity, dim=1, descending=True, stable=True).indices
    ranked = positives.gather(1, order)
    return {k: float(ranked[:, :k].any(dim=1).float().mean()) for k in ks}


def chance_recall_at_k(positives: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Expected recall@k of a random ranking: 1 - C(N-P, k) / C(N, k) per query, averaged."""
    n = positives.shape[1]
    p = positives.sum(dim=1).tolist()
    out = {}
    for k in ks:
        miss = [math.comb(n - pi, k) / math.comb(n, k) if k <= n else 0.0 for pi in p]
        out[k] = 1.0 - sum(miss) / len(miss)
    return out


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor, texts: Sequence[str],
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Image→text and text→image recall@k for aligned (image i, report i) pairs. Identical reports count as one
    candidate text (several images may share a report), so a query is right when it finds any matching copy."""
    unique: dict[str, int] = {}
    group = torch.tensor([unique.setdefault(t, len(unique)) for t in texts])
    first = torch.tensor([texts.index(t) for t in unique])
    gallery = text_features[first]
    i2t_pos = group[:, None] == torch.arange(len(unique))[None]
    t2i_pos = i2t_pos.T
    out: dict[str, float] = {"pairs": float(len(texts)), "unique_texts": float(len(unique))}
    for name, sim, pos in (("i2t", image_features @ gallery.T, i2t_pos), ("t2i", gallery @ image_features.T, t2i_pos)):
        for k, v in recall_at_k(sim, pos, ks).items():
            out[f"{name}_recall_at_{k}"] = v
        for k, v in chance_recall_at_k(pos, ks).items():
            out[f"{name}_recall_at_{k}_chance"] = v
    return out


def zero_shot_label_auroc(image_features: torch.Tensor, prompt_features: Mapping[str, torch.Tensor],
                          labels: Mapping[str, np.ndarray], min_per_class: int = 3) -> dict[str, float]:
    """Zero-shot classification, the label-level view of the embedding (CheXzero-style): each image is scored by the
    cosine similarity to the mean of a finding's prompt embeddings; AUROC per finding over images whose label is
    known (NaN = unknown), for findings with at least ``min_per_class`` positives and negatives (the rule of
    :func:`cxrgen.evaluate.metrics.multilabel_scores`; the others are left out); ``macro`` = their mean. Report
    retrieval on a small corpus of mostly normal reports sits near chance even for a model that knows the findings;
    this metric separates the two."""
    from cxrgen.evaluate.metrics import multilabel_scores

    findings = list(prompt_features)
    if not findings:
        return {}
    scores = np.stack([(image_features @ F.normalize(prompt_features[f].mean(0), dim=-1)).numpy() for f in findings],
                      axis=1)
    label_matrix = np.stack([np.asarray(labels[f], dtype=float) for f in findings], axis=1)
    found = multilabel_scores(label_matrix, scores, None, findings, min_per_class=min_per_class)
    out = {finding: entry["auroc"] for finding, entry in found["per_finding"].items()}
    if out:
        out["macro"] = found["auroc"]["macro"]
    return out
