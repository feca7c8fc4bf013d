import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from test_autoencoder import RES, tiny_cfg, tiny_store

from cxrgen.data.latents import LatentDataset, StaleLatentsError, load_latents
from cxrgen.hashing import dir_digest
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.models.autoencoder import build_autoencoder, save_autoencoder
from cxrgen.stages.cache_latents import cache_latents
from cxrgen.train.data import StoreImages, select_rows


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    (root / "store").mkdir()
    index = tiny_store(root / "store")
    torch.manual_seed(0)
    vae = build_autoencoder(tiny_cfg(), RES)
    vae.register_to_config(scaling_factor=0.8)
    save_autoencoder(vae, root / "ae")
    metrics = cache_latents(index_path=root / "store/index.parquet", store_root=root / "store", resolution=RES,
                            ae_dir=root / "ae", out_dir=root / "latents", splits=("train", "val"), batch_size=5)
    return root, index, vae.eval(), metrics


def test_cache_round_trip_matches_direct_encoding(cached):
    root, index, vae, metrics = cached
    cache = load_latents(root / "latents", ae_dir=root / "ae")
    rows = select_rows(index, splits=["train", "val"])
    assert metrics["n"] == len(rows) == len(cache.index) == 20 and metrics["shape"] == [20, 3, 8, 8]
    assert cache.mean.shape == cache.std.shape == (20, 3, 8, 8) and cache.mean.dtype == np.float32
    assert cache.scaling_factor == pytest.approx(0.8)
    assert cache.meta["autoencoder_sha256"] == dir_digest(root / "ae")
    assert list(cache.index["image_id"]) == list(rows["image_id"]) and list(cache.index["row"]) == list(range(20))
    images = StoreImages(root / "store", rows, RES)
    with torch.no_grad():
        posterior = vae.encode(torch.stack([images.image(i) for i in range(len(rows))])).latent_dist
    np.testing.assert_allclose(cache.mean, posterior.mean.numpy(), rtol=1e-4, atol=1e-5)  # unscaled
    np.testing.assert_allclose(cache.std, posterior.std.numpy(), rtol=1e-4, atol=1e-6)
    assert set(cache.index["split"]) == {"train", "val"}  # test split not requested
    expected_text = (rows["report_findings"].fillna("") + " " + rows["report_impression"]).str.strip()
    assert list(cache.index["text"]) == list(expected_text)
    pd.testing.assert_frame_equal(cache.index[list(LABEL_COLUMNS)], rows[list(LABEL_COLUMNS)].astype(np.float32))
    assert not (root / "latents.tmp").exists()


def test_dataset_gives_scaled_latents_with_conditioning(cached):
    root, index, _, _ = cached
    cache = load_latents(root / "latents")
    val = cache.rows(["val"], views=["PA"])
    assert len(val) == 3 and set(val["view"]) == {"PA"}
    item = LatentDataset(cache, val)[1]
    row = int(val.at[1, "row"])
    assert torch.allclose(item["latent"], torch.from_numpy(np.array(cache.mean[row])) * 0.8)
    assert torch.allclose(item["latent_std"], torch.from_numpy(np.array(cache.std[row])) * 0.8)
    assert item["image_id"] == val.at[1, "image_id"] and item["labels"].shape == (14,)
    assert item["text"] == val.at[1, "text"]


def test_latents_of_another_autoencoder_are_refused(cached, tmp_path):
    root, _, vae, _ = cached
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(0.01)  # retrained decoder: a different autoencoder
    save_autoencoder(vae, tmp_path / "ae2")
    with pytest.raises(StaleLatentsError, match="re-run rule cache_latents"):
        load_latents(root / "latents", ae_dir=tmp_path / "ae2")
    vae.register_to_config(scaling_factor=0.5)  # the scale factor is part of the identity too
    with torch.no_grad():
        vae.decoder.conv_out.bias.sub_(0.01)
    save_autoencoder(vae, tmp_path / "ae3")
    with pytest.raises(StaleLatentsError):
        load_latents(root / "latents", ae_dir=tmp_path / "ae3")
    with pytest.raises(FileNotFoundError, match="not a latent cache"):
        load_latents(tmp_path)


def test_meta_documents_storage(cached):
    root, *_ = cached
    meta = json.loads((root / "latents/meta.json").read_text())
    assert meta["stored"].startswith("unscaled") and meta["resolution"] == RES and meta["dtype"] == "float32"


def test_one_hash_of_the_autoencoder_on_every_path(cached, tmp_path):
    """The latent cache, the generated images' provenance and dir_digest agree on a copy of the same autoencoder
    with training reports and Snakemake's timestamp next to it."""
    from types import SimpleNamespace

    from cxrgen.stages.generate import _provenance

    root, *_ = cached
    copy = tmp_path / "elsewhere/ae"
    shutil.copytree(root / "ae", copy)
    (copy / "metrics.json").write_text('{"mlflow_run_id": "x"}')
    (copy / "reconstructions.png").write_bytes(b"png")
    (copy / ".snakemake_timestamp").touch()
    cache = load_latents(root / "latents", ae_dir=copy)  # not stale
    recorded = _provenance(SimpleNamespace(info={"autoencoder": copy}))["ae_sha"]
    assert recorded == cache.meta["autoencoder_sha256"] == dir_digest(root / "ae")
