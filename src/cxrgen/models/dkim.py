"""DKIM — Diff-CXR's disease-knowledge injection (arXiv 2410.20165 §3): disease template sentences built from an
image's CheXpert labels, embedded by the frozen text encoder and injected into the frozen, report-conditioned UNet
through a ControlNet-style adapter whose output convolutions start at zero (second training stage).

Knowledge. For every configured finding f an image has a state: positive (label 1: "There is cardiomegaly."),
negative (label 0, only with ``negatives``: "There is no cardiomegaly.") or unknown (NaN, or negative without
``negatives``: the empty text). Each state's sentence is embedded once by the frozen text encoder
(:meth:`cxrgen.models.clip.TextEncoder.encode_summary`, one width-D vector) into a *knowledge bank* [F, 3, D]; an
image's condition is F knowledge tokens [F, D], one per finding, looked up by state. Diff-CXR joins the positives'
sentences into one template ("There is atelectasis. …"); one token per finding keeps that information without padding
and without masks (diffusers' ControlNet has no cross-attention mask).

Adapter. diffusers' :class:`~diffusers.ControlNetModel` built from the base UNet (``from_unet``: a trainable copy of
its encoder and mid block, initialised with the base weights; every output 1×1 convolution zero-initialised):
its cross-attention attends to the F knowledge tokens, and its conditioning input — which for image ControlNets is
the control image — gets the F tokens concatenated, as a 1×1 "image" [B, F·D, 1, 1], so the levels without attention
see the knowledge too. Its down/mid residuals are added to the base UNet's skip connections and mid block
(``down_block_additional_residuals`` / ``mid_block_additional_residual``). At initialisation the residuals are exactly
zero, so the base model's output is unchanged until the adapter has learned something.

Classifier-free guidance: the unconditional branch gets the empty report *and* the all-unknown knowledge (the adapter
is trained with the same joint dropout), so guidance amplifies the disease knowledge together with the report.

An adapter directory (rule ``train_dkim``) is a diffusers model directory of :class:`DkimAdapter`: ``config.json``
(ControlNet config, findings, sentences, scale, and as provenance the base LDM it was trained for and its
:func:`cxrgen.hashing.dir_digest`) and ``diffusion_pytorch_model.safetensors`` (EMA ControlNet weights and the bank).
Directories in the older format (``dkim.json``) are refused with a message to re-run rule ``train_dkim``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from diffusers import ConfigMixin, ModelMixin

from cxrgen.hashing import dir_digest
from cxrgen.labels import CHEXPERT_LABELS, label_column
from cxrgen.models.saving import load_strict

LEGACY_DKIM_JSON = "dkim.json"  # the adapter format before DkimAdapter was a diffusers model
POSITIVE, UNKNOWN, NEGATIVE = 1, 0, -1

# (positive, negative) template sentence per CheXpert observation; None = no negative sentence ("No Finding" = 0
# says only that some other finding is present, which that finding's own token carries).
DISEASE_SENTENCES: dict[str, tuple[str, str | None]] = {
    "No Finding": ("There is no finding.", None),
    "Enlarged Cardiomediastinum": ("There is an enlarged cardiomediastinum.", "There is no enlarged cardiomediastinum."),
    "Cardiomegaly": ("There is cardiomegaly.", "There is no cardiomegaly."),
    "Lung Opacity": ("There is lung opacity.", "There is no lung opacity."),
    "Lung Lesion": ("There is a lung lesion.", "There is no lung lesion."),
    "Edema": ("There is edema.", "There is no edema."),
    "Consolidation": ("There is consolidation.", "There is no consolidation."),
    "Pneumonia": ("There is pneumonia.", "There is no pneumonia."),
    "Atelectasis": ("There is atelectasis.", "There is no atelectasis."),
    "Pneumothorax": ("There is pneumothorax.", "There is no pneumothorax."),
    "Pleural Effusion": ("There is pleural effusion.", "There is no pleural effusion."),
    "Pleural Other": ("There is another pleural abnormality.", "There is no other pleural abnormality."),
    "Fracture": ("There is a fracture.", "There is no fracture."),
    "Support Devices": ("There is a support device.", "There is no support device."),
}


# ---------------------------------------------------------------------------------------------------- templates


def _label_matrix(labels: pd.DataFrame | np.ndarray | torch.Tensor, findings: Sequence[str]) -> np.ndarray:
    """[N, F] float labels (1 / 0 / NaN) of ``findings``, from a frame with lbl_* columns or an [N, 14] array in
    CHEXPERT_LABELS order."""
    if isinstance(labels, pd.DataFrame):
        missing = [label_column(f) for f in findings if label_column(f) not in labels.columns]
        if missing:
            raise KeyError(f"label columns {missing} are missing")
        return labels[[label_column(f) for f in findings]].to_numpy(dtype=np.float32)
    values = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.float32)
    if values.ndim == 1:
        values = values[None]
    if values.shape[1] != len(CHEXPERT_LABELS):
        raise ValueError(f"label arrays need the {len(CHEXPERT_LABELS)} CheXpert columns; got {values.shape}")
    return values[:, [CHEXPERT_LABELS.index(f) for f in findings]]


def knowledge_states(labels: pd.DataFrame | np.ndarray | torch.Tensor, findings: Sequence[str],
                     negatives: bool) -> np.ndarray:
    """[N, F] int8 states per finding: 1 positive, -1 negative (only with ``negatives`` and a negative sentence),
    0 unknown (NaN, uncertain mapped to NaN by the label policy, or a negative that is not injected)."""
    values = _label_matrix(labels, findings)
    states = np.zeros(values.shape, dtype=np.int8)
    states[values == 1.0] = POSITIVE
    if negatives:
        has_negative = np.array([DISEASE_SENTENCES[f][1] is not None for f in findings])
        states[(values == 0.0) & has_negative[None]] = NEGATIVE
    return states


def knowledge_sentences(states_row: Sequence[int], findings: Sequence[str]) -> list[str]:
    """The template sentences of one image (findings order), e.g. ["There is cardiomegaly.", "There is no edema."]."""
    out = []
    for finding, state in zip(findings, states_row, strict=True):
        if state == POSITIVE:
            out.append(DISEASE_SENTENCES[finding][0])
        elif state == NEGATIVE:
            out.append(DISEASE_SENTENCES[finding][1])
    return out


def knowledge_report(labels: pd.DataFrame | np.ndarray | torch.Tensor, findings: Sequence[str] = CHEXPERT_LABELS,
                     negatives: bool = False) -> list[str]:
    """Diff-CXR's disease template per image: its sentences joined ("There is atelectasis. There is edema."; "" when
    nothing is known)."""
    return [" ".join(knowledge_sentences(row, findings)) for row in knowledge_states(labels, findings, negatives)]


def build_knowledge_bank(text_encoder, findings: Sequence[str]) -> torch.Tensor:
    """[F, 3, D]: for each finding the embedding of its negative sentence, of the empty text (unknown) and of its
    positive sentence (index = state + 1), from ``text_encoder.encode_summary`` (frozen)."""
    unknown = ""
    sentences = [[DISEASE_SENTENCES[f][1] or unknown, unknown, DISEASE_SENTENCES[f][0]] for f in findings]
    flat = [s for row in sentences for s in row]
    unique = sorted(set(flat))
    with torch.no_grad():
        vectors = text_encoder.encode_summary(unique).detach().cpu().float()
    lookup = {s: vectors[i] for i, s in enumerate(unique)}
    return torch.stack([torch.stack([lookup[s] for s in row]) for row in sentences])


# ---------------------------------------------------------------------------------------------------- adapter


@dataclass
class Knowledge:
    """An adapter condition: knowledge tokens [B, F, D] (cross-attention) and their concatenation [B, F·D, 1, 1]."""

    tokens: torch.Tensor

    @property
    def pooled(self) -> torch.Tensor:
        return self.tokens.flatten(1)[:, :, None, None]

    def to(self, device) -> Knowledge:
        return Knowledge(self.tokens.to(device))

    def __len__(self) -> int:
        return len(self.tokens)

    @staticmethod
    def cat(parts: Sequence[Knowledge]) -> Knowledge:
        return Knowledge(torch.cat([p.tokens for p in parts]))


def build_controlnet(unet, n_findings: int, cond_channels: int):
    """A ControlNetModel copying ``unet``'s encoder and mid block (weights included), zero-initialised outputs, whose
    conditioning input takes the concatenated knowledge tokens as a [B, F·D, 1, 1] map."""
    from diffusers import ControlNetModel

    dim = int(unet.config.cross_attention_dim)
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(int(cond_channels),),
                                     conditioning_channels=n_findings * dim)


class DkimAdapter(ModelMixin, ConfigMixin):
    """The trained part (``controlnet``) plus the frozen knowledge bank; the sampling hook of the generate stage.

    >>> knowledge = adapter.condition(labels)                 # [B, 14] labels (1/0/NaN) or a frame with lbl_* columns
    >>> eps = unet(x, t, encoder_hidden_states=ctx, encoder_attention_mask=mask,
    ...            **adapter.residuals(x, t, knowledge)).sample

    A diffusers model: ``save_pretrained`` / ``from_pretrained`` write and read ``config.json`` (the ControlNet's
    config, findings, negatives, scale, template sentences, provenance) and one safetensors file (ControlNet weights
    and the bank). Built either from a ``controlnet`` and its ``bank`` (training) or, as ``from_config`` does, from
    ``controlnet_config`` with an empty bank that the weights file then fills.
    """

    ignore_for_config = ["controlnet", "bank"]

    def __init__(self, controlnet=None, bank: torch.Tensor | None = None, findings: Sequence[str] = CHEXPERT_LABELS,
                 negatives: bool = False, conditioning_scale: float = 1.0, controlnet_config: dict | None = None,
                 sentences: dict | None = None, provenance: dict | None = None):
        super().__init__()
        from diffusers import ControlNetModel

        if (controlnet is None) == (controlnet_config is None):
            raise ValueError("pass either a controlnet or a controlnet_config")
        if controlnet is None:
            controlnet = ControlNetModel.from_config(controlnet_config)
        findings = list(findings)
        templates = {f: list(DISEASE_SENTENCES[f]) for f in findings}
        if sentences is not None:
            changed = sorted(f for f in set(templates) | set(sentences)
                             if [*sentences.get(f, [])] != templates.get(f))
            if changed:
                raise ValueError(f"the template sentences of {changed} changed since this adapter was trained; "
                                 "re-run rule train_dkim")
        width = int(controlnet.config.cross_attention_dim)
        if bank is None:
            bank = torch.zeros(len(findings), 3, width)
        if tuple(bank.shape) != (len(findings), 3, width):
            raise ValueError(f"knowledge bank of shape {tuple(bank.shape)} does not fit {len(findings)} findings "
                             f"of width {width}")
        self.controlnet = controlnet
        self.register_buffer("bank", bank.float())
        self.register_to_config(findings=findings, negatives=bool(negatives), conditioning_scale=float(conditioning_scale),
                                controlnet_config=_public(controlnet.config), sentences=templates,
                                provenance=dict(provenance or {}))

    @property
    def findings(self) -> list[str]:
        return list(self.config.findings)

    @property
    def negatives(self) -> bool:
        return bool(self.config.negatives)

    @property
    def conditioning_scale(self) -> float:
        return float(self.config.conditioning_scale)

    def states(self, labels) -> torch.Tensor:
        return torch.from_numpy(knowledge_states(labels, self.findings, self.negatives).astype(np.int64))

    def condition_from_states(self, states: torch.Tensor) -> Knowledge:
        """[B, F] states (1 / 0 / -1) → knowledge tokens."""
        states = states.to(self.bank.device).long()
        index = torch.arange(len(self.findings), device=self.bank.device)
        return Knowledge(self.bank[index[None, :], states + 1])

    def condition(self, labels) -> Knowledge:
        return self.condition_from_states(self.states(labels))

    def null_condition(self, batch_size: int) -> Knowledge:
        """All findings unknown: the unconditional branch of classifier-free guidance."""
        return self.condition_from_states(torch.zeros(batch_size, len(self.findings), dtype=torch.long))

    def residuals(self, latents: torch.Tensor, t, knowledge: Knowledge) -> dict[str, object]:
        """Keyword arguments for ``UNet2DConditionModel.forward``: the adapter's down/mid residuals."""
        device = latents.device
        out = self.controlnet(latents, t, encoder_hidden_states=knowledge.tokens.to(device),
                              controlnet_cond=knowledge.pooled.to(device),
                              conditioning_scale=self.conditioning_scale, return_dict=False)
        down, mid = out
        return {"down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}


# ---------------------------------------------------------------------------------------------------- save / load


def _public(config) -> dict:
    """A diffusers config without its private (``_``-prefixed: class name, version, load path) entries."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def save_dkim(adapter: DkimAdapter, out_dir: Path | str, provenance: dict) -> None:
    """``adapter.save_pretrained(out_dir)`` with ``provenance`` (base LDM and its hash, text encoder, training config,
    …) recorded in its config."""
    adapter.register_to_config(provenance={**adapter.config.provenance, **provenance})
    adapter.save_pretrained(out_dir, safe_serialization=True)


def load_dkim(adapter_dir: Path | str, *, base_ldm_dir: Path | str | None = None,
              device: str | torch.device = "cpu") -> DkimAdapter:
    """Strict load of an adapter directory. With ``base_ldm_dir``, refuse an adapter trained for another base UNet
    (:func:`cxrgen.hashing.dir_digest` of ``<base_ldm_dir>/unet``)."""
    adapter_dir = Path(adapter_dir)
    if (adapter_dir / LEGACY_DKIM_JSON).is_file():
        raise ValueError(f"{adapter_dir} is a DKIM adapter in the old format ({LEGACY_DKIM_JSON}, before adapters "
                         "were diffusers models); re-run rule train_dkim")
    adapter = load_strict(DkimAdapter, adapter_dir, "run rule train_dkim")
    if base_ldm_dir is not None:
        trained_for = adapter.config.provenance.get("base_unet_sha")
        current = dir_digest(Path(base_ldm_dir) / "unet")
        if current != trained_for:
            raise ValueError(f"the DKIM adapter {adapter_dir} was trained for base UNet {trained_for}, "
                             f"but {base_ldm_dir}/unet is {current}; re-run rule train_dkim")
    return adapter.to(device).eval()
