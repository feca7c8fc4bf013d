"""Optimus (Li et al. 2020, arXiv 2004.04092) as MedCoDi-M / XGeM's report VAE, from a user's local copy of a released
Optimus checkpoint (config key ``medcodi.text_vae.pretrained``), fine-tuned on the corpus' reports by rule
``train_text_vae`` (MedCoDi-M arXiv 2501.04614 §3.2.2).

The architecture is Optimus' (§4.2 of its paper; parameter names as in its public code, ``BertForLatentConnector``
and ``GPT2ForLatentConnector``), built from Hugging Face ``transformers``' ``BertModel`` and ``GPT2Model``:

- encoder: BERT; its pooled output (``tanh(W·h_[CLS])``) goes through a linear layer without bias to
  ``2 · latent_dim`` numbers, the mean and log-variance of the Gaussian latent (Optimus ``linear``);
- decoder: GPT-2 that gets the latent z two ways: as "memory", one extra key/value slot per layer, key = value =
  that layer's ``hidden``-wide slice of ``W_mem·z`` (Optimus ``transformer.linear``, no bias; the slot takes position
  0, so the report's tokens start at position 1), and as "embedding", ``W_emb·z`` added to every input token embedding
  (Optimus ``transformer.linear_emb``); next-token logits with the output layer tied to the token embeddings;
- tokenizers: BERT's WordPiece for the encoder (``[CLS] … [SEP]``, pad id 0), GPT-2's byte-level BPE for the decoder
  with the three tokens Optimus adds, in its order: ``<PAD>``, ``<BOS>``, ``<EOS>`` (ids 50257-50259 for GPT-2's
  vocabulary). A report is decoded as ``<BOS>`` + BPE tokens + ``<EOS>``, as in Optimus' data loader.

The checkpoint layout is the one Optimus' ``run_lm_vae_training.py`` writes (see :data:`EXPECTED_LAYOUT`): it saves the
encoder and decoder with ``save_pretrained`` into ``checkpoint-encoder-<step>`` and ``checkpoint-decoder-<step>``
(``config.json`` + ``pytorch_model.bin``) and a pickled training state in ``checkpoint-full-<step>`` (not read here:
it holds the same weights plus the optimizer). The tokenizer files are not part of Optimus' checkpoints (its script
reads them from the hub names ``bert-base-cased`` and ``gpt2``), so the user copies them next to the checkpoint.

Fine-tuned models save like the GRU VAE (diffusers ``save_pretrained``: ``config.json`` with ``backend: optimus`` +
safetensors) with the three tokenizer files beside them, so :func:`cxrgen.medcodi.text_vae.load_text_vae` loads either.
``transformers`` is imported only when an Optimus model is built.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

log = logging.getLogger(__name__)

PRETRAINED_KEY = "medcodi.text_vae.pretrained"
BERT_VOCAB, GPT2_VOCAB, GPT2_MERGES = "vocab.txt", "vocab.json", "merges.txt"
WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")
DECODER_SPECIALS = ("<PAD>", "<BOS>", "<EOS>")  # added to GPT-2's vocabulary in this order (Optimus)
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
HOW_TO_MAKE = "rule train_text_vae writes results/medcodi/text_vae"

EXPECTED_LAYOUT = """\
  <path>/vocab.txt                          BERT WordPiece vocabulary (bert-base-cased for the released Optimus)
  <path>/vocab.json, <path>/merges.txt      GPT-2 byte-level BPE vocabulary and merges (gpt2)
  <path>/checkpoint-encoder-<step>/config.json and pytorch_model.bin (or model.safetensors)
                                            BertForLatentConnector: BERT + linear [2*latent, hidden]
  <path>/checkpoint-decoder-<step>/config.json and pytorch_model.bin (or model.safetensors)
                                            GPT2ForLatentConnector: transformer.* incl. transformer.linear and
                                            transformer.linear_emb, vocabulary incl. <PAD> <BOS> <EOS>"""

# the architecture fields of the two configs (Optimus' pytorch_transformers wrote more; the rest is ignored)
BERT_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
             "type_vocab_size", "initializer_range", "layer_norm_eps")
GPT2_KEYS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
             "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range")


@dataclass(frozen=True)
class OptimusSource:
    """A resolved ``medcodi.text_vae.pretrained``: the checkpoint directory, its step and BERT's lowercasing."""

    path: Path
    step: int
    lowercase: bool = False

    @property
    def encoder_dir(self) -> Path:
        return self.path / f"checkpoint-encoder-{self.step}"

    @property
    def decoder_dir(self) -> Path:
        return self.path / f"checkpoint-decoder-{self.step}"


def _layout_error(value, problem: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"config key '{PRETRAINED_KEY}' = {value!r}: {problem}. Expected an Optimus checkpoint directory laid out "
        f"as\n{EXPECTED_LAYOUT}\n(set the key to null to train the report VAE from scratch, the default).")


def _weights_file(directory: Path) -> Path | None:
    return next((directory / name for name in WEIGHT_FILES if (directory / name).is_file()), None)


def resolve_pretrained(value) -> OptimusSource | None:
    """``medcodi.text_vae.pretrained`` (null, a directory, or ``{path, step, lowercase}``) checked against
    :data:`EXPECTED_LAYOUT`; one FileNotFoundError naming the key and listing the layout when anything is missing.
    ``step`` null picks the one step present (several steps: an error listing them)."""
    if value is None:
        return None
    spec = {"path": value} if isinstance(value, (str, Path)) else dict(value)
    path = Path(spec["path"]).expanduser()
    shown = str(value) if isinstance(value, (str, Path)) else value
    if not path.is_dir():
        raise _layout_error(shown, f"{path} is not a directory")
    steps = sorted(int(m.group(1)) for d in path.iterdir()
                   if (m := re.fullmatch(r"checkpoint-encoder-(\d+)", d.name)) and d.is_dir())
    step = spec.get("step")
    if step is None:
        if not steps:
            raise _layout_error(shown, f"no checkpoint-encoder-<step> directory in {path}")
        if len(steps) > 1:
            raise _layout_error(shown, f"several checkpoints in {path} (steps {steps}); set step to one of them")
        step = steps[0]
    source = OptimusSource(path=path, step=int(step), lowercase=bool(spec.get("lowercase", False)))
    missing = [str(f.relative_to(path)) for f in (path / BERT_VOCAB, path / GPT2_VOCAB, path / GPT2_MERGES,
                                                  source.encoder_dir / "config.json",
                                                  source.decoder_dir / "config.json") if not f.is_file()]
    missing += [f"{d.name}/{' or '.join(WEIGHT_FILES)}" for d in (source.encoder_dir, source.decoder_dir)
                if _weights_file(d) is None]
    if missing:
        raise _layout_error(shown, f"missing in {path}: {', '.join(missing)}")
    return source


def _read_bert_vocab(path: Path) -> dict[str, int]:
    return {line.rstrip("\r\n"): i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines())}


def _read_merges(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [tuple(line.split(" ")) for line in lines if line.strip() and not line.startswith("#version")]


class OptimusTokenizers:
    """BERT WordPiece (encoder) + GPT-2 BPE with Optimus' ``<PAD> <BOS> <EOS>`` (decoder), read from local files.
    ``len()`` is the decoder's vocabulary, ``batch`` gives both models' padded ids."""

    def __init__(self, bert_vocab: dict[str, int], gpt2_vocab: dict[str, int], merges: list[tuple[str, str]],
                 lowercase: bool = False):
        from transformers import BertTokenizer, GPT2Tokenizer

        self.bert_vocab, self.gpt2_vocab, self.merges = dict(bert_vocab), dict(gpt2_vocab), list(merges)
        self.lowercase = bool(lowercase)
        absent = [t for t in BERT_SPECIALS[:4] if t not in self.bert_vocab]
        if absent:
            raise ValueError(f"the BERT vocabulary lacks {absent}")
        self.bert = BertTokenizer(vocab=self.bert_vocab, do_lower_case=self.lowercase)
        self.gpt2 = GPT2Tokenizer(vocab=self.gpt2_vocab, merges=self.merges)
        self.gpt2.add_special_tokens(dict(zip(("pad_token", "bos_token", "eos_token"), DECODER_SPECIALS, strict=True)))
        self.pad_id, self.bos_id, self.eos_id = (self.gpt2.convert_tokens_to_ids(t) for t in DECODER_SPECIALS)
        self.encoder_pad_id = self.bert_vocab["[PAD]"]

    @classmethod
    def from_dir(cls, directory: Path | str, lowercase: bool = False) -> OptimusTokenizers:
        directory = Path(directory)
        return cls(_read_bert_vocab(directory / BERT_VOCAB),
                   json.loads((directory / GPT2_VOCAB).read_text(encoding="utf-8")),
                   _read_merges(directory / GPT2_MERGES), lowercase=lowercase)

    def save(self, directory: Path | str) -> None:
        directory = Path(directory)
        words = sorted(self.bert_vocab, key=self.bert_vocab.__getitem__)
        (directory / BERT_VOCAB).write_text("".join(f"{w}\n" for w in words), encoding="utf-8")
        (directory / GPT2_VOCAB).write_text(json.dumps(self.gpt2_vocab, ensure_ascii=False), encoding="utf-8")
        (directory / GPT2_MERGES).write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges),
                                             encoding="utf-8")

    def __len__(self) -> int:
        return len(self.gpt2)

    @property
    def encoder_vocab_size(self) -> int:
        return len(self.bert)

    def encode_encoder(self, text: str, max_tokens: int) -> list[int]:
        """``[CLS]`` + at most ``max_tokens - 2`` word pieces + ``[SEP]``."""
        pieces = self.bert.encode(text, add_special_tokens=False)[:max(0, int(max_tokens) - 2)]
        return [self.bert.cls_token_id, *pieces, self.bert.sep_token_id]

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        """Decoder targets: at most ``max_tokens - 1`` BPE tokens + ``<EOS>`` (``<BOS>`` is the first input)."""
        ids = self.gpt2.encode(text.strip(), add_special_tokens=False)
        if max_tokens is not None:
            ids = ids[:max(0, int(max_tokens) - 1)]
        return [*ids, self.eos_id]

    def decode(self, ids: list[int]) -> str:
        """Text of decoder ``ids`` up to the first ``<EOS>``, special tokens dropped."""
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return self.gpt2.decode(ids, skip_special_tokens=True).strip()

    @staticmethod
    def _pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        ids = torch.full((len(rows), int(lengths.max()) if rows else 1), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return ids, lengths

    def batch(self, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(encoder ids [B, Le], their lengths [B], decoder targets [B, Ld], their lengths [B])``, right-padded."""
        encoder = self._pad([self.encode_encoder(t, max_tokens) for t in texts], self.encoder_pad_id)
        decoder = self._pad([self.encode(t, max_tokens) for t in texts], self.pad_id)
        return (*encoder, *decoder)


class OptimusVAE(ModelMixin, ConfigMixin):
    """BERT → (μ, log σ²) → GPT-2 with the latent as per-layer memory and added to the token embeddings (see the
    module docstring). Same methods as :class:`cxrgen.medcodi.text_vae.TextVAE`, with the encoder's own ids."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, bert_config: dict, gpt2_config: dict, latent_dim: int = 768, pad_id: int = 50257,
                 bos_id: int = 50258, eos_id: int = 50259, encoder_pad_id: int = 0, max_tokens: int = 77,
                 lowercase: bool = False, backend: str = "optimus", source: dict | None = None):
        super().__init__()
        from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

        if backend != "optimus":
            raise ValueError(f"an OptimusVAE has backend 'optimus', not {backend!r}")
        self.encoder = BertModel(BertConfig(**bert_config, pad_token_id=encoder_pad_id), add_pooling_layer=True)
        self.decoder = GPT2Model(GPT2Config(**gpt2_config, bos_token_id=bos_id, eos_token_id=eos_id,
                                            pad_token_id=pad_id))
        hidden, layers = self.decoder.config.n_embd, self.decoder.config.n_layer
        self.to_moments = nn.Linear(self.encoder.config.hidden_size, 2 * latent_dim, bias=False)
        self.latent_to_memory = nn.Linear(latent_dim, layers * hidden, bias=False)
        self.latent_to_embedding = nn.Linear(latent_dim, hidden, bias=False)

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, log-variance) [B, latent_dim] of BERT ids [B, L] with true ``lengths`` [B]."""
        mask = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths.to(ids.device)[:, None]).long()
        pooled = self.encoder(input_ids=ids, attention_mask=mask).pooler_output
        mean, logvar = self.to_moments(pooled).chunk(2, dim=-1)
        return mean, logvar.clamp(-30.0, 20.0)

    def memory(self, z: torch.Tensor):
        """A fresh ``DynamicCache`` holding the latent's memory slot in every layer (key = value, Optimus)."""
        from transformers import DynamicCache

        cfg = self.decoder.config
        slots = self.latent_to_memory(z).view(len(z), cfg.n_layer, cfg.n_head, 1, cfg.n_embd // cfg.n_head)
        return DynamicCache(ddp_cache_data=[(slots[:, i], slots[:, i]) for i in range(cfg.n_layer)])

    def _step(self, z: torch.Tensor, inputs: torch.Tensor, cache) -> torch.Tensor:
        embedded = self.decoder.wte(inputs) + self.latent_to_embedding(z)[:, None, :]
        hidden = self.decoder(inputs_embeds=embedded, past_key_values=cache, use_cache=True).last_hidden_state
        return F.linear(hidden, self.decoder.wte.weight)  # output layer tied to the token embeddings (GPT-2)

    def decode_logits(self, z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next-token logits [B, L, V] for decoder targets ``ids`` [B, L] (inputs: <BOS> + ids[:, :-1])."""
        bos = torch.full_like(ids[:, :1], self.config.bos_id)
        return self._step(z, torch.cat([bos, ids[:, :-1]], dim=1), self.memory(z))

    def forward(self, encoder_ids: torch.Tensor, encoder_lengths: torch.Tensor, ids: torch.Tensor,
                noise: torch.Tensor, beta: float = 1.0, free_bits: float = 0.0) -> dict[str, torch.Tensor]:
        """The VAE loss of a batch as :meth:`cxrgen.medcodi.text_vae.TextVAE.forward` (summed token cross-entropy per
        report, mean over the batch, + β · thresholded KL), with BERT ids in and GPT-2 ids out."""
        from cxrgen.medcodi.text_vae import vae_objective

        mean, logvar = self.encode(encoder_ids, encoder_lengths)
        return vae_objective(mean, logvar, noise, self.decode_logits, ids, self.config.pad_id, beta, free_bits)

    @torch.no_grad()
    def greedy_decode(self, z: torch.Tensor, max_tokens: int | None = None) -> list[list[int]]:
        """Greedy (argmax) decoding of latents [B, latent_dim] with GPT-2's key/value cache: ids up to and excluding
        <EOS>, per latent."""
        max_tokens = min(int(max_tokens or self.config.max_tokens), self.decoder.config.n_positions - 1)
        cache = self.memory(z)
        token = torch.full((len(z), 1), self.config.bos_id, dtype=torch.long, device=z.device)
        finished = torch.zeros(len(z), dtype=torch.bool, device=z.device)
        out: list[list[int]] = [[] for _ in range(len(z))]
        for _ in range(max_tokens):
            token = self._step(z, token, cache)[:, -1].argmax(dim=-1, keepdim=True)
            for row in torch.nonzero(~finished).flatten().tolist():
                if int(token[row]) == self.config.eos_id:
                    finished[row] = True
                else:
                    out[row].append(int(token[row]))
            if bool(finished.all()):
                break
        return out


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    path = _weights_file(directory)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _convert(encoder: dict[str, torch.Tensor], decoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Optimus' parameter names → :class:`OptimusVAE`'s. Dropped: GPT-2's causal-mask buffers (``attn.bias``,
    ``attn.masked_bias``), ``lm_head.weight`` (tied to ``wte``), BERT's ``position_ids`` buffer."""
    state = {}
    for key, value in encoder.items():
        if key == "linear.weight":
            state["to_moments.weight"] = value
        elif not key.endswith("position_ids"):
            state[f"encoder.{key.removeprefix('bert.')}"] = value
    for key, value in decoder.items():
        name = key.removeprefix("transformer.")
        if name == "linear.weight":
            state["latent_to_memory.weight"] = value
        elif name == "linear_emb.weight":
            state["latent_to_embedding.weight"] = value
        elif name != "lm_head.weight" and not re.search(r"\.attn\.(bias|masked_bias)$", name):
            state[f"decoder.{name}"] = value
    return state


def load_optimus(source: OptimusSource, *, max_tokens: int, latent_dim: int) -> tuple[OptimusVAE, OptimusTokenizers]:
    """The Optimus checkpoint ``source`` as an :class:`OptimusVAE` with its tokenizers. Its latent size must equal
    ``latent_dim`` (config ``medcodi.text_vae.model.latent_dim``) and its vocabularies the tokenizer files'."""
    enc_cfg = json.loads((source.encoder_dir / "config.json").read_text())
    dec_cfg = json.loads((source.decoder_dir / "config.json").read_text())
    encoder, decoder = _read_weights(source.encoder_dir), _read_weights(source.decoder_dir)
    if "linear.weight" not in encoder or "transformer.linear.weight" not in decoder:
        raise ValueError(f"config key '{PRETRAINED_KEY}': {source.path} step {source.step} is not an Optimus "
                         "checkpoint (no encoder 'linear.weight' or decoder 'transformer.linear.weight')")
    found = int(encoder["linear.weight"].shape[0]) // 2
    if found != int(latent_dim):
        raise ValueError(f"config key '{PRETRAINED_KEY}': the Optimus checkpoint has a {found}-d latent, "
                         f"'medcodi.text_vae.model.latent_dim' is {latent_dim}; set it to {found}")
    tokenizers = OptimusTokenizers.from_dir(source.path, lowercase=source.lowercase)
    bert_config = {k: enc_cfg[k] for k in BERT_KEYS if k in enc_cfg}
    gpt2_config = {k: dec_cfg[k] for k in GPT2_KEYS if k in dec_cfg}
    for name, have, want in (("BERT", tokenizers.encoder_vocab_size, bert_config.get("vocab_size")),
                             ("GPT-2 + <PAD> <BOS> <EOS>", len(tokenizers), gpt2_config.get("vocab_size"))):
        if have != want:
            raise ValueError(f"config key '{PRETRAINED_KEY}': the {name} vocabulary in {source.path} has {have} "
                             f"tokens, the checkpoint {want}")
    if int(max_tokens) + 1 > int(gpt2_config.get("n_positions", 1024)):
        raise ValueError(f"'medcodi.text_vae.max_tokens' = {max_tokens} does not fit GPT-2's "
                         f"{gpt2_config.get('n_positions')} positions (one is the latent's memory slot)")
    model = OptimusVAE(bert_config=bert_config, gpt2_config=gpt2_config, latent_dim=found, pad_id=tokenizers.pad_id,
                       bos_id=tokenizers.bos_id, eos_id=tokenizers.eos_id, encoder_pad_id=tokenizers.encoder_pad_id,
                       max_tokens=int(max_tokens), lowercase=source.lowercase,
                       source={"path": str(source.path), "step": source.step})
    result = model.load_state_dict(_convert(encoder, decoder), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"config key '{PRETRAINED_KEY}': {source.path} step {source.step} does not fit Optimus' "
                           f"architecture; missing {sorted(result.missing_keys)}, unexpected "
                           f"{sorted(result.unexpected_keys)}")
    log.info("loaded Optimus step %d from %s: %d-d latent, %d parameters", source.step, source.path, found,
             sum(p.numel() for p in model.parameters()))
    return model, tokenizers


class LoadedOptimusVAE:
    """A fine-tuned Optimus VAE with its tokenizers (eval mode): reports ↔ latents, as
    :class:`cxrgen.medcodi.text_vae.LoadedTextVAE`."""

    def __init__(self, model: OptimusVAE, tokenizer: OptimusTokenizers):
        if model.decoder.config.vocab_size != len(tokenizer):
            raise ValueError(f"the VAE has {model.decoder.config.vocab_size} token ids, its tokenizer {len(tokenizer)}")
        self.model, self.tokenizer = model.eval(), tokenizer

    @property
    def latent_dim(self) -> int:
        return int(self.model.config.latent_dim)

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def posterior(self, texts: list[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, log-variance) [N, latent_dim] of ``texts``, ``batch_size`` reports at a time."""
        means, logvars = [torch.zeros(0, self.latent_dim)], [torch.zeros(0, self.latent_dim)]
        for start in range(0, len(texts), batch_size):
            ids, lengths, _, _ = self.tokenizer.batch(texts[start:start + batch_size], self.model.config.max_tokens)
            mean, logvar = self.model.encode(ids.to(self._device()), lengths)
            means.append(mean.float().cpu())
            logvars.append(logvar.float().cpu())
        return torch.cat(means), torch.cat(logvars)

    @torch.no_grad()
    def encode_means(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Posterior means [N, latent_dim] of ``texts`` (what the report diffusion model learns on)."""
        return self.posterior(texts, batch_size)[0]

    @torch.no_grad()
    def token_nll(self, texts: list[str], z: torch.Tensor, batch_size: int = 64) -> tuple[float, int]:
        """Summed teacher-forced NLL of ``texts``' decoder tokens given latents ``z``, and the number of tokens
        (``batch_size`` reports at a time: GPT-2's logits are [B, L, 50260])."""
        total, count = 0.0, 0
        for start in range(0, len(texts), batch_size):
            _, _, ids, _ = self.tokenizer.batch(texts[start:start + batch_size], self.model.config.max_tokens)
            ids = ids.to(self._device())
            logits = self.model.decode_logits(z[start:start + batch_size].to(self._device()).float(), ids)
            total += float(F.cross_entropy(logits.transpose(1, 2), ids, ignore_index=self.model.config.pad_id,
                                           reduction="sum"))
            count += int((ids != self.model.config.pad_id).sum())
        return total, count

    def round_trip(self, text: str) -> str:
        """What a perfect reconstruction of ``text`` decodes to (truncated to ``max_tokens``)."""
        return self.tokenizer.decode(self.tokenizer.encode(text, self.model.config.max_tokens))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, max_tokens: int | None = None) -> list[str]:
        """Greedy decoding of latents [B, latent_dim] to report texts."""
        ids = self.model.greedy_decode(z.to(self._device()).float(), max_tokens)
        return [self.tokenizer.decode(row) for row in ids]


def load_optimus_vae(path: Path | str) -> LoadedOptimusVAE:
    """A fine-tuned Optimus VAE saved by rule ``train_text_vae`` (``config.json`` with ``backend: optimus``,
    safetensors, the three tokenizer files)."""
    from cxrgen.models.saving import load_strict

    path = Path(path)
    missing = [name for name in (BERT_VOCAB, GPT2_VOCAB, GPT2_MERGES) if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} holds an Optimus VAE without its tokenizer files {missing}; {HOW_TO_MAKE}")
    model = load_strict(OptimusVAE, path, HOW_TO_MAKE)
    return LoadedOptimusVAE(model, OptimusTokenizers.from_dir(path, lowercase=bool(model.config.lowercase)))



def _trainer_class():
    from cxrgen.medcodi.text_vae import TextVAETrainer

    class OptimusTrainer(TextVAETrainer):
        """:class:`~cxrgen.medcodi.text_vae.TextVAETrainer` (same β schedule, free bits, AdamW, loop) on a loaded
        Optimus: BERT ids in, GPT-2 ids out."""

        def inputs(self, indices: list[int], device) -> tuple[torch.Tensor, ...]:
            enc_ids, enc_lengths, ids, lengths = self.data
            enc_lengths, lengths = enc_lengths[indices], lengths[indices]
            return (enc_ids[indices, :int(enc_lengths.max())].to(device), enc_lengths,
                    ids[indices, :int(lengths.max())].to(device))

    return OptimusTrainer


def optimus_trainer(cfg: dict, source: OptimusSource, texts: list[str]):
    """A trainer that fine-tunes the Optimus checkpoint ``source`` on ``texts`` with config section
    ``medcodi.text_vae`` (``lr``, ``kl``, ``batch_size``, ``max_steps``, …; Optimus fine-tunes at lr 5e-5)."""
    model, tokenizers = load_optimus(source, max_tokens=int(cfg["max_tokens"]),
                                     latent_dim=int(cfg["model"]["latent_dim"]))
    if float(cfg["lr"]) > 1e-4:
        log.warning("fine-tuning pretrained Optimus at lr %g; Optimus fine-tunes at 5e-5 "
                    "('medcodi.text_vae.lr')", float(cfg["lr"]))
    return _trainer_class()(cfg, tokenizers, texts, model=model)
