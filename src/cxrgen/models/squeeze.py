"""AVA-TLS information squeeze (Diff-CXR §3, arXiv 2410.20165): a module after the text tower that compresses a
report's token embeddings [B, L, D] (+ padding mask) to a fixed, shorter length K (77 in the paper).

Design: K learned query vectors cross-attend to the real (unmasked) tokens of the report, followed by an MLP, in
``layers`` pre-norm blocks, then a final LayerNorm (so the squeezed tokens have the scale of the tower's ``ln_final``
outputs that the LDM was built for). Every squeezed token is valid: the output mask is all True. The module is trained
with the symmetric contrastive (InfoNCE) loss between its pooled output and the image embedding — mean of the K
squeezed tokens, a linear projection to the joint space, L2 normalisation (:meth:`InformationSqueeze.pooled`) — so the
kept content is the image-relevant part of the report. The LDM then cross-attends to the K squeezed tokens.

The module is a diffusers model (``ModelMixin`` + ``ConfigMixin``): a CLIP model directory with a squeeze holds it in
``squeeze/`` (``config.json`` + ``diffusion_pytorch_model.safetensors``, ``InformationSqueeze.from_pretrained``) next
to open_clip's own files (which plain ``open_clip.create_model("local-dir:…")`` still loads, without the squeeze).
Directories in the older format (``squeeze.json`` + ``squeeze.safetensors``) are refused with a message to re-run
rule ``train_clip_avatls``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from cxrgen.models.saving import load_strict

SQUEEZE_DIR = "squeeze"
LEGACY_SQUEEZE_FILES = ("squeeze.json", "squeeze.safetensors")  # the format before the squeeze was a diffusers model


class _SqueezeBlock(nn.Module):
    """Pre-norm cross-attention (queries → report tokens) + MLP, each with a residual connection."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ln_query = nn.LayerNorm(width)
        self.ln_tokens = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_mlp = nn.LayerNorm(width)
        hidden = int(round(width * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        kv = self.ln_tokens(tokens)
        attended, _ = self.attn(self.ln_query(queries), kv, kv, key_padding_mask=padding, need_weights=False)
        x = queries + attended
        return x + self.mlp(self.ln_mlp(x))


class InformationSqueeze(ModelMixin, ConfigMixin):
    """[B, L, D] report tokens + mask [B, L] (True = real token) → [B, K, D] squeezed tokens + all-True mask [B, K].

    ``width`` D = the text tower's width, ``length`` K, ``embed_dim`` = the joint image–text space (for
    :meth:`pooled`). Build after ``seed_everything`` for reproducible initial weights.
    """

    @register_to_config
    def __init__(self, *, width: int, length: int, heads: int, layers: int, mlp_ratio: float, embed_dim: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"config key 'clip.squeeze.heads' = {heads} must divide the text width {width}")
        self.queries = nn.Parameter(torch.randn(length, width) * width**-0.5)
        self.blocks = nn.ModuleList(_SqueezeBlock(width, heads, mlp_ratio) for _ in range(layers))
        self.ln_out = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=width**-0.5)

    @property
    def length(self) -> int:
        return int(self.config.length)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tokens.ndim != 3 or mask.shape != tokens.shape[:2]:
            raise ValueError(f"expected tokens [B, L, D] and mask [B, L]; got {tuple(tokens.shape)} / "
                             f"{tuple(mask.shape)}")
        padding = ~mask.bool()
        padding[:, 0] &= ~padding.all(dim=1)  # a row without any real token attends to its first position
        x = self.queries.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        for block in self.blocks:
            x = block(x, tokens, padding)
        x = self.ln_out(x)
        return x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)

    def pooled(self, squeezed: torch.Tensor) -> torch.Tensor:
        """The report's embedding in the joint space: mean over the K squeezed tokens → projection → L2 norm."""
        return F.normalize(self.proj(squeezed.mean(dim=1)), dim=-1)

    def embed(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` then :meth:`pooled`: what the contrastive loss compares with the image embedding."""
        return self.pooled(self(tokens, mask)[0])


def squeeze_from_config(cfg: dict, *, width: int, embed_dim: int) -> InformationSqueeze:
    """A new module from the ``clip.squeeze`` config section, for a text tower of ``width`` and joint ``embed_dim``."""
    return InformationSqueeze(width=width, length=int(cfg["length"]), heads=int(cfg["heads"]),
                              layers=int(cfg["layers"]), mlp_ratio=float(cfg["mlp_ratio"]), embed_dim=embed_dim)


def save_squeeze(module: InformationSqueeze, model_dir: Path | str) -> None:
    """``module.save_pretrained(<model_dir>/squeeze)``."""
    module.save_pretrained(Path(model_dir) / SQUEEZE_DIR, safe_serialization=True)


def load_squeeze(model_dir: Path | str) -> InformationSqueeze | None:
    """The squeeze saved in a CLIP model directory (strict), or None when the directory has none."""
    model_dir = Path(model_dir)
    legacy = [name for name in LEGACY_SQUEEZE_FILES if (model_dir / name).is_file()]
    if legacy:
        raise ValueError(f"{model_dir} holds an AVA-TLS squeeze in the old format ({', '.join(legacy)}, before the "
                         "squeeze was a diffusers model); re-run rule train_clip_avatls")
    if not (model_dir / SQUEEZE_DIR).exists():
        return None
    return load_strict(InformationSqueeze, model_dir / SQUEEZE_DIR, "re-run rule train_clip_avatls")
