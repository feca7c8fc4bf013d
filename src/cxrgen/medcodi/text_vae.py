"""The report VAE of MedCoDi-M / XGeM's report generator, trained from scratch (the paper fine-tunes Optimus).

MedCoDi-M (arXiv 2501.04614 §3.2.2) uses Optimus (Li et al. 2020, arXiv 2004.04092) as its text VAE: a BERT encoder
to a 768-d Gaussian latent and a GPT-2 decoder, first trained to reconstruct the radiology reports, then frozen while
the report diffusion model learns on its latents. Where a user has Optimus' weights, config key
``medcodi.text_vae.pretrained`` loads and fine-tunes them (:mod:`cxrgen.medcodi.optimus`); otherwise (the default) this
module builds the same interface from scratch at a size a CPU can train:

- :class:`WordTokenizer`: a word-level vocabulary built from the training reports (tokens of
  :func:`cxrgen.medcodi.bleu.report_tokens`: lowercase, punctuation split; words seen fewer than ``min_count`` times
  map to ``<unk>``), ordered by (count desc, word), so the same reports give the same ids. Saved as
  ``tokenizer.json`` next to the model.
- :class:`TextVAE`: a bidirectional GRU encoder → (μ, log σ²) of a ``latent_dim``-d diagonal Gaussian (Optimus: 768),
  and an autoregressive GRU decoder that gets the latent the two ways Optimus injects it into GPT-2 (§4.2): as
  "memory" (here the initial hidden state of every decoder layer) and as "embedding" (added to every input token
  embedding), so the decoder cannot ignore it at the first step.
- Posterior collapse is fought as in Optimus (§5, and its released training script): a β schedule that is 0 for the
  first ``ratio_zero`` of each cycle (a plain autoencoder), rises linearly to ``beta`` over the next
  ``ratio_increase`` and stays there (Fu et al. 2019's cyclical schedule, one cycle in Optimus' script), and KL
  thresholding ("free bits", Kingma et al. 2016): a latent dimension's KL term of a sample counts only where it
  exceeds ``free_bits`` nats (Optimus' ``dim_target_kl``).

The weights and config save with diffusers' ``save_pretrained`` (``config.json`` + safetensors).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from cxrgen.medcodi.bleu import report_tokens

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
TOKENIZER_FILE = "tokenizer.json"
HOW_TO_MAKE = "rule train_text_vae writes results/medcodi/text_vae"


def detokenize(tokens: list[str]) -> str:
    """Tokens back to text: spaces between words, none before closing punctuation, after an opening bracket, around
    hyphens and slashes, or inside a decimal number. ``report_tokens(detokenize(t)) == t`` for tokens of
    :func:`report_tokens` (only spaces change)."""
    text = " ".join(tokens)
    text = re.sub(r" ([.,;:!?)\]%])", r"\1", text)
    text = re.sub(r"([(\[]) ", r"\1", text)
    text = re.sub(r" ?([-/]) ?", r"\1", text)
    return re.sub(r"(\d)\. (\d)", r"\1.\2", text)


def normalise_report(text: str) -> str:
    """What a report looks like after a round trip through the tokenizer (lowercase, canonical spacing)."""
    return detokenize(report_tokens(text))


class WordTokenizer:
    """Word-level vocabulary: ids 0-3 are ``<pad> <bos> <eos> <unk>``, then words by (count desc, word)."""

    def __init__(self, words: list[str], min_count: int = 1):
        if tuple(words[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary starts with {SPECIAL_TOKENS}")
        self.words = list(words)
        self.min_count = int(min_count)
        self.ids = {w: i for i, w in enumerate(self.words)}
        if len(self.ids) != len(self.words):
            raise ValueError("duplicate words in the vocabulary")
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (self.ids[t] for t in SPECIAL_TOKENS)

    @classmethod
    def build(cls, texts: list[str], min_count: int = 1, max_vocab: int | None = None) -> WordTokenizer:
        """The vocabulary of ``texts``: words seen at least ``min_count`` times, the ``max_vocab`` most frequent
        (specials included) when given."""
        counts = Counter(token for text in texts for token in report_tokens(text))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_vocab is not None:
            kept = kept[:max(0, int(max_vocab) - len(SPECIAL_TOKENS))]
        return cls([*SPECIAL_TOKENS, *kept], min_count=min_count)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        """Word ids of ``text`` (at most ``max_tokens - 1`` words) followed by ``<eos>``."""
        ids = [self.ids.get(t, self.unk_id) for t in report_tokens(text)]
        if max_tokens is not None:
            ids = ids[:max(0, int(max_tokens) - 1)]
        return [*ids, self.eos_id]

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` up to the first ``<eos>``; ``<pad>``/``<bos>`` are skipped, ``<unk>`` stays visible."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            words.append(self.words[i] if 0 <= i < len(self.words) else UNK)
        return detokenize(words)

    def batch(self, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [B, L] padded with <pad>, lengths [B])`` with L the longest encoded text (each ends in <eos>)."""
        encoded = [self.encode(t, max_tokens) for t in texts]
        lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
        ids = torch.full((len(encoded), int(lengths.max()) if encoded else 1), self.pad_id, dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, :len(e)] = torch.tensor(e, dtype=torch.long)
        return ids, lengths

    def save(self, directory: Path | str) -> Path:
        path = Path(directory) / TOKENIZER_FILE
        path.write_text(json.dumps({"kind": "word", "min_count": self.min_count, "words": self.words}, indent=0))
        return path

    @classmethod
    def load(cls, directory: Path | str) -> WordTokenizer:
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{directory} has no {TOKENIZER_FILE}; {HOW_TO_MAKE}")
        payload = json.loads(path.read_text())
        return cls(payload["words"], min_count=payload.get("min_count", 1))


def kl_weight(step: int, max_steps: int, beta: float, ratio_zero: float, ratio_increase: float,
              cycles: int = 1) -> float:
    """β at ``step`` (0-based) of Optimus' schedule: per cycle of ``max_steps / cycles`` steps, 0 for the first
    ``ratio_zero`` of it, a linear ramp to ``beta`` over the next ``ratio_increase``, then ``beta``."""
    period = max_steps / max(1, int(cycles))
    position = (step % period) / period if period > 0 else 1.0
    if position < ratio_zero:
        return 0.0
    if ratio_increase <= 0 or position >= ratio_zero + ratio_increase:
        return float(beta)
    return float(beta) * (position - ratio_zero) / ratio_increase


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) per sample and latent dimension, [B, D]."""
    return 0.5 * (mean.pow(2) + logvar.exp() - logvar - 1.0)


def thresholded_kl(kl: torch.Tensor, free_bits: float) -> torch.Tensor:
    """Per-sample KL summed over the dimensions whose term exceeds ``free_bits`` (Optimus ``dim_target_kl``), [B]:
    dimensions below the threshold get no gradient towards the prior."""
    if free_bits <= 0:
        return kl.sum(dim=1)
    return (kl * (kl > free_bits).to(kl.dtype)).sum(dim=1)


def vae_objective(mean: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor, decode_logits, ids: torch.Tensor,
                  pad_id: int, beta: float, free_bits: float) -> dict[str, torch.Tensor]:
    """The report VAE's loss for either backend: z = μ + σ·``noise``; reconstruction = summed token cross-entropy of
    ``decode_logits(z, ids)`` per report, mean over the batch (Optimus); ``loss`` = reconstruction + ``beta`` ·
    thresholded KL (free bits). Also the plain KL and the per-token NLL."""
    z = mean + (0.5 * logvar).exp() * noise
    logits = decode_logits(z, ids)
    token_nll = F.cross_entropy(logits.transpose(1, 2), ids, ignore_index=pad_id, reduction="none")
    reconstruction = token_nll.sum(dim=1).mean()
    kl = gaussian_kl(mean, logvar)
    loss = reconstruction + beta * thresholded_kl(kl, free_bits).mean() if beta > 0 else reconstruction
    n_tokens = (ids != pad_id).sum().clamp(min=1)
    return {"loss": loss, "reconstruction": reconstruction, "kl": kl.sum(dim=1).mean(),
            "token_nll": token_nll.sum() / n_tokens}


class TextVAE(ModelMixin, ConfigMixin):
    """GRU encoder → diagonal Gaussian of ``latent_dim`` → autoregressive GRU decoder (see the module docstring)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, vocab_size: int, embed_dim: int = 256, hidden_dim: int = 512, latent_dim: int = 768,
                 encoder_layers: int = 1, decoder_layers: int = 1, dropout: float = 0.1, pad_id: int = 0,
                 bos_id: int = 1, eos_id: int = 2, max_tokens: int = 77):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.GRU(embed_dim, hidden_dim, num_layers=encoder_layers, batch_first=True, bidirectional=True,
                              dropout=dropout if encoder_layers > 1 else 0.0)
        self.to_moments = nn.Linear(2 * hidden_dim, 2 * latent_dim)
        self.latent_to_memory = nn.Linear(latent_dim, decoder_layers * hidden_dim)
        self.latent_to_embedding = nn.Linear(latent_dim, embed_dim)
        self.decoder = nn.GRU(embed_dim, hidden_dim, num_layers=decoder_layers, batch_first=True,
                              dropout=dropout if decoder_layers > 1 else 0.0)
        self.to_vocab = nn.Linear(hidden_dim, vocab_size)

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, log-variance), each [B, latent_dim], of token ids [B, L] with true ``lengths`` [B]."""
        embedded = self.drop(self.embedding(ids))
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, hidden = self.encoder(packed)  # [layers * 2, B, H]
        summary = torch.cat([hidden[-2], hidden[-1]], dim=-1)  # last layer, forward and backward
        mean, logvar = self.to_moments(summary).chunk(2, dim=-1)
        return mean, logvar.clamp(-30.0, 20.0)

    def _initial_state(self, z: torch.Tensor) -> torch.Tensor:
        layers, hidden = self.config.decoder_layers, self.config.hidden_dim
        memory = torch.tanh(self.latent_to_memory(z))
        return memory.view(len(z), layers, hidden).transpose(0, 1).contiguous()

    def decode_logits(self, z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next-token logits [B, L, V] for targets ``ids`` [B, L] (inputs: <bos> + ids[:, :-1])."""
        bos = torch.full_like(ids[:, :1], self.config.bos_id)
        inputs = torch.cat([bos, ids[:, :-1]], dim=1)
        embedded = self.drop(self.embedding(inputs) + self.latent_to_embedding(z)[:, None, :])
        output, _ = self.decoder(embedded, self._initial_state(z))
        return self.to_vocab(self.drop(output))

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, noise: torch.Tensor, beta: float = 1.0,
                free_bits: float = 0.0) -> dict[str, torch.Tensor]:
        """The VAE loss of a batch: z = μ + σ·``noise`` (noise [B, latent_dim] drawn by the caller, so data-parallel
        ranks can use the global batch's draws); reconstruction = summed token cross-entropy per report, mean over
        the batch (Optimus); ``loss`` = reconstruction + ``beta`` · thresholded KL. Also returns the plain KL."""
        mean, logvar = self.encode(ids, lengths)
        return vae_objective(mean, logvar, noise, self.decode_logits, ids, self.config.pad_id, beta, free_bits)

    @torch.no_grad()
    def greedy_decode(self, z: torch.Tensor, max_tokens: int | None = None) -> list[list[int]]:
        """Greedy (argmax) decoding of latents [B, latent_dim]: ids up to and excluding <eos>, per latent."""
        max_tokens = int(max_tokens or self.config.max_tokens)
        state = self._initial_state(z)
        shift = self.latent_to_embedding(z)[:, None, :]
        token = torch.full((len(z), 1), self.config.bos_id, dtype=torch.long, device=z.device)
        finished = torch.zeros(len(z), dtype=torch.bool, device=z.device)
        out: list[list[int]] = [[] for _ in range(len(z))]
        for _ in range(max_tokens):
            output, state = self.decoder(self.embedding(token) + shift, state)
            token = self.to_vocab(output[:, -1]).argmax(dim=-1, keepdim=True)
            for row in torch.nonzero(~finished).flatten().tolist():
                if int(token[row]) == self.config.eos_id:
                    finished[row] = True
                else:
                    out[row].append(int(token[row]))
            if bool(finished.all()):
                break
        return out


def build_text_vae(cfg: dict, tokenizer: WordTokenizer) -> TextVAE:
    """A fresh :class:`TextVAE` from config section ``medcodi.text_vae`` (its ``model`` sizes and ``max_tokens``)."""
    arch = cfg["model"]
    return TextVAE(vocab_size=len(tokenizer), embed_dim=int(arch["embed_dim"]), hidden_dim=int(arch["hidden_dim"]),
                   latent_dim=int(arch["latent_dim"]), encoder_layers=int(arch["encoder_layers"]),
                   decoder_layers=int(arch["decoder_layers"]), dropout=float(arch["dropout"]),
                   pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                   max_tokens=int(cfg["max_tokens"]))


class LoadedTextVAE:
    """A trained report VAE with its tokenizer (eval mode): reports ↔ latents."""

    def __init__(self, model: TextVAE, tokenizer: WordTokenizer):
        if model.config.vocab_size != len(tokenizer):
            raise ValueError(f"the VAE has {model.config.vocab_size} token ids, its tokenizer {len(tokenizer)}")
        self.model, self.tokenizer = model.eval(), tokenizer

    @property
    def latent_dim(self) -> int:
        return int(self.model.config.latent_dim)

    @torch.no_grad()
    def encode_means(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Posterior means [N, latent_dim] of ``texts`` (what the report diffusion model learns on)."""
        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(texts), batch_size):
            ids, lengths = self.tokenizer.batch(texts[start:start + batch_size], self.model.config.max_tokens)
            chunks.append(self.model.encode(ids.to(device), lengths)[0].float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.latent_dim)

    @torch.no_grad()
    def posterior(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, log-variance) of ``texts`` in one batch."""
        ids, lengths = self.tokenizer.batch(texts, self.model.config.max_tokens)
        return self.model.encode(ids, lengths)

    @torch.no_grad()
    def token_nll(self, texts: list[str], z: torch.Tensor) -> tuple[float, int]:
        """Summed teacher-forced NLL of ``texts``' tokens given latents ``z``, and the number of tokens."""
        ids, _ = self.tokenizer.batch(texts, self.model.config.max_tokens)
        logits = self.model.decode_logits(z, ids)
        nll = F.cross_entropy(logits.transpose(1, 2), ids, ignore_index=self.model.config.pad_id, reduction="sum")
        return float(nll), int((ids != self.model.config.pad_id).sum())

    def round_trip(self, text: str) -> str:
        """What a perfect reconstruction of ``text`` decodes to (vocabulary, truncation, normalised spacing)."""
        return normalise_report(self.tokenizer.decode(self.tokenizer.encode(text, self.model.config.max_tokens)))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, max_tokens: int | None = None) -> list[str]:
        """Greedy decoding of latents [B, latent_dim] to report texts."""
        device = next(self.model.parameters()).device
        return [self.tokenizer.decode(ids) for ids in self.model.greedy_decode(z.to(device).float(), max_tokens)]


def load_text_vae(path: Path | str):
    """The report VAE saved by rule ``train_text_vae``: ``config.json`` + safetensors weights + its tokenizer
    (``tokenizer.json`` for the GRU VAE, BERT/GPT-2 vocabularies for Optimus, ``backend: optimus`` in the config).
    Either kind has ``latent_dim``, ``encode_means(texts)`` and ``decode(z)``."""
    from cxrgen.models.saving import load_strict

    config_file = Path(path) / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()).get("backend") == "optimus":
        from cxrgen.medcodi.optimus import load_optimus_vae

        return load_optimus_vae(path)
    model = load_strict(TextVAE, path, HOW_TO_MAKE)
    return LoadedTextVAE(model, WordTokenizer.load(path))


def active_units(means: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions whose posterior mean varies over the data (Cov_x E[z|x] > ``threshold``; Burda et al. 2016,
    the collapse measure Optimus reports)."""
    if len(means) < 2:
        return 0
    return int((np.var(means.double().numpy(), axis=0) > threshold).sum())


def study_reports(studies: Path | str, splits: list[str]) -> list[str]:
    """Non-empty ``report`` texts of the study table (rule build_study_table) in ``splits``, in study_pid order."""
    import pandas as pd

    table = pd.read_parquet(studies, columns=["study_pid", "split", "report"])
    table = table[table["split"].isin(list(splits))].sort_values("study_pid", kind="stable")
    texts = table["report"].fillna("").astype(str).str.strip()
    return texts[texts.str.len() > 0].tolist()


class TextVAETrainer:
    """Model, optimizer and train step of the report VAE on pre-tokenised reports (see :func:`kl_weight` for β).
    Build after :func:`cxrgen.train.loop.seed_everything` so the initial weights are reproducible."""

    def __init__(self, cfg: dict, tokenizer: WordTokenizer, texts: list[str], model: nn.Module | None = None):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.data = tokenizer.batch(texts, int(cfg["max_tokens"]))
        self.n_items = len(texts)
        self.model = build_text_vae(cfg, tokenizer) if model is None else model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=float(cfg["lr"]),
                                           weight_decay=float(cfg["weight_decay"]))
        self.kl = cfg["kl"]

    def beta(self, step: int) -> float:
        return kl_weight(step, int(self.cfg["max_steps"]), float(self.kl["beta"]), float(self.kl["ratio_zero"]),
                         float(self.kl["ratio_increase"]), int(self.kl["cycles"]))

    def train_step(self, indices: list[int], ctx) -> dict[str, float]:
        """One step on this rank's rows; the reparameterisation noise is drawn for the global batch from
        ``ctx.generator`` and this rank keeps its rows (data parallel = the single-process run's numbers)."""
        n = len(indices) * ctx.world_size
        noise = ctx.local(torch.randn((n, self.model.config.latent_dim), generator=ctx.generator))
        beta = self.beta(ctx.step)
        with ctx.autocast():
            out = self.model(*self.inputs(indices, ctx.device), noise.to(ctx.device), beta=beta,
                             free_bits=float(self.kl["free_bits"]))
        grad_norm = ctx.backward_step(out["loss"], self.model, self.optimizer)
        return {"loss": float(out["loss"].detach()), "reconstruction": float(out["reconstruction"].detach()),
                "kl": float(out["kl"].detach()), "token_nll": float(out["token_nll"].detach()), "beta": beta,
                "grad_norm": grad_norm}

    def inputs(self, indices: list[int], device) -> tuple[torch.Tensor, ...]:
        """The model's inputs for rows ``indices`` (token ids cut to their longest row, lengths)."""
        ids, lengths = self.data
        lengths = lengths[indices]
        return ids[indices, :int(lengths.max())].to(device), lengths

    def fit(self, loop, state_dir: Path, *, on_log=None, extra_state: dict | None = None):
        """Run (or resume) the loop; with several ranks each trains on its slice of every global batch."""
        from cxrgen.train.loop import StepBatchSampler, run_training

        world = loop.resolved_world()

        def loader_for(start: int):
            return iter(StepBatchSampler(self.n_items, int(self.cfg["batch_size"]), seed=loop.seed,
                                         start_step=start, max_steps=loop.max_steps, rank=world.rank,
                                         world_size=world.world_size))

        return run_training(loop, modules={"vae": self.model}, optimizers={"vae": self.optimizer},
                            loader_for=loader_for, train_step=self.train_step, state_dir=Path(state_dir),
                            on_log=on_log, extra_state=extra_state, desc="train_text_vae", distributed_ready=True)


@torch.no_grad()
def reconstruction_metrics(vae, texts: list[str]) -> dict[str, float]:
    """Held-out quality of a trained VAE (GRU or Optimus): teacher-forced token NLL at the posterior mean, greedy
    exact-match rate and corpus BLEU-4 of mean → greedy reconstructions, mean KL per report, active units (Burda et
    al.)."""
    from cxrgen.medcodi.bleu import corpus_bleu

    if not texts:
        return {"n": 0}
    mean, logvar = vae.posterior(texts)
    nll, n_tokens = vae.token_nll(texts, mean)
    decoded = vae.decode(mean)
    references = [vae.round_trip(t) for t in texts]
    return {"n": len(texts), "token_nll": nll / max(1, n_tokens),
            "exact_match": float(np.mean([d == r for d, r in zip(decoded, references, strict=True)])),
            "bleu4": corpus_bleu(decoded, references)["bleu4"],
            "kl": float(gaussian_kl(mean, logvar).sum(dim=1).mean()), "active_units": active_units(mean)}
