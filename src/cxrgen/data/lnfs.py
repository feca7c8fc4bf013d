"""What the Diff-CXR latent noise filter (rule ``filter_noise``) decided, as its consumers read it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def kept_image_ids(path: Path | str) -> set[str]:
    """Image ids LNFS keeps (``kept`` rows of ``filtered_index.parquet``): the training set of the LNFS variants."""
    frame = pd.read_parquet(path, columns=["image_id", "kept"])
    return set(frame.loc[frame["kept"].astype(bool), "image_id"])
