import logging
import os
from types import SimpleNamespace

from cxrgen.train.state import claim_job_state, claim_state_dir, job_fingerprint, start_training_rule


def _job(tmp_path, lr=1e-3, tracking="run.json"):
    """A job as the adapters pass it: plain rule name, wildcards, params and inputs."""
    index = tmp_path / "index.parquet"
    if not index.exists():
        index.write_bytes(b"rows")
    state_dir = str(tmp_path / "state")
    return {"rule": "train_ldm", "wildcards": {"ldm_variant": "cheff"},
            "params": {"cfg": {"lr": lr}, "seed": 0, "state_dir": state_dir},
            "inputs": {"index": str(index), "tracking": str(tmp_path / tracking)}, "state_dir": state_dir}


def test_same_job_resumes_and_changed_config_or_input_starts_fresh(tmp_path):
    job = _job(tmp_path)
    assert not claim_job_state(**job)  # first claim: nothing to resume
    state = tmp_path / "state"
    (state / "ckpt-00000010.pt").write_bytes(b"old run")
    assert claim_job_state(**job) and (state / "ckpt-00000010.pt").exists()  # a kill / time limit: resume
    assert claim_job_state(**_job(tmp_path, tracking="other.json"))  # the MLflow handle does not count
    assert not claim_job_state(**_job(tmp_path, lr=5e-4))  # config changed: old state moved aside
    assert not (state / "ckpt-00000010.pt").exists() and (state / "stale/ckpt-00000010.pt").read_bytes() == b"old run"
    (state / "ckpt-00000005.pt").write_bytes(b"new run")
    index = tmp_path / "index.parquet"
    os.utime(index, ns=(index.stat().st_atime_ns, index.stat().st_mtime_ns + 10**9))  # input rebuilt
    assert not claim_job_state(**_job(tmp_path, lr=5e-4))
    assert [p.name for p in (state / "stale").iterdir()] == ["ckpt-00000005.pt"]  # one stale generation kept


def test_state_without_a_recorded_fingerprint_is_not_trusted(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "ckpt-00000003.pt").write_bytes(b"from before fingerprints")
    assert not claim_state_dir(state, "abc")
    assert (state / "stale/ckpt-00000003.pt").exists() and (state / "FINGERPRINT").read_text().strip() == "abc"


def test_fingerprint_ignores_state_dir_and_sees_wildcards(tmp_path):
    base = job_fingerprint("r", {"v": "a"}, {"x": 1, "state_dir": "s1"}, {})
    assert base == job_fingerprint("r", {"v": "a"}, {"x": 1, "state_dir": "s2"}, {})
    assert base != job_fingerprint("r", {"v": "b"}, {"x": 1, "state_dir": "s1"}, {})


def _snakemake_job(tmp_path, lr, gpu=None):
    """Snakemake's job object as the adapters see it (named lists with items(), resources with get())."""
    job = _job(tmp_path, lr=lr)
    return SimpleNamespace(log=[str(tmp_path / "logs" / "train_ldm.log")], threads=1, rule=job["rule"],
                           wildcards=job["wildcards"], params=SimpleNamespace(**job["params"], items=job["params"].items),
                           input=job["inputs"], resources={} if gpu is None else {"gpu": gpu})


def test_start_training_rule_claims_state_and_counts_ranks(tmp_path):
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        assert start_training_rule(_snakemake_job(tmp_path, 1e-3)) == 1  # no gpu resource: one rank
        checkpoint = tmp_path / "state" / "checkpoint-2"
        checkpoint.mkdir()
        assert start_training_rule(_snakemake_job(tmp_path, 1e-3, gpu=2)) == 2
        assert checkpoint.is_dir()  # same job definition: the checkpoint stays for the resume
        start_training_rule(_snakemake_job(tmp_path, 5e-4))
        assert not checkpoint.exists()  # changed config: fresh state
        assert (tmp_path / "logs" / "train_ldm.log").is_file()
    finally:
        for handler in set(root.handlers) - set(handlers):
            root.removeHandler(handler)
            handler.close()
