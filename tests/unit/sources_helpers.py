"""Set-up shared by the source tests: write a demo corpus and scan it, hash a written tree, write twice."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from cxrgen.demo.common import DemoContext
from cxrgen.sources.base import get_adapter


def demo_corpus(tmp_path_factory, source: str, n_images: int, ctx: DemoContext) -> tuple[Path, DemoContext,
                                                                                       pd.DataFrame]:
    """Write ``n_images`` of ``source``'s demo layout into a fresh folder and scan it with the adapter."""
    root = tmp_path_factory.mktemp(source)
    importlib.import_module(f"cxrgen.demo.layouts.{source}").write(root, n_images, ctx)
    return root, ctx, get_adapter(source)(root, {})


def demo_corpus_fixture(source: str, n_images: int, ctx: DemoContext):
    """A module-scoped fixture giving ``(root, ctx, manifest)`` of :func:`demo_corpus`; assign it to a module-level
    name in the test module (the name is the fixture name)."""

    @pytest.fixture(scope="module")
    def corpus(tmp_path_factory) -> tuple[Path, DemoContext, pd.DataFrame]:
        return demo_corpus(tmp_path_factory, source, n_images, ctx)

    return corpus


def file_digests(root: Path) -> dict[str, str]:
    """POSIX path relative to ``root`` -> sha256 of every file below ``root``."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def write_twice(source: str, tmp_path: Path, n_images: int, seed: int, downscale: float = 16,
                bad_fraction: float = 0.0) -> tuple[dict[str, str], dict[str, str]]:
    """File digests of two independent writes of ``source`` with the same parameters."""
    layout = importlib.import_module(f"cxrgen.demo.layouts.{source}")
    digests = []
    for name in ("a", "b"):
        layout.write(tmp_path / name, n_images, DemoContext(seed=seed, downscale=downscale, bad_fraction=bad_fraction))
        digests.append(file_digests(tmp_path / name))
    return digests[0], digests[1]


def files_listed_once(root: Path, manifest: pd.DataFrame, pattern: str) -> list[str]:
    """Assert that every file matching ``pattern`` below ``root`` is the ``rel_path`` of exactly one manifest row
    (and no other row, ``missing_file`` rows aside, points at a file); return those files."""
    on_disk = sorted(p.relative_to(root).as_posix() for p in Path(root).rglob(pattern))
    assert sorted(manifest.loc[manifest["reject_reason"] != "missing_file", "rel_path"]) == on_disk
    assert not manifest["rel_path"].duplicated().any()
    return on_disk


def image_modes(root: Path, rel_paths) -> tuple[list[str], int]:
    """PIL modes of the images that decode, and how many do not."""
    modes, broken = [], 0
    for rel in rel_paths:
        try:
            with Image.open(Path(root) / rel) as im:
                im.load()
                modes.append(im.mode)
        except OSError:
            broken += 1
    return modes, broken
