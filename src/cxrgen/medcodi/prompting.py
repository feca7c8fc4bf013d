"""MedCoDi-M / XGeM multi-prompt conditioning (Molino et al., arXiv 2501.04614, §2.2 "Multi-Prompt Training").

For an output modality (here a view: frontal or lateral X-ray) the prompt modalities are the OTHER modalities of the
study (frontal → {lateral, report}; lateral → {frontal, report}). At every training step each study draws, uniformly,
one non-empty subset of the prompt modalities it actually has (paper §2.2: with n modalities there are 2ⁿ − 1
combinations, each drawn with probability 1/(2ⁿ − 1); the public code, ``DataLoader.py::MultiPrompt_MIMIC_CXR_Dataset``
draws uniformly from {other view, text, both} and falls back to the text when the study has no other view). The drawn
embeddings are linearly combined into one conditioning vector (paper Eq. 1): the mean of the present L2-normalised
embeddings, NOT re-normalised (the code's ``interpolate_embeddings``: weights [1, 1] / their sum, no normalisation
afterwards; the mean of two unit vectors is shorter the further apart they are).

``single`` prompting (the paper's MedCoDi ablation, §3.4) conditions on the report only.

Classifier-free guidance: with probability ``cfg_dropout`` (paper code: 10 %) a condition is replaced by a fixed null
vector. The code uses precomputed, untrained "empty" embeddings (``embeddings/empty_embeddings.npy``, one per prompt
type, never released); the prompt encoders' embeddings of empty inputs are not part of this stage's inputs, so the null
condition here is the fixed zero vector: also untrained, and distinct from every real condition (those are averages
of unit vectors, never zero unless two opposite embeddings cancel).

All draws are made with the training step's generator for the step's GLOBAL batch, in a fixed order (subset uniforms,
then CFG drops), and each data-parallel rank keeps its rows, so the ranks together use the single-process draws.
Multi and single prompting consume the same random numbers: two runs with the same seed differ only in the
conditions drawn.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cxrgen.models.diffusion import cfg_drop_mask

VIEWS = ("frontal", "lateral")
MODALITIES = ("frontal", "lateral", "report")
PROMPTINGS = ("multi", "single")


def prompt_modalities(view: str, prompting: str) -> tuple[str, ...]:
    """The modalities that prompt the LDM of ``view``: the other two (multi) or the report alone (single)."""
    if view not in VIEWS:
        raise ValueError(f"medcodi view = {view!r}; allowed: {list(VIEWS)}")
    if prompting not in PROMPTINGS:
        raise ValueError(f"medcodi prompting = {prompting!r}; allowed: {list(PROMPTINGS)}")
    if prompting == "single":
        return ("report",)
    return tuple(m for m in MODALITIES if m != view)


def nonempty_subsets(n: int) -> list[tuple[int, ...]]:
    """The 2ⁿ − 1 non-empty subsets of range(n), by size then lexicographically."""
    return [c for k in range(1, n + 1) for c in itertools.combinations(range(n), k)]


def subset_choices(available: np.ndarray) -> list[list[tuple[int, ...]]]:
    """Per row of ``available`` [N, M] (bool), the non-empty subsets of its available modalities (empty list: none)."""
    return [[s for s in nonempty_subsets(available.shape[1]) if all(row[i] for i in s)] for row in available]


def subset_masks(choices: list[list[tuple[int, ...]]], uniforms: torch.Tensor, n_modalities: int) -> torch.Tensor:
    """[b, M] bool: row i takes subset ``choices[i][floor(u_i · k_i)]`` (uniform over its k_i subsets); rows without a
    choice get no modality."""
    masks = torch.zeros((len(choices), n_modalities), dtype=torch.bool)
    for row, (options, u) in enumerate(zip(choices, uniforms.tolist(), strict=True)):
        if options:
            masks[row, list(options[min(int(u * len(options)), len(options) - 1)])] = True
    return masks


def combine(embeddings: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean of the present, L2-normalised embeddings (paper Eq. 1, code ``interpolate_embeddings``), not re-normalised.
    ``embeddings`` [b, M, D] (absent rows may hold anything, NaN included), ``present`` [b, M] bool -> [b, D]; a row
    with nothing present is the zero vector."""
    unit = torch.nn.functional.normalize(torch.nan_to_num(embeddings.float()), dim=-1)
    weights = present.float()
    total = (unit * weights[..., None]).sum(dim=1)
    return total / weights.sum(dim=1, keepdim=True).clamp(min=1.0)


@dataclass
class PromptDraw:
    """One step's conditions for this rank's rows: the drawn subsets [b, M], the CFG drops [b] and the condition
    vectors [b, D] (zero where dropped)."""

    subsets: torch.Tensor
    drop: torch.Tensor
    conditions: torch.Tensor


class MultiPromptConditioner:
    """The :class:`cxrgen.train.latent_diffusion.Conditioner` of the MedCoDi-M view LDMs: one cross-attention token
    (the combined, pooled prompt embedding, as the paper's code) per item.

    ``embeddings`` [N, M, D] of the prompt ``modalities`` per training item (NaN rows = modality absent), ``prompting``
    multi (uniform non-empty subset of the available ones) or single (the report, which must then be available)."""

    def __init__(self, embeddings: np.ndarray | torch.Tensor, modalities: Sequence[str], prompting: str,
                 cfg_dropout: float):
        if prompting not in PROMPTINGS:
            raise ValueError(f"medcodi prompting = {prompting!r}; allowed: {list(PROMPTINGS)}")
        self.embeddings = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        if self.embeddings.ndim != 3 or self.embeddings.shape[1] != len(modalities):
            raise ValueError(f"embeddings must be [N, {len(modalities)}, D], got {tuple(self.embeddings.shape)}")
        self.modalities, self.prompting, self.cfg_dropout = tuple(modalities), prompting, float(cfg_dropout)
        self.available = torch.isfinite(self.embeddings).all(dim=-1).numpy()
        if prompting == "single":
            if "report" not in self.modalities:
                raise ValueError("single prompting needs the report among the prompt modalities")
            only_report = np.array([m == "report" for m in self.modalities])
            self.available = self.available & only_report[None, :]
        self.choices = subset_choices(self.available)
        missing = [i for i, c in enumerate(self.choices) if not c]
        if missing:
            raise ValueError(f"{len(missing)} item(s) have no {prompting}-prompt modality among {self.modalities}; "
                             "leave them out of training (see cxrgen.medcodi.ldm.view_training_data)")
        self.dim = int(self.embeddings.shape[-1])

    def __len__(self) -> int:
        return len(self.embeddings)

    def draw(self, indices: list[int], n_global: int, generator: torch.Generator, mine=None,
             drop: torch.Tensor | None = None) -> PromptDraw:
        """Subset uniforms, then CFG drops, drawn for the ``n_global`` rows of the global batch; this rank keeps its
        rows with ``mine`` (identity in a single process). ``drop`` given: no CFG draw (validation)."""
        mine = mine or (lambda drawn: drawn)
        uniforms = mine(torch.rand(n_global, generator=generator))
        if drop is None:
            drop = mine(cfg_drop_mask(n_global, self.cfg_dropout, generator))
        subsets = subset_masks([self.choices[i] for i in indices], uniforms, len(self.modalities))
        conditions = combine(self.embeddings[indices], subsets)
        conditions = torch.where(drop[:, None], torch.zeros_like(conditions), conditions)
        return PromptDraw(subsets=subsets, drop=drop, conditions=conditions)

    def __call__(self, indices: list[int], n_global: int, generator: torch.Generator, mine,
                 drop: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        return self.draw(indices, n_global, generator, mine, drop).conditions[:, None, :], None


def null_condition(dim: int) -> torch.Tensor:
    """The classifier-free-guidance null condition: the zero vector (see the module docstring)."""
    return torch.zeros(dim)
