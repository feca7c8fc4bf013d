"""Logging set-up shared by the workflow adapters: one log file per rule/job, progress bars included."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(log_path: str | Path | None, level: int = logging.INFO) -> None:
    """Send logging and stderr (tqdm progress bars, warnings) to ``log_path``."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_path, "a", buffering=1)  # noqa: SIM115 (lives for the whole job)
        sys.stderr = stream
        handlers = [logging.StreamHandler(stream)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers,
                        force=True)
    logging.captureWarnings(True)


def setup_job(log_path: str | Path | None, threads: int) -> None:
    """Logging plus CPU thread count for a compute job (torch and the BLAS/OpenMP pools)."""
    import os

    setup_logging(log_path)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(max(1, int(threads)))
