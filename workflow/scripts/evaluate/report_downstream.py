"""Adapter for rule report_downstream: mean ± CI table, figure and markdown fragment over experiments and seeds."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    from cxrgen.stages.report_downstream import report_downstream

    report_downstream(metrics_paths=list(smk.input.metrics), out_md=smk.output.markdown, out_png=smk.output.figure,
                      out_json=smk.output.table, demo_note=smk.params.demo)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
