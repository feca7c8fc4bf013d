"""Ingestion throughput: this pipeline vs a MaCheX-style naive baseline vs the bare decode + resample limit.

Not a test: a script that prints ratios measured in one process on one machine. All three methods read the same files
(a demo corpus in the native layouts of MIMIC-CXR (DICOM mix), PadChest (16-bit PNG) and ChestX-ray14 (8-bit PNG),
real film sizes at ``--size-scale 1``), from a warm page cache (every file is read once before timing). Methods run
in alternating rounds and the fastest round of each counts, which damps the noise of other jobs on the machine.

    python benchmarks/bench_ingest.py --n 24 --size-scale 1.0 --repeats 2

(a) pipeline  ``cxrgen.stages.index_source.build_manifest`` + ``cxrgen.stages.ingest_shard.decode_shard``: DICOM
              validity checks, modality/VOI LUT, spacing, pad-to-square, one interpolation per resolution, lossless
              16-bit PNG blobs in shard files + index row.
(b) baseline  MaCheX ``machex.py`` as documented in the project notes on the seeds' public code (seed-implementations) §1 (re-written from
              those facts): pydicom ``pixel_array``, per-image min-max to uint8, invert MONOCHROME1, PNG mode I >> 8;
              Resize(1024) on the short edge + CenterCrop(1024), 3-channel RGB, one JPEG (quality 95) per image,
              10k images per folder.
(c) limit     ``decode_image`` + ``preprocess`` of the same files, nothing written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrgen.imaging.decode import decode_image
from cxrgen.imaging.geometry import preprocess
from cxrgen.privacy import DEMO_SALT
from cxrgen.stages.build_demo_sources import build_demo_sources
from cxrgen.stages.index_source import build_manifest
from cxrgen.stages.ingest_shard import decode_shard

SOURCES = ("mimic", "padchest", "nih")
# Full-scale resampling targets: config.yaml sources.*.target_spacing_mm divided by demo.downscale (6).
TARGET_SPACING_FULL_MM = {"mimic": 0.139, "padchest": 0.143, "nih": None}
RESOLUTIONS = [256, 1024]  # Cheff x_LR / x_HR (config.yaml ingest.resolutions, full scale)
MACHEX_SIZE = 1024  # machex.py Resize(1024) + CenterCrop(1024)
MACHEX_JPEG_QUALITY = 95
MACHEX_FILES_PER_FOLDER = 10_000


# --------------------------------------------------------------------------------------------------- corpus


def build_corpus(workdir: Path, n: int, size_scale: float, seed: int) -> dict[str, Path]:
    """Demo corpus of ~n images split over SOURCES; reused when already built with the same parameters."""
    roots = {}
    per_source = [n // len(SOURCES) + (i < n % len(SOURCES)) for i in range(len(SOURCES))]
    for source, count in zip(SOURCES, per_source, strict=True):
        root = workdir / "corpus" / source
        meta_path = workdir / "corpus" / "_meta" / f"{source}.json"
        wanted = {"n_images": count, "seed": seed, "downscale": 1.0 / size_scale, "bad_fraction": 0.0}
        if meta_path.is_file() and {k: json.loads(meta_path.read_text()).get(k) for k in wanted} == wanted:
            print(f"corpus {source}: reusing {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            meta = build_demo_sources(source, root, meta_path, n_images=count, seed=seed, downscale=1.0 / size_scale,
                                      bad_fraction=0.0)
            print(f"corpus {source}: built {count} images in {meta['seconds']} s")
        roots[source] = root
    return roots


def warm_cache(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                total += len(chunk)
    return total


# --------------------------------------------------------------------------------------------------- methods


def run_pipeline(roots: dict[str, Path], store_root: Path, size_scale: float, index_seconds: list[float]) -> int:
    """Appends the wall time of the metadata indexing (a fixed cost per source, amortised on real datasets)."""
    shutil.rmtree(store_root, ignore_errors=True)
    ingested = 0
    indexing = 0.0
    for source, root in roots.items():
        started = time.perf_counter()
        manifest = build_manifest(source, root, n_shards=1, salt=DEMO_SALT.encode())
        indexing += time.perf_counter() - started
        target = TARGET_SPACING_FULL_MM[source]
        index, _, _ = decode_shard(manifest, source=source, source_root=root, shard=0, store_root=store_root,
                                   resolutions=RESOLUTIONS, geometry="pad", intensity="voi",
                                   target_spacing_mm=None if target is None else target / size_scale,
                                   progress=False)
        ingested += len(index)
    index_seconds.append(indexing)
    return ingested


def machex_load(path: Path, file_format: str) -> Image.Image:
    """8-bit image as MaCheX gets it: DICOM min-max (+ MONOCHROME1 inversion), PNG/JPG as stored (16-bit >> 8)."""
    if file_format == "dicom":
        import pydicom

        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.astype(np.float64)
        pixels = (pixels - pixels.min()) / max(float(pixels.max() - pixels.min()), 1e-12)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            pixels = 1.0 - pixels
        return Image.fromarray((pixels * 255).astype(np.uint8))
    img = Image.open(path)
    if img.mode in ("I", "I;16", "I;16B"):  # machex shifts mode I; newer Pillow reports I;16 (the intent is the same)
        return Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8))
    return img


def machex_transform(img: Image.Image, size: int = MACHEX_SIZE) -> Image.Image:
    """torchvision Resize(size) (short edge, bilinear on PIL) + CenterCrop(size), then RGB."""
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    return img.crop((left, top, left + size, top + size)).convert("RGB")


def run_baseline(files: list[tuple[Path, str]], out_dir: Path) -> int:
    shutil.rmtree(out_dir, ignore_errors=True)
    done = 0
    for i, (path, file_format) in enumerate(files):
        folder = out_dir / f"{i // MACHEX_FILES_PER_FOLDER:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            img = machex_transform(machex_load(path, file_format))
        except Exception as exc:  # the reference has no rejection path; count and go on
            print(f"baseline: {path.name}: {type(exc).__name__}")
            continue
        img.save(folder / f"{i:06d}.jpg", quality=MACHEX_JPEG_QUALITY)
        done += 1
    return done


def run_limit(files: list[tuple[Path, str]], spacing_targets: list[float | None]) -> int:
    done = 0
    for (path, file_format), target in zip(files, spacing_targets, strict=True):
        decoded = decode_image(path, file_format=file_format)
        preprocess(decoded, target_spacing_mm=target, policy="pad", resolutions=RESOLUTIONS)
        done += 1
    return done


# --------------------------------------------------------------------------------------------------- main


def _timed(fn, *args) -> tuple[int, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    count = fn(*args)
    return count, time.perf_counter() - wall, time.process_time() - cpu


def _bytes_under(path: Path, suffix: str) -> int:
    return sum(p.stat().st_size for p in path.rglob(f"*{suffix}") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=24, help="images in the corpus (split over mimic/padchest/nih)")
    parser.add_argument("--size-scale", type=float, default=1.0, help="1.0 = real film sizes; 0.5 = half the pixels")
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds; the fastest round counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keeps the corpus between runs (default: temp)")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cxrgen-bench-ingest-"))
    workdir.mkdir(parents=True, exist_ok=True)
    roots = build_corpus(workdir, args.n, args.size_scale, args.seed)

    files, targets, formats = [], [], []
    for source, root in roots.items():
        manifest = build_manifest(source, root, n_shards=1, salt=DEMO_SALT.encode())
        usable = manifest[manifest["reject_reason"].isna()]
        files += [(root / p, f) for p, f in zip(usable["rel_path"], usable["file_format"], strict=True)]
        target = TARGET_SPACING_FULL_MM[source]
        targets += [None if target is None else target / args.size_scale] * len(usable)
        formats += [f"{source}:{f}" for f in usable["file_format"]]
    source_bytes = warm_cache([p for p, _ in files])
    print(f"\n{len(files)} files, {source_bytes / len(files) / 1e6:.2f} MB per file on average "
          f"({pd.Series(formats).value_counts().to_dict()}); cpus={os.cpu_count()}, load={os.getloadavg()[0]:.1f}")

    best: dict[str, tuple[int, float, float]] = {}
    index_seconds: list[float] = []
    for round_ in range(args.repeats):
        for name, fn, fn_args in (
                ("pipeline", run_pipeline, (roots, workdir / "store", args.size_scale, index_seconds)),
                ("baseline", run_baseline, (files, workdir / "machex_jpeg")),
                ("limit", run_limit, (files, targets))):
            count, wall, cpu = _timed(fn, *fn_args)
            print(f"round {round_ + 1} {name:9s} {count:5d} images  wall {wall:7.1f} s  cpu {cpu:7.1f} s")
            if name not in best or wall < best[name][1]:
                best[name] = (count, wall, cpu)

    print("\nmethod      images   img/s (wall)  img/s (cpu)")
    rate = {}
    for name, (count, wall, cpu) in best.items():
        rate[name] = (count / wall, count / cpu)
        print(f"{name:10s} {count:7d} {rate[name][0]:13.2f} {rate[name][1]:12.2f}")
    count, wall, _ = best["pipeline"]
    indexing = min(index_seconds)
    print(f"pipeline without the metadata indexing ({indexing:.1f} s, fixed per source): "
          f"{count / (wall - indexing):.2f} img/s (wall)")
    for a, b in (("pipeline", "baseline"), ("pipeline", "limit")):
        print(f"ratio {a}/{b}: {rate[a][0] / rate[b][0]:.2f} (wall), {rate[a][1] / rate[b][1]:.2f} (cpu)")

    n_pipe, n_base = best["pipeline"][0], best["baseline"][0]
    print("\nbytes on disk per image")
    for res in RESOLUTIONS:
        print(f"  pipeline {res}px 16-bit PNG shards : {_bytes_under(workdir / 'store' / f'{res}px', '.bin') / n_pipe:12.0f}")
    print(f"  pipeline all resolutions           : {_bytes_under(workdir / 'store', '.bin') / n_pipe:12.0f}")
    print(f"  baseline 1024px RGB JPEG q95       : {_bytes_under(workdir / 'machex_jpeg', '.jpg') / n_base:12.0f}")
    print(f"  source files                       : {source_bytes / len(files):12.0f}")
    print(f"\nworkdir: {workdir}")


if __name__ == "__main__":
    main()
