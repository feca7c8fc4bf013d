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

An adapter directory (rule ``train_dkim``) holds ``controlnet/`` (diffusers layout, EMA weights), ``knowledge.safetensors``
(the bank), ``dkim.json`` (findings, sentences, scale, the base LDM it was trained for and its content hash).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrgen.hashing import dir_digest
from cxrgen.labels import CHEXPERT_LABELS, label_column

DKIM_JSON = "dkim.json"
BANK_FILE = "knowledge.safetensors"
CONTROLNET_DIR = "controlnet"
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


class DkimAdapter(nn.Module):
    """The trained part (``controlnet``) plus the frozen knowledge bank; the sampling hook of the generate stage.

    >>> knowledge = adapter.condition(labels)                 # [B, 14] labels (1/0/NaN) or a frame with lbl_* columns
    >>> eps = unet(x, t, encoder_hidden_states=ctx, encoder_attention_mask=mask,
    ...            **adapter.residuals(x, t, knowledge)).sample
    """

    def __init__(self, controlnet, bank: torch.Tensor, findings: Sequence[str], negatives: bool,
                 conditioning_scale: float = 1.0):
        super().__init__()
        if bank.shape[:2] != (len(findings), 3):
            raise ValueError(f"knowledge bank of shape {tuple(bank.shape)} does not fit {len(findings)} findings")
        self.controlnet = controlnet
        self.register_buffer("bank", bank.float())
        self.findings, self.negatives = list(findings), bool(negatives)
        self.conditioning_scale = float(conditioning_scale)

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


def save_dkim(adapter: DkimAdapter, out_dir: Path | str, info: dict) -> None:
    """``controlnet/`` + ``knowledge.safetensors`` + ``dkim.json`` (``info`` adds provenance keys)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    adapter.controlnet.save_pretrained(out_dir / CONTROLNET_DIR)
    save_file({"bank": adapter.bank.detach().cpu().contiguous()}, str(out_dir / BANK_FILE), metadata={"format": "pt"})
    sentences = {f: list(DISEASE_SENTENCES[f]) for f in adapter.findings}
    (out_dir / DKIM_JSON).write_text(json.dumps(
        {"findings": adapter.findings, "negatives": adapter.negatives, "sentences": sentences,
         "conditioning_scale": adapter.conditioning_scale, **info}, indent=1))


def load_dkim(adapter_dir: Path | str, *, base_ldm_dir: Path | str | None = None,
              device: str | torch.device = "cpu") -> DkimAdapter:
    """Strict load of an adapter directory. With ``base_ldm_dir``, refuse an adapter trained for another base UNet
    (:func:`cxrgen.hashing.dir_digest` of ``<base_ldm_dir>/unet``)."""
    from diffusers import ControlNetModel
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / DKIM_JSON).is_file():
        raise FileNotFoundError(f"{adapter_dir} is not a DKIM adapter directory (no {DKIM_JSON}); run rule train_dkim")
    info = json.loads((adapter_dir / DKIM_JSON).read_text())
    if base_ldm_dir is not None:
        current = dir_digest(Path(base_ldm_dir) / "unet")
        if current != info.get("base_unet_sha"):
            raise ValueError(f"the DKIM adapter {adapter_dir} was trained for base UNet {info.get('base_unet_sha')}, "
                             f"but {base_ldm_dir}/unet is {current}; re-run rule train_dkim")
    for finding, pair in info["sentences"].items():
        if tuple(pair) != DISEASE_SENTENCES[finding]:
            raise ValueError(f"{adapter_dir}: the template sentences of {finding!r} changed since training ({pair})")
    path = adapter_dir / CONTROLNET_DIR
    controlnet = ControlNetModel.from_config(ControlNetModel.load_config(path))
    weights = sorted(path.glob("*.safetensors"))
    if len(weights) != 1:
        raise FileNotFoundError(f"expected one safetensors file in {path}, found {len(weights)}")
    controlnet.load_state_dict(load_file(weights[0]), strict=True)
    bank = load_file(str(adapter_dir / BANK_FILE))["bank"]
    adapter = DkimAdapter(controlnet.eval(), bank, info["findings"], info["negatives"], info["conditioning_scale"])
    return adapter.to(device).eval()
