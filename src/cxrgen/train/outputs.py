"""Publishing a stage's output directory: built under ``<out>.tmp`` and swapped in at the very end, so a job killed
while writing never leaves a half-written directory that Snakemake (or a user) could take for a finished one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def staging_dir(out_dir: Path | str) -> Path:
    """A fresh ``<out_dir>.tmp`` to build the output in."""
    tmp = Path(str(out_dir) + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: Path | str, out_dir: Path | str) -> Path:
    """Replace ``out_dir`` by the finished ``tmp`` directory."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
