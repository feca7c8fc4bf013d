"""Adapter for rule report_training: every model's loss curve and sample grid as report figures."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    from cxrgen.stages.report_training import report_training

    model_dirs = dict(zip(smk.params.names, smk.input.models, strict=True))
    grids = dict(zip(smk.params.grid_names, smk.input.grids, strict=True))
    print(report_training(model_dirs, smk.output.curves, smk.output.samples, sample_grids=grids))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
