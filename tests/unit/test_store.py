import numpy as np
import pandas as pd
import pytest

from cxrgen.store import (
    BlobFormatError,
    ShardStore,
    ShardWriter,
    blob_format,
    decode_blob,
    decode_png16,
    encode_blob,
    encode_png16,
    shard_path,
)
from cxrgen.store.codec import encode_cxrz


def _images(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 65536, (size, size), dtype=np.uint16) for _ in range(n)]


def _write(tmp_path, images, source="nih", shard=0, res=32, codec="cxrz"):
    rows = []
    with ShardWriter(shard_path(tmp_path, res, source, shard), codec=codec) as writer:
        for i, image in enumerate(images):
            offset, nbytes, digest = writer.append(image)
            rows.append({"image_id": f"{source}-{shard}-{i}", "source": source, "shard": shard,
                         f"offset_{res}": offset, f"nbytes_{res}": nbytes, f"sha256_{res}": digest})
    return pd.DataFrame(rows)


def test_png16_roundtrip_is_lossless():  # the format of stores written before CXRZ
    image = _images(1, 48)[0]
    np.testing.assert_array_equal(decode_png16(encode_png16(image)), image)
    with pytest.raises(ValueError):
        encode_png16(image.astype(np.float32))


def test_random_access_across_shards(tmp_path):
    a, b = _images(5, 32, seed=1), _images(4, 32, seed=2)
    index = pd.concat([_write(tmp_path, a, shard=0), _write(tmp_path, b, shard=1)], ignore_index=True)
    store = ShardStore(tmp_path, index.sample(frac=1, random_state=0), verify=True)
    for position in range(len(store)):
        image_id = store.index.iloc[position]["image_id"]
        _, shard, i = image_id.split("-")
        expected = (a if shard == "0" else b)[int(i)]
        np.testing.assert_array_equal(store.read(position, 32), expected)
    np.testing.assert_array_equal(store.read_id("nih-1-3", 32), b[3])
    assert store.read_float(0, 32).max() <= 1.0


def test_checksum_detects_corruption(tmp_path):
    index = _write(tmp_path, _images(3, 32))
    path = shard_path(tmp_path, 32, "nih", 0)
    data = bytearray(path.read_bytes())
    data[int(index.loc[1, "offset_32"]) + 60] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(OSError, match="checksum mismatch"):
        ShardStore(tmp_path, index, verify=True).read(1, 32)


def test_failed_writer_leaves_no_shard(tmp_path):
    path = shard_path(tmp_path, 32, "nih", 0)
    with pytest.raises(RuntimeError), ShardWriter(path) as writer:
        writer.append(_images(1, 32)[0])
        raise RuntimeError("killed")
    assert not path.exists() and not list(path.parent.glob("*.partial"))


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (3, 5), (31, 17), (64, 64), (127, 255)])
def test_cxrz_roundtrip_is_bit_exact(shape):
    rng = np.random.default_rng(sum(shape))
    extremes = np.array([0, 1, 65534, 65535], dtype=np.uint16)  # wrap-around of the delta filter
    for image in (rng.integers(0, 65536, shape, dtype=np.uint16), rng.choice(extremes, shape).astype(np.uint16),
                  np.full(shape, 65535, np.uint16), np.asfortranarray(rng.integers(0, 4096, shape, dtype=np.uint16)),
                  rng.integers(0, 65536, (shape[0], shape[1] * 2), dtype=np.uint16)[:, ::2]):  # non-contiguous
        for blob in (encode_blob(image), encode_cxrz(image, delta=True), encode_cxrz(image, delta=False)):
            assert blob_format(blob) == "cxrz-1" and blob[16:20] == b"\x28\xb5\x2f\xfd"  # a standard zstd frame
            decoded = decode_blob(blob)
            assert decoded.dtype == np.uint16 and decoded.shape == image.shape
            np.testing.assert_array_equal(decoded, image)
    with pytest.raises(ValueError, match="2-D uint16"):
        encode_blob(np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="allowed: cxrz, png"):
        encode_blob(np.zeros((4, 4), np.uint16), codec="webp")


def test_smooth_films_compress_and_large_ones_get_the_delta_filter():
    yy, xx = np.mgrid[0:300, 0:300]
    film = (20000 + 100 * yy + 50 * xx).astype(np.uint16)
    assert encode_blob(film)[5] == 1 and encode_blob(film[:256, :256])[5] == 0  # > 256^2 pixels: delta
    assert len(encode_blob(film)) < film.nbytes / 10


def test_old_png_stores_stay_readable(tmp_path):
    """A store written before the CXRZ codec (PNG blobs) reads as before, also next to CXRZ shards."""
    old, new = _images(3, 32, seed=3), _images(2, 32, seed=4)
    index = pd.concat([_write(tmp_path, old, shard=0, codec="png"), _write(tmp_path, new, shard=1)],
                      ignore_index=True)
    store = ShardStore(tmp_path, index, verify=True)
    assert blob_format(store.read_blob(0, 32)) == "png" and blob_format(store.read_blob(3, 32)) == "cxrz-1"
    for position, expected in enumerate(old + new):
        np.testing.assert_array_equal(store.read(position, 32), expected)
    batch = store.read_batch([4, 0, 0], 32)
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch, np.stack([store.read_float(p, 32) for p in (4, 0, 0)]))


@pytest.mark.parametrize(("patch", "message"), [
    (b"GIF89a\x00\x00", "nih-0-1 .* unknown blob format .*forcerun ingest_shard"),
    (b"CXRZ\x02\x01", "nih-0-1 .* format version 2 .* newer cxrgen"),
])
def test_unknown_blob_format_fails_with_a_clear_message(tmp_path, patch, message):
    index = _write(tmp_path, _images(3, 32))
    path = shard_path(tmp_path, 32, "nih", 0)
    data = bytearray(path.read_bytes())
    start = int(index.loc[1, "offset_32"])
    data[start : start + len(patch)] = patch
    path.write_bytes(bytes(data))
    store = ShardStore(tmp_path, index)  # no checksum check: the format check alone must catch it
    np.testing.assert_array_equal(store.read(0, 32), _images(3, 32)[0])
    with pytest.raises(BlobFormatError, match=message):
        store.read(1, 32)


def test_corrupt_cxrz_payload_is_an_error_not_garbage(tmp_path):
    index = _write(tmp_path, _images(2, 32))
    path = shard_path(tmp_path, 32, "nih", 0)
    data = bytearray(path.read_bytes())
    data[int(index.loc[0, "offset_32"]) + 18] ^= 0xFF  # inside the zstd frame header
    path.write_bytes(bytes(data))
    with pytest.raises(OSError, match="checksum mismatch"):
        ShardStore(tmp_path, index, verify=True).read(0, 32)
    with pytest.raises(OSError, match="corrupt CXRZ blob"):
        ShardStore(tmp_path, index).read(0, 32)
    with pytest.raises(OSError, match="truncated CXRZ blob"):
        decode_blob(b"CXRZ\x01")


def test_each_process_opens_each_shard_once(tmp_path):
    """One descriptor per shard file per process: reads reuse it; a pickled store (a DataLoader worker's copy)
    carries none and opens its own."""
    import pickle

    index = pd.concat([_write(tmp_path, _images(4, 32, seed=5), shard=0), _write(tmp_path, _images(3, 32, seed=6),
                                                                                  shard=1)], ignore_index=True)
    store = ShardStore(tmp_path, index)
    for position in [0, 5, 1, 6, 2, 3, 4] * 3:
        store.read(position, 32)
    assert len(store._fds) == 2
    copy = pickle.loads(pickle.dumps(store))
    assert copy._fds == {}
    np.testing.assert_array_equal(copy.read(6, 32), store.read(6, 32))
    assert len(copy._fds) == 1


def test_dataloader_workers_read_the_store(tmp_path):
    torch = pytest.importorskip("torch")
    from cxrgen.labels import LABEL_COLUMNS
    from cxrgen.train.data import StoreImages

    images = _images(6, 32, seed=7)
    rows = _write(tmp_path, images).assign(report_findings="", report_impression="",
                                           **dict.fromkeys(LABEL_COLUMNS, np.nan))
    dataset = StoreImages(tmp_path, rows, 32)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[[5, 0, 3], [1, 1, 4]], num_workers=2)
    got = torch.cat([batch["image"] for batch in loader])
    expected = np.stack([images[i] for i in (5, 0, 3, 1, 1, 4)]).astype(np.float32) / 65535.0 * 2 - 1
    np.testing.assert_allclose(got[:, 0].numpy(), expected, atol=1e-6)
