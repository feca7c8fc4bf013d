"""Ingestion throughput: this pipeline vs a MaCheX-style naive baseline vs the decode-only floor, and its per-image budget.

Not a test: a script that prints ratios measured in one process on one machine. All three methods read the same files
(a demo corpus in the native layouts of MIMIC-CXR (DICOM mix), PadChest (16-bit PNG) and ChestX-ray14 (8-bit PNG),
real film sizes at ``--size-scale 1``), from a warm page cache (every file is read once before timing). Methods run
in alternating rounds and the fastest round of each counts, which damps the noise of other jobs on the machine.

    python benchmarks/bench_ingest.py --n 24 --size-scale 1.0 --repeats 2

(a) pipeline  ``cxrgen.stages.index_source.build_manifest`` + ``cxrgen.stages.ingest_shard.decode_shard``: DICOM
              validity checks, JPEG 2000 at the coarsest resolution level the outputs allow, modality/VOI LUT,
              spacing, pad-to-square, Lanczos to 1024 px and 256 px from it, lossless 16-bit CXRZ blobs in shard
              files + sha256 + index row.
(a-) pipeline, full decode: the same with ``reduced_decode=False`` (every film decoded in full).
(a0) pipeline without the first-image checks of each shard (``checks=False``): the per-image cost of a real shard of
              thousands of films, where the checks (one extra resampling, one full JPEG 2000 decode) are amortised;
              the benchmark's shards hold 8 films.
(b) baseline  MaCheX ``machex.py`` as documented in the project notes on the seeds' public code (seed-implementations) §1 (re-written from
              those facts): pydicom ``pixel_array``, per-image min-max to uint8, invert MONOCHROME1, PNG mode I >> 8;
              Resize(1024) on the short edge + CenterCrop(1024), 3-channel RGB, one JPEG (quality 95) per image,
              10k images per folder.
(c) limit     ``decode_image`` + ``preprocess`` of the same files, nothing written.
(d) decode    decode only: pydicom ``dcmread(...).pixel_array`` / Pillow ``Image.open(...)`` + ``np.asarray``, nothing
              else: the floor any ingestion that reads the pixels pays (pydicom's own decoder plugin choice).
(d*) decode*  the same with the decoder plugin the pipeline prefers (``cxrgen.imaging.decode.PREFERRED_PLUGIN``).

Then a per-image budget (CPU seconds per image, one pass over the files, each step timed on its own) of the steps
(decode, checks + LUT, resample, encode, hash) as the pipeline runs them now and as it ran them before issue 16
(full decode with pydicom's plugin choice, intensity steps on every pixel, Lanczos from the film per resolution,
16-bit PNG), and the max abs differences of the stored pixels between the resampling paths and between a reduced and a
full JPEG 2000 decode.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

import cxrgen.imaging.decode as decode_module
from cxrgen.imaging.decode import decode_image
from cxrgen.imaging.geometry import _placement, film_reduction_room, preprocess, to_uint16
from cxrgen.privacy import DEMO_SALT
from cxrgen.stages.build_demo_sources import build_demo_sources
from cxrgen.stages.index_source import build_manifest
from cxrgen.stages.ingest_shard import decode_shard
from cxrgen.store import encode_blob

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


def run_pipeline(roots: dict[str, Path], store_root: Path, size_scale: float, index_seconds: list[float],
                 reduced_decode: bool = True, checks: bool = True) -> int:
    """Appends the (wall, CPU) time of the metadata indexing (a fixed cost per source, amortised on real datasets). The
    index parts go to ``<store_root>_index/`` (``bench_codecs.py`` reads the store through them)."""
    shutil.rmtree(store_root, ignore_errors=True)
    index_dir = store_root.with_name(store_root.name + "_index")  # <workdir>/store_index
    index_dir.mkdir(parents=True, exist_ok=True)
    ingested = 0
    indexing = np.zeros(2)  # wall, CPU
    for source, root in roots.items():
        started = np.array([time.perf_counter(), time.process_time()])
        manifest = build_manifest(source, root, n_shards=1, salt=DEMO_SALT.encode())
        indexing += np.array([time.perf_counter(), time.process_time()]) - started
        target = TARGET_SPACING_FULL_MM[source]
        index, _, _ = decode_shard(manifest, source=source, source_root=root, shard=0, store_root=store_root,
                                   resolutions=RESOLUTIONS, geometry="pad", intensity="voi",
                                   target_spacing_mm=None if target is None else target / size_scale,
                                   progress=False, reduced_decode=reduced_decode, checks=checks)
        index.to_parquet(index_dir / f"{source}.parquet", index=False)
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


def decode_only(path: Path, file_format: str, fastest: bool = False) -> np.ndarray:
    """pydicom ``pixel_array`` with pydicom's own plugin choice (or, ``fastest``, the pipeline's preferred plugin:
    ``cxrgen.imaging.decode.PREFERRED_PLUGIN``), or Pillow load; nothing else."""
    if file_format == "dicom":
        import pydicom

        ds = pydicom.dcmread(path)
        return decode_module._pixel_array(ds, ds.file_meta.TransferSyntaxUID) if fastest else ds.pixel_array
    with Image.open(path) as img:
        return np.asarray(img)


def reduction_room(target: float | None):
    """The pipeline's ``reduction_room`` for ``preprocess(target_spacing_mm=target, policy="pad", RESOLUTIONS)``."""
    def room(rows: int, cols: int, spacing) -> float:
        return film_reduction_room((rows, cols), spacing, target_spacing_mm=target, policy="pad", canvas_mm=None,
                                   resolutions=RESOLUTIONS)
    return room


def decode_stored(path: Path, file_format: str, room) -> np.ndarray:
    """The pipeline's decode step alone: JPEG 2000 at the reduced level ``decode_image`` would use, everything else
    as (d*)."""
    if file_format == "dicom":
        import pydicom

        ds = pydicom.dcmread(path)
        ts = ds.file_meta.TransferSyntaxUID
        reduced = decode_module._reduced_j2k(ds, ts, decode_module._dicom_spacing(ds, None)[0], room)
        return reduced[0] if reduced is not None else decode_module._pixel_array(ds, ts)
    with Image.open(path) as img:
        return np.asarray(img)


def run_decode(files: list[tuple[Path, str]], fastest: bool = False) -> int:
    for path, file_format in files:
        decode_only(path, file_format, fastest)
    return len(files)


def run_limit(files: list[tuple[Path, str]], spacing_targets: list[float | None]) -> int:
    done = 0
    for (path, file_format), target in zip(files, spacing_targets, strict=True):
        decoded = decode_image(path, file_format=file_format)
        preprocess(decoded, target_spacing_mm=target, policy="pad", resolutions=RESOLUTIONS)
        done += 1
    return done


# --------------------------------------------------------------------------------------------------- budget


def _cpu(fn, *args, **kwargs):
    started = time.process_time()
    out = fn(*args, **kwargs)
    return out, time.process_time() - started


def _content_hash(content: np.ndarray) -> str:
    return hashlib.sha256(content.tobytes() + str(content.shape).encode()).hexdigest()


def _encode_all(images: dict[int, np.ndarray], codec: str) -> list[bytes]:
    return [encode_blob(image, codec) for image in images.values()]


def _hash_all(decoded, blobs: list[bytes]) -> list[str]:
    """As ingest_shard: the content hash of the decoded film + the blob hashes."""
    content = np.round(decoded.pixels * 65535).astype(np.uint16)
    return [_content_hash(content)] + [hashlib.sha256(blob).hexdigest() for blob in blobs]


def reduce_first(decoded, target: float | None) -> dict[int, np.ndarray]:
    """The alternative not taken: the largest resolution through Pillow's integer box reduce first (``reducing_gap=1``:
    the largest integer factor not above the scale) and then Lanczos; the smaller from it as the pipeline does."""
    out = {}
    largest = max(RESOLUTIONS)
    box, top, left, height, width = _placement(decoded, target_spacing_mm=target, policy="pad", canvas_mm=None,
                                               size=largest)
    if height >= box[3] - box[1]:  # not a reduction: the pipeline's own path (bicubic up, or no resampling)
        return preprocess(decoded, target_spacing_mm=target, policy="pad", resolutions=RESOLUTIONS)
    content = np.asarray(Image.fromarray(decoded.pixels).resize((width, height), Image.Resampling.LANCZOS, box=box,
                                                                reducing_gap=1.0), dtype=np.float32)
    for size in sorted(RESOLUTIONS, reverse=True):
        _, top, left, h, w = _placement(decoded, target_spacing_mm=target, policy="pad", canvas_mm=None, size=size)
        part = content if size == largest else np.asarray(Image.fromarray(content).resize(
            (w, h), Image.Resampling.LANCZOS), dtype=np.float32)
        square = np.zeros((size, size), np.float32)
        square[top : top + h, left : left + w] = part
        out[size] = to_uint16(square)
    return out


def budget(files: list[tuple[Path, str]], spacing_targets: list[float | None]) -> tuple[dict, dict, dict]:
    """CPU seconds per image of each step, now and before issue 16, and the pixel differences of the resampling.
    The hash step: sha256 of the blobs and of the decoded content."""
    now = dict.fromkeys(("decode", "checks + LUT", "resample", "encode", "hash"), 0.0)
    before = dict(now)
    diff = {res: [0, 0.0] for res in RESOLUTIONS}  # max abs, sum of mean abs (levels of 65535)
    alt = {res: [0, 0.0] for res in RESOLUTIONS}
    reduced_diff = {res: [0, 0.0] for res in RESOLUTIONS}
    n_reduced = 0
    alt_seconds = 0.0
    preferred = decode_module.PREFERRED_PLUGIN
    for (path, file_format), target in zip(files, spacing_targets, strict=True):
        room = reduction_room(target)
        _, seconds = _cpu(decode_stored, path, file_format, room)
        now["decode"] += seconds
        _, seconds = _cpu(decode_only, path, file_format, False)
        before["decode"] += seconds
        reduced, seconds = _cpu(decode_image, path, file_format=file_format, reduction_room=room)
        now["checks + LUT"] += seconds  # decode + checks + LUT; the decode is subtracted at the end
        decoded = decode_image(path, file_format=file_format)  # the full film
        decode_module.PREFERRED_PLUGIN = ""  # before issue 16: pydicom's own plugin choice
        try:
            old, seconds_old = _cpu(decode_image, path, file_format=file_format, lookup=False)
        finally:
            decode_module.PREFERRED_PLUGIN = preferred
        before["checks + LUT"] += seconds_old
        if not np.array_equal(old.pixels, decoded.pixels):
            raise AssertionError(f"{path.name}: lookup decoding differs from per-pixel decoding")
        kwargs = dict(target_spacing_mm=target, policy="pad", resolutions=RESOLUTIONS)
        stored, seconds = _cpu(preprocess, reduced, **kwargs)
        now["resample"] += seconds
        images = preprocess(decoded, **kwargs)
        reference, seconds = _cpu(preprocess, decoded, chain=False, **kwargs)
        before["resample"] += seconds
        if reduced.reduction > 1:
            n_reduced += 1
            for res in RESOLUTIONS:
                delta = np.abs(stored[res].astype(np.int64) - images[res].astype(np.int64))
                reduced_diff[res][0] = max(reduced_diff[res][0], int(delta.max()))
                reduced_diff[res][1] += float(delta.mean())
        for res in RESOLUTIONS:
            delta = np.abs(images[res].astype(np.int64) - reference[res].astype(np.int64))
            diff[res][0] = max(diff[res][0], int(delta.max()))
            diff[res][1] += float(delta.mean())
        fast, seconds = _cpu(reduce_first, decoded, target)
        alt_seconds += seconds
        for res in RESOLUTIONS:
            delta = np.abs(fast[res].astype(np.int64) - reference[res].astype(np.int64))
            alt[res][0] = max(alt[res][0], int(delta.max()))
            alt[res][1] += float(delta.mean())
        blobs, seconds = _cpu(_encode_all, stored, "cxrz")
        now["encode"] += seconds
        png_blobs, seconds = _cpu(_encode_all, reference, "png")
        before["encode"] += seconds
        _, seconds = _cpu(_hash_all, reduced, blobs)
        now["hash"] += seconds
        _, seconds = _cpu(_hash_all, old, png_blobs)
        before["hash"] += seconds
    for table in (now, before):
        table["checks + LUT"] -= table["decode"]  # decode_image = decode + checks + LUT
    n = len(files)
    before["resample, integer reduce first (not used)"] = alt_seconds
    return ({k: v / n for k, v in now.items()}, {k: v / n for k, v in before.items()},
            {res: (mx, total / n) for res, (mx, total) in diff.items()},
            {res: (mx, total / n) for res, (mx, total) in alt.items()},
            (n_reduced, {res: (mx, total / max(n_reduced, 1)) for res, (mx, total) in reduced_diff.items()}))


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
    parser.add_argument("--skip-budget", action="store_true", help="no per-image budget pass")
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

    best_wall: dict[str, tuple[int, float]] = {}
    best_cpu: dict[str, tuple[int, float]] = {}
    index_seconds: list[float] = []
    for round_ in range(args.repeats):
        for name, fn, fn_args in (
                ("pipeline", run_pipeline, (roots, workdir / "store", args.size_scale, index_seconds)),
                ("pipeline-", run_pipeline, (roots, workdir / "store_full", args.size_scale, [], False)),
                ("pipeline0", run_pipeline, (roots, workdir / "store_nocheck", args.size_scale, [], True, False)),
                ("baseline", run_baseline, (files, workdir / "machex_jpeg")),
                ("decode", run_decode, (files,)),
                ("decode*", run_decode, (files, True)),
                ("limit", run_limit, (files, targets))):
            count, wall, cpu = _timed(fn, *fn_args)
            print(f"round {round_ + 1} {name:9s} {count:5d} images  wall {wall:7.1f} s  cpu {cpu:7.1f} s  "
                  f"load {os.getloadavg()[0]:.1f}")
            if name not in best_wall or wall < best_wall[name][1]:
                best_wall[name] = (count, wall)
            if name not in best_cpu or cpu < best_cpu[name][1]:
                best_cpu[name] = (count, cpu)

    print("\nmethod      images   img/s (wall)  img/s (cpu)")
    rate = {}
    for name in best_wall:
        rate[name] = (best_wall[name][0] / best_wall[name][1], best_cpu[name][0] / best_cpu[name][1])
        print(f"{name:10s} {best_wall[name][0]:7d} {rate[name][0]:13.2f} {rate[name][1]:12.2f}")
    count, wall = best_wall["pipeline"]
    index_wall, index_cpu = min(w for w, _ in index_seconds), min(c for _, c in index_seconds)
    rate["pipeline w/o index"] = (count / (wall - index_wall), count / (best_cpu["pipeline"][1] - index_cpu))
    print(f"pipeline without the metadata indexing ({index_wall:.2f} s wall, {index_cpu:.2f} s CPU, fixed per "
          f"source): {rate['pipeline w/o index'][0]:.2f} img/s (wall), {rate['pipeline w/o index'][1]:.2f} (cpu)")
    for a, b in (("pipeline", "baseline"), ("pipeline", "decode"), ("pipeline", "decode*"), ("pipeline", "limit"),
                 ("pipeline", "pipeline-"), ("pipeline-", "baseline"), ("pipeline-", "decode"),
                 ("pipeline0", "baseline"), ("pipeline0", "decode"), ("pipeline0", "decode*"),
                 ("pipeline w/o index", "baseline"), ("pipeline w/o index", "decode"),
                 ("pipeline w/o index", "decode*"), ("decode*", "decode"), ("decode", "baseline")):
        print(f"ratio {a}/{b}: {rate[a][0] / rate[b][0]:.2f} (wall), {rate[a][1] / rate[b][1]:.2f} (cpu)")

    n_pipe, n_base = best_wall["pipeline"][0], best_wall["baseline"][0]
    print("\nbytes on disk per image")
    for res in RESOLUTIONS:
        print(f"  pipeline {res}px 16-bit CXRZ shards: {_bytes_under(workdir / 'store' / f'{res}px', '.bin') / n_pipe:12.0f}")
    print(f"  pipeline all resolutions           : {_bytes_under(workdir / 'store', '.bin') / n_pipe:12.0f}")
    print(f"  baseline 1024px RGB JPEG q95       : {_bytes_under(workdir / 'machex_jpeg', '.jpg') / n_base:12.0f}")
    print(f"  source files                       : {source_bytes / len(files):12.0f}")

    if not args.skip_budget:
        now, before, diff, alt, (n_reduced, reduced_diff) = budget(files, targets)
        alternative = before.pop("resample, integer reduce first (not used)")
        pipeline_cpu = best_cpu["pipeline"][1] / best_cpu["pipeline"][0]
        print(f"\nper-image budget (CPU ms per image, {len(files)} images, load {os.getloadavg()[0]:.1f})")
        print("step              now   before")
        for step in now:
            print(f"{step:14s} {now[step] * 1e3:7.1f} {before[step] * 1e3:8.1f}")
        print(f"{'sum':14s} {sum(now.values()) * 1e3:7.1f} {sum(before.values()) * 1e3:8.1f}")
        print(f"pipeline (a), measured: {pipeline_cpu * 1e3:.1f} ms per image; not in the steps (first-image checks, "
              f"index rows, manifest, writes): {(pipeline_cpu - sum(now.values())) * 1e3:.1f} ms")
        no_checks_cpu = best_cpu["pipeline0"][1] / best_cpu["pipeline0"][0]
        print(f"pipeline without the first-image checks (a0), measured: {no_checks_cpu * 1e3:.1f} ms per image; not "
              f"in the steps: {(no_checks_cpu - sum(now.values())) * 1e3:.1f} ms")
        print("stored pixels, now vs before (levels of 65535): "
              + ", ".join(f"{res}px max abs {mx}, mean abs {mean:.2f}" for res, (mx, mean) in diff.items()))
        print(f"reduced vs full JPEG 2000 decode ({n_reduced} films decoded at a reduced level), stored pixels: "
              + ", ".join(f"{res}px max abs {mx}, mean abs {mean:.2f}" for res, (mx, mean) in reduced_diff.items()))
        print(f"not used: integer box reduce first (Pillow reducing_gap=1) + Lanczos: {alternative * 1e3:.1f} ms per "
              "image; vs before: "
              + ", ".join(f"{res}px max abs {mx}, mean abs {mean:.2f}" for res, (mx, mean) in alt.items()))
    print(f"\nworkdir: {workdir}")


if __name__ == "__main__":
    main()
