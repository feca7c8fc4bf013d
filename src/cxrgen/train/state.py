"""Resumable training state that belongs to one job definition.

A trainer resumes from the latest checkpoint in its state directory (a kill, a SLURM time limit). That state is only
valid for the job that wrote it: after a config or input change, Snakemake reruns the job, and resuming the old run's
final checkpoint would publish the old weights under the new config. So each state directory carries the job's
fingerprint (rule, wildcards, params, and the identity of its inputs); a different fingerprint moves the old
checkpoints aside into ``stale/`` (one generation kept) and training starts fresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from cxrgen.train.model_card import JOB_FILE, write_job_description

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "FINGERPRINT"
IGNORED_INPUTS = ("tracking",)  # the MLflow handle: re-initialising tracking must not discard training progress


def path_identity(path: Path | str) -> list:
    """Cheap identity of an input file or directory: relative names, sizes and modification times of its files.
    Outputs are published atomically, so a rebuilt input gets new times; a copy that keeps times keeps the identity."""
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        return [[path.name, stat.st_size, stat.st_mtime_ns]]
    found = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            stat = (Path(root) / name).stat()
            found.append([str((Path(root) / name).relative_to(path)), stat.st_size, stat.st_mtime_ns])
    return found


def job_fingerprint(rule: str, wildcards: dict, params: dict, inputs: dict) -> str:
    """sha256 over the job's definition; ``params["state_dir"]`` and the tracking input do not count."""
    payload = {"rule": rule, "wildcards": {k: str(v) for k, v in wildcards.items()},
               "params": {k: v for k, v in params.items() if k != "state_dir"},
               "inputs": {k: [path_identity(p) for p in (v if isinstance(v, list) else [v])]
                          for k, v in inputs.items() if k not in IGNORED_INPUTS}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def claim_state_dir(state_dir: Path | str, fingerprint: str) -> bool:
    """Make ``state_dir`` belong to ``fingerprint``. Returns True when existing state is kept (same job: resume);
    otherwise any checkpoints are moved to ``state_dir/stale`` with a warning and the directory is claimed."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    marker = state_dir / FINGERPRINT_FILE
    previous = marker.read_text().strip() if marker.exists() else None
    leftovers = [p for p in state_dir.iterdir() if p.name not in (FINGERPRINT_FILE, JOB_FILE, "stale")]
    if previous == fingerprint:
        return True
    if leftovers:
        stale = state_dir / "stale"
        shutil.rmtree(stale, ignore_errors=True)
        stale.mkdir()
        for p in leftovers:
            p.rename(stale / p.name)
        log.warning("state in %s belongs to %s; the job's config or inputs changed, so training starts fresh "
                    "(old state moved to %s)", state_dir, "an earlier job definition" if previous else
                    "no recorded job definition", stale)
    marker.write_text(fingerprint + "\n")
    return False


def claim_job_state(*, rule: str, wildcards: dict, params: dict, inputs: dict, state_dir: Path | str) -> bool:
    """:func:`claim_state_dir` for one workflow job, given as plain values: its rule name, wildcards, params and
    inputs (name -> path or list of paths). Returns True when the job resumes its own state. Also leaves the job's
    description (rule, wildcards, input paths) in the state directory for its model card
    (:func:`cxrgen.train.model_card.write_job_description`)."""
    resumes = claim_state_dir(state_dir, job_fingerprint(rule, wildcards, params, inputs))
    write_job_description(state_dir, rule=rule, wildcards=wildcards, inputs=inputs, ignored=IGNORED_INPUTS)
    return resumes


def start_training_rule(job) -> int:
    """The common start of every training rule's adapter, given Snakemake's job object (duck-typed: ``log``,
    ``threads``, ``rule``, ``wildcards``, ``params``, ``input``, ``resources``): the rule's log file and thread count,
    a fresh state directory when the job's definition changed (:func:`claim_job_state`), and the number of
    data-parallel ranks to launch — the profile's ``gpu`` resource (none: 1)."""
    from cxrgen.logutil import setup_job

    setup_job(job.log[0], job.threads)
    claim_job_state(rule=job.rule, wildcards=dict(job.wildcards.items()), params=dict(job.params.items()),
                    inputs=dict(job.input.items()), state_dir=job.params.state_dir)
    return int(job.resources.get("gpu", 0) or 1)
