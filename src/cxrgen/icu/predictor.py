"""DDL-CXR's ICU outcome predictors (arXiv 2410.17918, prediction stage; public code ``FusionTokens3inputAttnFuse``):
one fusion architecture for the three arms, which differ only in the tokens they are given:

- ``ehr`` (Uni-EHR): the EHR tokens of an :class:`~cxrgen.icu.ehr_encoder.EhrEncoder`;
- ``ehr_last_cxr``: + tokens of the last CXR latent carried forward;
- ``ddl_cxr``: + tokens of the last CXR latent + tokens of the generated up-to-date latent (rule generate_ddl_latents).

A latent becomes tokens by a small conv patchifier (Conv2d with kernel = stride = patch) + a learned patch position;
every token gets its modality's learned embedding; a fusion cls token and a pre-norm transformer over the concatenated
tokens (key-padding mask = the EHR window) feed a linear head with one logit per task (mortality, then the 25
phenotypes). Every arm builds every module (same initial weights for the same seed), so the arms differ in inputs
only.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from cxrgen.icu.ehr_encoder import EhrEncoder

# arm -> (uses the last CXR latent, uses the generated latent)
ARMS: dict[str, tuple[bool, bool]] = {"ehr": (False, False), "ehr_last_cxr": (True, False), "ddl_cxr": (True, True)}
MODALITIES = ("ehr", "last_cxr", "generated_cxr")


def arm_inputs(arm: str) -> tuple[bool, bool]:
    if arm not in ARMS:
        raise ValueError(f"ICU predictor arm {arm!r}; allowed: {list(ARMS)}")
    return ARMS[arm]


class LatentPatchifier(nn.Module):
    """[B, C, h, w] latent -> [B, (h/p)·(w/p), d] tokens (conv patch embedding + learned patch positions)."""

    def __init__(self, channels: int, size: int, patch: int, d_model: int):
        super().__init__()
        if size % patch:
            raise ValueError(f"icu.predictor.patch_size {patch} does not divide the latent size {size}")
        self.proj = nn.Conv2d(channels, d_model, kernel_size=patch, stride=patch)
        self.position = nn.Parameter(torch.zeros(1, (size // patch) ** 2, d_model))
        nn.init.normal_(self.position, std=0.02)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.proj(latent).flatten(2).transpose(1, 2) + self.position


class IcuPredictor(ModelMixin, ConfigMixin):
    """Attention fusion of EHR, last-CXR and generated-CXR tokens (see the module docstring)."""

    @register_to_config
    def __init__(self, ehr: dict | None = None, latent_channels: int = 4, latent_size: int = 28, patch_size: int = 4,
                 fusion_layers: int = 1, fusion_heads: int = 4, fusion_ff_dim: int = 256, dropout: float = 0.1,
                 n_outputs: int = 26, use_last_cxr: bool = False, use_generated: bool = False):
        super().__init__()
        self.ehr_encoder = EhrEncoder(**(ehr or {}))
        d_model = self.ehr_encoder.config.d_model
        self.last_patches = LatentPatchifier(latent_channels, latent_size, patch_size, d_model)
        self.generated_patches = LatentPatchifier(latent_channels, latent_size, patch_size, d_model)
        self.modality = nn.Parameter(torch.zeros(len(MODALITIES), d_model))
        self.fusion_cls = nn.Parameter(torch.zeros(1, 1, d_model))
        nn.init.normal_(self.modality, std=0.02)
        nn.init.normal_(self.fusion_cls, std=0.02)
        self.fusion = nn.ModuleList([
            nn.TransformerEncoderLayer(d_model, fusion_heads, fusion_ff_dim, dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(fusion_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_outputs)

    def forward(self, values: torch.Tensor, static: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                last_latent: torch.Tensor | None = None, generated_latent: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, n_outputs]. The latents this arm does not use are ignored (may be None)."""
        encoding = self.ehr_encoder(values, static, start, end)
        batch = values.shape[0]
        tokens = [self.fusion_cls.expand(batch, 1, -1), encoding.tokens + self.modality[0]]
        valid = [torch.ones(batch, 1, dtype=torch.bool, device=values.device), encoding.mask]
        for used, latent, patchify, index in ((self.config.use_last_cxr, last_latent, self.last_patches, 1),
                                              (self.config.use_generated, generated_latent, self.generated_patches, 2)):
            if not used:
                continue
            if latent is None:
                raise ValueError(f"this predictor fuses the {MODALITIES[index]} latent: pass it")
            patches = patchify(latent) + self.modality[index]
            tokens.append(patches)
            valid.append(torch.ones(patches.shape[:2], dtype=torch.bool, device=values.device))
        x, mask = torch.cat(tokens, dim=1), torch.cat(valid, dim=1)
        for layer in self.fusion:
            x = layer(x, src_key_padding_mask=~mask)
        return self.head(self.norm(x[:, 0]))


def build_predictor(cfg: dict, arm: str, *, n_features: int, n_static: int, max_hours: int, latent_channels: int,
                    latent_size: int, n_outputs: int) -> IcuPredictor:
    use_last, use_generated = arm_inputs(arm)
    enc = cfg["ehr_encoder"]
    ehr = {"n_features": n_features, "n_static": n_static, "max_hours": max_hours, "d_model": int(enc["d_model"]),
           "n_heads": int(enc["n_heads"]), "n_layers": int(enc["n_layers"]), "ff_dim": int(enc["ff_dim"]),
           "dropout": float(enc["dropout"])}
    fusion = cfg["fusion"]
    return IcuPredictor(ehr=ehr, latent_channels=latent_channels, latent_size=latent_size,
                        patch_size=int(fusion["patch_size"]), fusion_layers=int(fusion["layers"]),
                        fusion_heads=int(fusion["heads"]), fusion_ff_dim=int(fusion["ff_dim"]),
                        dropout=float(fusion["dropout"]), n_outputs=n_outputs, use_last_cxr=use_last,
                        use_generated=use_generated)


def positive_class_weights(targets: np.ndarray, splits: np.ndarray, train_splits=("train",)) -> np.ndarray:
    """Per-task BCE pos_weight = negatives / positives among the training stays only (1 for a task without
    positives or negatives there); the public code hard-codes these numbers."""
    train = np.isin(splits, list(train_splits))
    y = np.asarray(targets, dtype=np.float64)[train]
    positives, negatives = (y == 1).sum(0), (y == 0).sum(0)
    weights = np.ones(y.shape[1])
    ok = (positives > 0) & (negatives > 0)
    weights[ok] = negatives[ok] / positives[ok]
    return weights.astype(np.float32)


class StayData:
    """The prediction stays in memory: EHR series (+ window), the latents the arm uses, targets [N, K] and splits."""

    def __init__(self, *, values, static, rows, start, end, targets, splits, last_latent=None,
                 generated_latent=None):
        self.values, self.static = values, static
        self.rows = torch.as_tensor(rows, dtype=torch.long)
        self.start, self.end = torch.as_tensor(start, dtype=torch.long), torch.as_tensor(end, dtype=torch.long)
        self.targets = torch.tensor(np.array(targets, dtype=np.float32))
        self.splits = np.asarray(splits)
        self.last_latent, self.generated_latent = last_latent, generated_latent

    def __len__(self) -> int:
        return len(self.rows)

    def inputs(self, indices, device) -> dict:
        idx = torch.as_tensor(indices, dtype=torch.long)
        rows = self.rows[idx]
        out = {"values": self.values[rows].to(device), "static": self.static[rows].to(device),
               "start": self.start[idx].to(device), "end": self.end[idx].to(device)}
        for name in ("last_latent", "generated_latent"):
            latents = getattr(self, name)
            out[name] = latents[idx].to(device) if latents is not None else None
        return out


def task_loss(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """Mean of the mortality BCE (column 0) and the mean phenotype BCE (the rest), with per-task pos_weight."""
    losses = nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight,
                                                             reduction="none").mean(0)
    return losses[0] if len(losses) == 1 else 0.5 * (losses[0] + losses[1:].mean())


class PredictorTrainer:
    """Model, optimiser and train step of one predictor arm on the training stays of :class:`StayData`."""

    def __init__(self, cfg: dict, arm: str, data: StayData, *, latent_shape: tuple[int, int, int]):
        self.cfg, self.arm, self.data = cfg, arm, data
        self.train_index = np.flatnonzero(np.isin(data.splits, list(cfg["train_splits"])))
        if len(self.train_index) == 0:
            raise ValueError(f"no training stays in splits {cfg['train_splits']}")
        self.pos_weight = torch.from_numpy(positive_class_weights(data.targets.numpy(), data.splits,
                                                                  tuple(cfg["train_splits"])))
        self.model = build_predictor(cfg, arm, n_features=int(data.values.shape[-1]),
                                     n_static=int(data.static.shape[-1]), max_hours=int(data.values.shape[1]),
                                     latent_channels=int(latent_shape[0]), latent_size=int(latent_shape[-1]),
                                     n_outputs=int(data.targets.shape[1]))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=float(cfg["lr"]),
                                           weight_decay=float(cfg["weight_decay"]))

    def train_step(self, positions: list[int], ctx) -> dict[str, float]:
        idx = self.train_index[positions]
        with ctx.autocast():
            logits = self.model(**self.data.inputs(idx, ctx.device))
        loss = task_loss(logits.float(), self.data.targets[idx].to(ctx.device), self.pos_weight.to(ctx.device))
        grad_norm = ctx.backward_step(loss, self.model, self.optimizer, self.cfg["grad_clip"])
        return {"loss": float(loss.detach()), "grad_norm": grad_norm}

    def fit(self, loop, state_dir, *, on_log=None, extra_state=None):
        """Run (or resume) training; no random draws in the step (dropout uses the loop's per-rank RNG), so the data
        parallel ranks only need their slice of each global batch."""
        from cxrgen.train.loop import index_batches, run_training

        return run_training(loop, modules={"predictor": self.model}, optimizers={"predictor": self.optimizer},
                            loader_for=index_batches(loop, len(self.train_index), self.cfg["batch_size"]),
                            train_step=self.train_step, state_dir=state_dir, on_log=on_log, extra_state=extra_state,
                            desc=f"train_icu_predictor:{self.arm}", distributed_ready=True)

    @torch.no_grad()
    def predict(self, indices: np.ndarray, batch_size: int) -> np.ndarray:
        """Probabilities [len(indices), K] in eval mode."""
        device = next(self.model.parameters()).device
        self.model.eval()
        out = []
        for first in range(0, len(indices), batch_size):
            idx = indices[first:first + batch_size]
            out.append(torch.sigmoid(self.model(**self.data.inputs(idx, device))).float().cpu())
        self.model.train()
        return torch.cat(out).numpy() if out else np.zeros((0, self.data.targets.shape[1]), np.float32)
