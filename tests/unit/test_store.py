import numpy as np
import pandas as pd
import pytest

from cxrgen.store import ShardStore, ShardWriter, decode_png16, encode_png16, shard_path


def _images(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 65536, (size, size), dtype=np.uint16) for _ in range(n)]


def _write(tmp_path, images, source="nih", shard=0, res=32):
    rows = []
    with ShardWriter(shard_path(tmp_path, res, source, shard)) as writer:
        for i, image in enumerate(images):
            offset, nbytes, digest = writer.append(image)
            rows.append({"image_id": f"{source}-{shard}-{i}", "source": source, "shard": shard,
                         f"offset_{res}": offset, f"nbytes_{res}": nbytes, f"sha256_{res}": digest})
    return pd.DataFrame(rows)


def test_png16_roundtrip_is_lossless():
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
