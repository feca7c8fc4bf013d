"""Content hashes of model directories and modules: the one way cxrgen identifies a trained model.

:func:`dir_digest` is what every provenance record and staleness check uses (latent cache vs. autoencoder, DKIM
adapter vs. base UNet, generated images vs. the models that made them), so the same directory has the same hash
whichever stage computed it.

What counts as the model: every regular file under the directory (names relative to it, in sorted order, plus their
bytes) except

- hidden files (names starting with ``.``, e.g. Snakemake's ``.snakemake_timestamp`` in directory outputs), and
- training reports, which describe a run but do not change what the model computes: ``metrics.json``, the model card
  (``model_card.json``; ``MODEL_CARD.md``) and figures (``.png``, ``.jpg``, ``.jpeg``, ``.svg``, ``.pdf``, ``.html``,
  ``.md``, ``.log``).

Weights and configs in any format count, including files a future model type adds, so a changed weight or config
always changes the hash, and re-rendering a training figure never does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

REPORT_FILES = frozenset({"metrics.json", "model_card.json"})
REPORT_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".svg", ".pdf", ".html", ".md", ".log"})
_CHUNK = 1 << 20


def model_files(path: Path | str) -> list[Path]:
    """The files :func:`dir_digest` hashes, sorted by their path relative to ``path``."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    files = []
    for file in root.rglob("*"):
        relative = file.relative_to(root)
        if not file.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if file.name in REPORT_FILES or file.suffix.lower() in REPORT_SUFFIXES:
            continue
        files.append(file)
    return sorted(files, key=lambda f: f.relative_to(root).as_posix())


def dir_digest(path: Path | str) -> str:
    """sha256 (hex) of a model directory: relative file names and contents of :func:`model_files`."""
    root = Path(path)
    files = model_files(root)
    if not files:
        raise FileNotFoundError(f"{root} holds no model files")
    digest = hashlib.sha256()
    for file in files:
        name = file.relative_to(root).as_posix().encode()
        digest.update(len(name).to_bytes(8, "little") + name)
        digest.update(file.stat().st_size.to_bytes(8, "little"))
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def module_digest(module) -> str:
    """sha256 (hex) of an in-memory ``torch.nn.Module``'s parameters and buffers (names, shapes, dtypes, values);
    e.g. to check that a frozen model did not change during training. Not comparable with :func:`dir_digest`."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
