"""Rule ``build_demo_sources``: the embedded demo corpus of one source, written in its native layout."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

from cxrgen.demo.common import DemoContext


def build_demo_sources(source: str, out_root: Path, meta_path: Path, *, n_images: int, seed: int, downscale: float,
                      bad_fraction: float, noise_fraction: float = 0.0, noise_path: Path | None = None,
                      icu_stays: int = 0) -> dict:
    """Write ``n_images`` phantoms of ``source`` under ``out_root`` in the dataset's native layout and record the
    build parameters plus the fake-PHI canary strings (for the no-PHI-leak test) in ``meta_path``.

    ``noise_fraction`` of the sound files become ingestible noisy films (:mod:`cxrgen.demo.noise`); their ground truth
    (source, rel_path, kind) goes to ``noise_path`` (parquet, outside the native layout; written even when empty).

    ``icu_stays`` (MIMIC only) adds the films of that many planned ICU patients (:mod:`cxrgen.demo.icu`) on top of
    the ``n_images`` general films; the meta records their count as ``icu_films``."""
    started = time.perf_counter()
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(seed=seed, downscale=downscale, bad_fraction=bad_fraction, noise_fraction=noise_fraction)
    layout = importlib.import_module(f"cxrgen.demo.layouts.{source}")
    if icu_stays and source != "mimic":
        raise ValueError(f"demo.icu_stays: ICU patients belong to the MIMIC demo corpus, not to {source!r}")
    extra = (layout.write(out_root, n_images, ctx, icu_stays=icu_stays) if source == "mimic"
             else layout.write(out_root, n_images, ctx)) or {}
    files = sum(1 for p in out_root.rglob("*") if p.is_file())
    truth = ctx.noise.frame()
    meta = {"source": source, "n_images": n_images, "seed": seed, "downscale": downscale,
            "bad_fraction": bad_fraction, "noise_fraction": noise_fraction, "noisy_files": len(truth),
            "icu_stays": icu_stays, "icu_films": int(extra.get("icu_films", 0)),
            "files_written": files, "seconds": round(time.perf_counter() - started, 1),
            "phi_canaries": sorted(ctx.phi.canaries)}
    Path(meta_path).parent.mkdir(parents=True, exist_ok=True)
    Path(meta_path).write_text(json.dumps(meta, indent=1))
    if noise_path is not None:
        truth.to_parquet(noise_path, index=False)
    return meta
