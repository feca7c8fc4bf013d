"""Noisy demo films for LNFS: the plan (rate, kinds, exclusions), the transforms, and that injected files ingest."""

import numpy as np
import pandas as pd
import pytest

from cxrgen.demo.noise import NOISE_KINDS, apply_noise, plan_noise
from cxrgen.demo.phantom import PhantomSpec, render_phantom
from cxrgen.privacy import DEMO_SALT
from cxrgen.stages.build_demo_sources import build_demo_sources
from cxrgen.stages.index_source import build_manifest
from cxrgen.stages.ingest_shard import decode_shard


def test_plan_rate_kinds_exclusions_and_determinism():
    keys = [f"k{i}" for i in range(200)]
    bad = {f"k{i}": "truncated" for i in range(0, 200, 10)}
    plan = plan_noise(keys, 0.07, np.random.default_rng(1), exclude=bad)
    assert len(plan) == round(0.07 * 180)
    assert not set(plan) & set(bad)
    assert set(plan.values()) == set(NOISE_KINDS)  # 13 items cycle through all 7 kinds
    assert plan == plan_noise(keys, 0.07, np.random.default_rng(1), exclude=bad)
    assert plan != plan_noise(keys, 0.07, np.random.default_rng(2), exclude=bad)
    assert plan_noise(keys, 0.0, np.random.default_rng(1)) == {}


@pytest.fixture(scope="module")
def film():
    return render_phantom(PhantomSpec(view="PA", height_px=120, width_px=100, spacing_mm=3.0, seed=4))


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_each_kind_is_a_valid_but_different_film(film, kind):
    out = apply_noise(film, kind, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    assert out.max() > out.min()  # never constant: ingestion would reject it as degenerate
    assert sorted(out.shape) == sorted(film.shape)
    same_shape = out.shape == film.shape
    assert not same_shape or np.abs(out - film).mean() > 0.02
    assert np.array_equal(out, apply_noise(film, kind, np.random.default_rng(0)))


def test_unknown_kind_names_the_allowed_ones(film):
    with pytest.raises(ValueError, match="inverted"):
        apply_noise(film, "sepia", np.random.default_rng(0))


@pytest.mark.parametrize("source", ["nih", "iuxray"])
def test_injected_files_ingest_and_clean_files_are_unchanged(tmp_path, source):
    def build(name, fraction):
        root, meta = tmp_path / name / source, tmp_path / name / "_meta"
        info = build_demo_sources(source, root, meta / f"{source}.json", n_images=30, seed=5, downscale=12,
                                  bad_fraction=0.1, noise_fraction=fraction, noise_path=meta / "noise.parquet")
        return root, info, pd.read_parquet(meta / "noise.parquet")

    root, info, truth = build("noisy", 0.25)
    clean_root, clean_info, clean_truth = build("clean", 0.0)
    assert clean_truth.empty and clean_info["noisy_files"] == 0
    assert info["noisy_files"] == len(truth) >= 5 and set(truth["source"]) == {source}
    assert truth["kind"].nunique() >= 5

    manifest = build_manifest(source, root, 1, DEMO_SALT.encode(), {})
    index, rejections, _ = decode_shard(manifest, source=source, source_root=root, shard=0,
                                        store_root=tmp_path / "store", resolutions=[32], geometry="pad",
                                        intensity="voi", target_spacing_mm=None, progress=False)
    joined = truth.merge(manifest[["rel_path", "image_id"]], on="rel_path", how="left")
    assert joined["image_id"].notna().all()
    assert joined["image_id"].isin(index["image_id"]).all()  # every noisy film reaches the store
    assert not joined["image_id"].isin(rejections["image_id"]).any()
    # bad-file rejection is untouched: the clean and the noisy build reject the same files for the same reasons
    clean_manifest = build_manifest(source, clean_root, 1, DEMO_SALT.encode(), {})
    _, clean_rejections, _ = decode_shard(clean_manifest, source=source, source_root=clean_root, shard=0,
                                          store_root=tmp_path / "store_clean", resolutions=[32], geometry="pad",
                                          intensity="voi", target_spacing_mm=None, progress=False)
    assert sorted(rejections["reason"]) == sorted(clean_rejections["reason"]) and len(rejections) > 0
    # files that are not noisy are byte-identical to the build without noise
    noisy_paths = set(truth["rel_path"])
    compared = 0
    for path in clean_root.rglob("*"):
        rel = path.relative_to(clean_root).as_posix()
        if path.is_file() and rel not in noisy_paths and path.suffix in (".png", ".dcm"):
            assert (root / rel).read_bytes() == path.read_bytes(), rel
            compared += 1
    assert compared > 10
