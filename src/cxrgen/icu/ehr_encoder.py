"""The EHR time-series encoder of DDL-CXR (Yao, Liu et al., arXiv 2410.17918, f_cond^EHR of the LDM stage).

Input: the cohort's hourly series (``ehr.npz``: ``values`` [N, T, 76] = 12 normalised continuous channels, one-hot
categoricals and 17 observed masks; ``static`` [N, 2] = age/100, sex), plus per sample the window of hourly bins
``[start, end)`` the model may see (the bins between the prior image and the target time). Bins outside the window are
key-padding-masked *and* zeroed at the input and the output, so nothing outside the window can reach any output.

Tokens: ``[cls, static, bin_0 … bin_{T-1}]``, each bin = linear embedding of its 76 features + a learned embedding of
its distance to the window's end in hours (how long before the target time it was recorded), the static token = a
linear embedding of (age, sex). A pre-norm transformer encoder (paper code: 1 layer, d_model 128, 8 heads, feed-forward
256, dropout 0.2, ``configs/latent-diffusion/LDM_train.yaml`` cond_stage_config) maps them to ``tokens`` [B, T+2, d]
(the LDM's cross-attention context, with ``mask`` [B, T+2], True = valid) and the pooled ``cls`` [B, d] (final
LayerNorm of the cls token; the paper's label head reads it). LayerNorm instead of the paper code's BatchNorm: BatchNorm
mixes samples (and masked bins) of a batch into each output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


@dataclass
class EhrEncoding:
    tokens: torch.Tensor  # [B, T+2, d], zero where ``mask`` is False
    mask: torch.Tensor  # [B, T+2] bool, True = a valid key (cls, static, in-window bins)
    cls: torch.Tensor  # [B, d]


def window_mask(n_bins: int, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: bin k is inside [start_b, end_b)."""
    hours = torch.arange(n_bins, device=start.device)[None, :]
    return (hours >= start[:, None]) & (hours < end[:, None])


class EhrEncoder(ModelMixin, ConfigMixin):
    """Time-series transformer over hourly EHR bins with a per-sample window mask (see the module docstring)."""

    @register_to_config
    def __init__(self, n_features: int = 76, n_static: int = 2, max_hours: int = 128, d_model: int = 128,
                 n_heads: int = 8, n_layers: int = 1, ff_dim: int = 256, dropout: float = 0.2):
        super().__init__()
        self.embed = nn.Linear(n_features, d_model)
        self.embed_static = nn.Linear(n_static, d_model)
        self.hour_position = nn.Embedding(max_hours, d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.type_embedding = nn.Parameter(torch.zeros(3, d_model))  # cls, static, bin
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.type_embedding, std=0.02)
        nn.init.normal_(self.hour_position.weight, std=0.02)
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(d_model, n_heads, ff_dim, dropout, activation="gelu", batch_first=True,
                                       norm_first=True)
            for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)

    def forward(self, values: torch.Tensor, static: torch.Tensor, start: torch.Tensor,
                end: torch.Tensor) -> EhrEncoding:
        """``values`` [B, T, F], ``static`` [B, S], ``start``/``end`` [B] integer bins (window [start, end))."""
        batch, n_bins, _ = values.shape
        start, end = start.long().to(values.device), end.long().to(values.device)
        inside = window_mask(n_bins, start, end)
        keep = inside[..., None].to(values.dtype)
        hours_before_end = (end[:, None] - 1 - torch.arange(n_bins, device=values.device)[None, :])
        hours_before_end = hours_before_end.clamp(0, self.config.max_hours - 1)
        bins = (self.embed(values * keep) + self.hour_position(hours_before_end) + self.type_embedding[2]) * keep
        head = torch.cat([self.cls_token.expand(batch, 1, -1) + self.type_embedding[0],
                          (self.embed_static(static) + self.type_embedding[1])[:, None, :]], dim=1)
        x = torch.cat([head, bins], dim=1)
        valid = torch.cat([torch.ones(batch, 2, dtype=torch.bool, device=values.device), inside], dim=1)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=~valid)
        x = self.norm(x) * valid[..., None].to(x.dtype)
        return EhrEncoding(tokens=x, mask=valid, cls=x[:, 0])
