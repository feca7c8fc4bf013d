"""Training-read throughput: random batches from the shard store vs per-file layouts.

Not a test: a script that prints ratios measured in one process. Every layout holds the same N images; every method
reads the same random batches (batch 32, positions drawn with replacement) and returns float32 arrays. Files are read
from a warm page cache (built just before, or read once), so this measures per-image CPU cost plus per-file open/stat
overhead on a local disk; the many-small-files penalty of network file systems comes on top and is not measured.

    python benchmarks/bench_store_read.py --n 1000 --resolution 256 --batches 20

Layouts/methods:
  store          ShardStore.read_batch: one pread per image from a shard file of CXRZ blobs (this project)
  store+verify   the same with verify=True (sha256 of every blob checked against the index)
  store (PNG)    a store of the format before issue 16 (16-bit PNG blobs), read by the same ShardStore
  loader         torch DataLoader over cxrgen.train.data.StoreImages with --workers worker processes (each opens
                 the shards once), the same batches; CPU includes the workers (reaped at the end of each round)
  png16 files    one lossless 16-bit PNG file per image at the training resolution
  jpeg files     one RGB JPEG (q95) per image at the training resolution (MaCheX format, pre-resized)
  jpeg1024       the MaCheX layout itself: RGB JPEG q95 at 1024 px, resized to the training resolution on read,
                 as a model trained on MaCheX at 256 px reads it
Images: phantom chest films (``cxrgen.demo.phantom``) rendered at 1024 px with per-image noise, so compressed sizes are
those of noisy radiographs, not of flat synthetic arrays.
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

from cxrgen.demo.phantom import PhantomSpec, render_phantom
from cxrgen.imaging.geometry import resize_square, to_uint16
from cxrgen.store import ShardStore, ShardWriter, decode_png16, shard_path

HR = 1024  # MaCheX stores 1024 x 1024 (machex.py Resize(1024) + CenterCrop(1024))
JPEG_QUALITY = 95  # machex.py
FILES_PER_FOLDER = 10_000  # machex.py
FILM_MM = 430.0  # a 43 cm cassette
SOURCE = "bench"


def build_layouts(workdir: Path, n: int, resolution: int, n_bases: int, n_shards: int, seed: int) -> pd.DataFrame:
    """Write all layouts (reused when built with the same parameters); returns the store index."""
    marker = workdir / "layouts.json"
    params = {"n": n, "resolution": resolution, "bases": n_bases, "shards": n_shards, "seed": seed,
              "layouts": ["store (CXRZ)", "store_png", "png16", "jpeg", "jpeg1024"]}
    if marker.is_file() and json.loads(marker.read_text()) == params:
        print(f"reusing layouts in {workdir}")
        return pd.read_parquet(workdir / "index.parquet")
    for sub in ("store", "store_png", "png16", "jpeg", "jpeg1024"):
        shutil.rmtree(workdir / sub, ignore_errors=True)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    views = ("PA", "AP", "LATERAL")
    bases = [render_phantom(PhantomSpec(view=views[k % 3], height_px=HR, width_px=HR, spacing_mm=FILM_MM / HR,
                                        seed=seed * 1000 + k)) for k in range(n_bases)]
    writers = {s: ShardWriter(shard_path(workdir / "store", resolution, SOURCE, s)) for s in range(n_shards)}
    png_writers = {s: ShardWriter(shard_path(workdir / "store_png", resolution, SOURCE, s), codec="png")
                   for s in range(n_shards)}
    rows, png_rows = [], []
    try:
        for i in range(n):
            film = np.clip(bases[i % n_bases] * rng.uniform(0.9, 1.1) + rng.normal(0, 0.01, (HR, HR)), 0, 1)
            small = to_uint16(resize_square(film.astype(np.float32), resolution))
            shard = i % n_shards
            offset, nbytes, digest = writers[shard].append(small)
            rows.append({"image_id": f"{SOURCE}-{i:07d}", "source": SOURCE, "shard": shard,
                         f"offset_{resolution}": offset, f"nbytes_{resolution}": nbytes,
                         f"sha256_{resolution}": digest})
            offset, nbytes, digest = png_writers[shard].append(small)
            png_rows.append({**rows[-1], f"offset_{resolution}": offset, f"nbytes_{resolution}": nbytes,
                             f"sha256_{resolution}": digest})
            Image.fromarray(small).save(_path(workdir, "png16", i, ".png"), compress_level=6)
            Image.fromarray((small >> 8).astype(np.uint8)).convert("RGB").save(
                _path(workdir, "jpeg", i, ".jpg"), quality=JPEG_QUALITY)
            Image.fromarray((film * 255).astype(np.uint8)).convert("RGB").save(
                _path(workdir, "jpeg1024", i, ".jpg"), quality=JPEG_QUALITY)
    finally:
        for writer in [*writers.values(), *png_writers.values()]:
            writer.close()
    index = pd.DataFrame(rows)
    index.to_parquet(workdir / "index.parquet", index=False)
    pd.DataFrame(png_rows).to_parquet(workdir / "index_png.parquet", index=False)
    marker.write_text(json.dumps(params))
    print(f"built {n} images in 4 layouts in {time.perf_counter() - started:.0f} s")
    return index


def _path(workdir: Path, layout: str, i: int, suffix: str) -> Path:
    folder = workdir / layout / f"{i // FILES_PER_FOLDER:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{i:07d}{suffix}"


def _read_files(paths: list[Path]) -> None:
    for path in paths:
        path.read_bytes()


# --------------------------------------------------------------------------------------------------- readers


def batch_store(store: ShardStore, positions: np.ndarray, resolution: int) -> np.ndarray:
    return store.read_batch(positions, resolution)


def make_loader(workdir: Path, index: pd.DataFrame, batches: list[np.ndarray], resolution: int, workers: int):
    """A DataLoader over the project's training dataset (StoreImages) yielding exactly ``batches``."""
    import torch

    from cxrgen.labels import LABEL_COLUMNS
    from cxrgen.train.data import StoreImages

    rows = index.assign(report_findings="", report_impression="", **dict.fromkeys(LABEL_COLUMNS, np.nan))
    dataset = StoreImages(workdir / "store", rows, resolution)
    torch.set_num_threads(1)
    return torch.utils.data.DataLoader(dataset, batch_sampler=[[int(p) for p in b] for b in batches],
                                       num_workers=workers, persistent_workers=False)


def read_loader(loader) -> int:
    return sum(int(batch["image"].shape[0]) for batch in loader)


def batch_png16(workdir: Path, positions: np.ndarray, resolution: int) -> np.ndarray:
    return np.stack([decode_png16(_path(workdir, "png16", int(p), ".png").read_bytes()).astype(np.float32) / 65535.0
                     for p in positions])


def batch_jpeg(workdir: Path, positions: np.ndarray, resolution: int) -> np.ndarray:
    out = []
    for p in positions:
        with Image.open(_path(workdir, "jpeg", int(p), ".jpg")) as img:
            out.append(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)
    return np.stack(out)


def batch_jpeg1024(workdir: Path, positions: np.ndarray, resolution: int) -> np.ndarray:
    out = []
    for p in positions:
        with Image.open(_path(workdir, "jpeg1024", int(p), ".jpg")) as img:
            small = img.convert("RGB").resize((resolution, resolution), Image.BILINEAR)  # torchvision Resize default
            out.append(np.asarray(small, dtype=np.float32) / 255.0)
    return np.stack(out)


def _layout_bytes(workdir: Path, layout: str) -> tuple[int, int]:
    files = [p for p in (workdir / layout).rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def _cpu_with_children() -> float:
    """CPU seconds of this process plus its reaped children (DataLoader workers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="images per layout")
    parser.add_argument("--resolution", type=int, default=256, choices=(128, 256))
    parser.add_argument("--batches", type=int, default=20, help="random batches per method and round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds; the fastest round counts")
    parser.add_argument("--bases", type=int, default=16, help="distinct phantoms (images differ by gain and noise)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (0: no loader row)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keeps the layouts between runs (default: temp)")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cxrgen-bench-read-"))
    workdir.mkdir(parents=True, exist_ok=True)
    index = build_layouts(workdir, args.n, args.resolution, args.bases, args.shards, args.seed)
    for layout in ("store", "store_png", "png16", "jpeg", "jpeg1024"):
        _read_files([p for p in (workdir / layout).rglob("*") if p.is_file()])  # warm page cache

    res = args.resolution
    rng = np.random.default_rng(args.seed)
    batches = [rng.integers(0, len(index), args.batch_size) for _ in range(args.batches)]
    store, verified = ShardStore(workdir / "store", index), ShardStore(workdir / "store", index, verify=True)
    old_store = ShardStore(workdir / "store_png", pd.read_parquet(workdir / "index_png.parquet"))
    methods = {
        "store": lambda pos: batch_store(store, pos, res),
        "store+verify": lambda pos: batch_store(verified, pos, res),
        "store (PNG)": lambda pos: batch_store(old_store, pos, res),
        "png16 files": lambda pos: batch_png16(workdir, pos, res),
        "jpeg files": lambda pos: batch_jpeg(workdir, pos, res),
        "jpeg1024": lambda pos: batch_jpeg1024(workdir, pos, res),
    }
    loader = make_loader(workdir, index, batches, res, args.workers) if args.workers else None
    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    for read in methods.values():  # warm-up: imports, open descriptors, first-call costs
        read(batches[0])
    print(f"load {os.getloadavg()[0]:.1f}, cpus {os.cpu_count()}")
    for round_ in range(args.repeats):
        for name, read in [*methods.items(), *([(f"loader ({args.workers} workers)", None)] if loader else [])]:
            started, started_cpu = time.perf_counter(), _cpu_with_children()
            if read is None:
                assert read_loader(loader) == len(batches) * args.batch_size
            else:
                for positions in batches:
                    batch = read(positions)
                    assert batch.shape[0] == args.batch_size
            seconds, cpu = time.perf_counter() - started, _cpu_with_children() - started_cpu
            best[name] = min(best.get(name, np.inf), seconds)
            best_cpu[name] = min(best_cpu.get(name, np.inf), cpu)
            print(f"round {round_ + 1} {name:20s} wall {seconds:6.2f} s  cpu {cpu:6.2f} s")

    n_images = args.batches * args.batch_size
    print(f"\n{n_images} images per method ({args.batches} batches of {args.batch_size}) at {res}px, "
          f"{args.n} images per layout")
    print(f"load {os.getloadavg()[0]:.1f}")
    print("method               img/s wall  img/s cpu  store/method (wall, cpu)  bytes/image   files")
    store_rate, store_cpu_rate = n_images / best["store"], n_images / best_cpu["store"]
    for name, seconds in best.items():
        layout = {"store (PNG)": "store_png", "png16 files": "png16", "jpeg files": "jpeg",
                  "jpeg1024": "jpeg1024"}.get(name, "store")
        total, files = _layout_bytes(workdir, layout)
        rate, cpu_rate = n_images / seconds, n_images / best_cpu[name]
        print(f"{name:20s} {rate:11.0f} {cpu_rate:10.0f} {store_rate / rate:12.2f} {store_cpu_rate / cpu_rate:6.2f} "
              f"{total / args.n:18.0f} {files:7d}")
    print(f"\nworkdir: {workdir}")


if __name__ == "__main__":
    main()
