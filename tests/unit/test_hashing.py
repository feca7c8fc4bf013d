"""cxrgen.hashing.dir_digest: one content hash per model directory, whatever copy, location or report files."""

import shutil

import pytest
import torch

from cxrgen.hashing import dir_digest, model_files, module_digest


def _model_dir(root):
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "weights.safetensors").write_bytes(b"\x00\x01\x02")
    (root / "sub").mkdir()
    (root / "sub/config.json").write_text('{"b": 2}')
    return root


def test_same_content_same_hash_anywhere_reports_ignored(tmp_path):
    first = _model_dir(tmp_path / "a")
    digest = dir_digest(first)
    assert len(digest) == 64 and dir_digest(first) == digest
    copy = tmp_path / "elsewhere/deeper/b"
    shutil.copytree(first, copy)
    (copy / "metrics.json").write_text('{"loss": 1}')
    (copy / "loss.png").write_bytes(b"png")
    (copy / ".snakemake_timestamp").touch()
    assert dir_digest(copy) == digest
    assert [p.name for p in model_files(copy)] == ["config.json", "config.json", "weights.safetensors"]


@pytest.mark.parametrize("change", ["weights", "config", "rename", "new_file", "move"])
def test_any_change_to_weights_or_configs_changes_the_hash(tmp_path, change):
    root = _model_dir(tmp_path / "m")
    before = dir_digest(root)
    if change == "weights":
        (root / "weights.safetensors").write_bytes(b"\x00\x01\x03")
    elif change == "config":
        (root / "sub/config.json").write_text('{"b": 3}')
    elif change == "rename":
        (root / "weights.safetensors").rename(root / "other.safetensors")
    elif change == "new_file":
        (root / "tokenizer.txt").write_text("vocab")
    else:  # the same bytes under another relative name
        (root / "sub/config.json").rename(root / "sub2.json")
        (root / "sub").rmdir()
    assert dir_digest(root) != before


def test_empty_or_missing_directories_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        dir_digest(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/metrics.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no model files"):
        dir_digest(tmp_path / "empty")


def test_module_digest_follows_the_weights():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert module_digest(a) == module_digest(b)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert module_digest(a) != module_digest(b)
    assert module_digest(a.to(torch.bfloat16)) != module_digest(b.to(torch.float32))
