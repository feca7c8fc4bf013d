"""Adapter for rule init_tracking: create the MLflow experiment and the pipeline's parent run."""

from pathlib import Path
from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging
from cxrgen.stages.init_tracking import init_tracking

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    info = init_tracking(Path(smk.output[0]), smk.params.experiment, Path(smk.params.results_dir))
    print(info)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
