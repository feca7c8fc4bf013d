"""The output files of one evaluation job, written side by side into a staging directory and published onto their
declared paths only once every one of them is complete (a failed job leaves none of them behind half-written)."""

from __future__ import annotations

from pathlib import Path

from cxrgen.train.job import TrackedJob


class StagedFiles:
    """``files[key]`` is where to write output ``key`` (``<first output>.tmp/<key><suffix>``: the suffix is kept, so
    matplotlib still infers the image format); :meth:`publish` moves every file onto its final path."""

    def __init__(self, job: TrackedJob, finals: dict[str, Path | str]):
        self.job = job
        self.finals = {key: Path(path) for key, path in finals.items()}
        self.directory = job.staging(next(iter(self.finals.values())))

    def __getitem__(self, key: str) -> Path:
        return self.directory / f"{key}{self.finals[key].suffix}"

    def publish(self, artifacts: tuple[str, ...] | list[str] = ()) -> None:
        """Publish every file (the first declared one last, so its path is the run's ``cxrgen.output`` tag) and log
        the outputs named in ``artifacts`` to the job's run."""
        first, *rest = self.finals
        for key in rest:
            self.job.publish(self[key], self.finals[key])
        self.job.publish(self[first], self.finals[first], artifacts=[str(self.finals[k]) for k in artifacts])
        self.directory.rmdir()
