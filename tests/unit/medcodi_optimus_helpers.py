"""A tiny random Optimus checkpoint in the layout Optimus' ``run_lm_vae_training.py`` writes (``checkpoint-encoder-<step>``
and ``checkpoint-decoder-<step>``: old-style ``config.json`` + ``pytorch_model.bin`` with Optimus' parameter names,
GPT-2's causal-mask buffers and the tied ``lm_head``), plus a WordPiece ``vocab.txt`` and a byte-level BPE
``vocab.json`` / ``merges.txt`` trained on a few reports with the ``tokenizers`` library. No real weights anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import torch

HIDDEN, HEADS, LAYERS, POSITIONS = 16, 2, 1, 64


def write_tiny_optimus(root: Path | str, texts, *, step: int = 100, latent: int = 8, seed: int = 0,
                       safetensors: bool = False, dropout: float = 0.1) -> Path:
    from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    texts = list(texts)
    wordpiece = BertWordPieceTokenizer(lowercase=False)
    wordpiece.train_from_iterator(texts, vocab_size=120, min_frequency=1, show_progress=False,
                                  special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    wordpiece.save_model(str(root))  # vocab.txt
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=1, show_progress=False,
                            special_tokens=["<|endoftext|>"])
    bpe.save_model(str(root))  # vocab.json, merges.txt
    bert_vocab = wordpiece.get_vocab_size()
    gpt2_vocab = bpe.get_vocab_size() + 3  # + <PAD> <BOS> <EOS>, as Optimus resizes GPT-2's embeddings

    torch.manual_seed(seed)
    bert_cfg = {"vocab_size": bert_vocab, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
                "num_attention_heads": HEADS, "intermediate_size": 2 * HIDDEN, "hidden_act": "gelu",
                "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout, "max_position_embeddings": POSITIONS,
                "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12}
    encoder = BertModel(BertConfig(**bert_cfg)).state_dict()
    encoder = {k: v for k, v in encoder.items() if not k.endswith("position_ids")}
    encoder["linear.weight"] = 0.3 * torch.randn(2 * latent, HIDDEN)
    gpt2_cfg = {"vocab_size": gpt2_vocab, "n_positions": POSITIONS, "n_ctx": POSITIONS, "n_embd": HIDDEN,
                "n_layer": LAYERS, "n_head": HEADS, "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout,
                "layer_norm_epsilon": 1e-5, "initializer_range": 0.02}
    decoder = {f"transformer.{k}": v for k, v in GPT2Model(GPT2Config(**gpt2_cfg, bos_token_id=0, eos_token_id=0)).state_dict().items()}
    for layer in range(LAYERS):  # buffers the old GPT-2 code kept in its state dict
        decoder[f"transformer.h.{layer}.attn.bias"] = torch.tril(torch.ones(POSITIONS, POSITIONS)).view(
            1, 1, POSITIONS, POSITIONS)
    decoder["transformer.linear.weight"] = 0.5 * torch.randn(LAYERS * HIDDEN, latent)
    decoder["transformer.linear_emb.weight"] = 0.5 * torch.randn(HIDDEN, latent)
    decoder["lm_head.weight"] = decoder["transformer.wte.weight"]

    # pytorch_transformers 1.x wrote every attribute of its config objects
    extra = {"output_attentions": False, "output_hidden_states": False, "torchscript": False,
             "finetuning_task": None, "num_labels": 2, "pruned_heads": {}}
    for name, cfg, state in (("encoder", bert_cfg, encoder),
                             ("decoder", {**gpt2_cfg, "latent_size": latent, "summary_type": "cls_index"}, decoder)):
        directory = root / f"checkpoint-{name}-{step}"
        directory.mkdir(exist_ok=True)
        (directory / "config.json").write_text(json.dumps({**cfg, **extra}, indent=2))
        if safetensors:
            from safetensors.torch import save_file

            save_file({k: v.clone().contiguous() for k, v in state.items()}, directory / "model.safetensors")
        else:
            torch.save(state, directory / "pytorch_model.bin")
    return root


def read_tiny_weights(root: Path | str, step: int = 100) -> tuple[dict, dict]:
    root = Path(root)
    return tuple(torch.load(root / f"checkpoint-{n}-{step}" / "pytorch_model.bin", weights_only=True)
                 for n in ("encoder", "decoder"))
