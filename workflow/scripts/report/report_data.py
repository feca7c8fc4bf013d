"""Adapter for rule report_data: HTML + markdown data report and the sample grid of the unified store."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging
from cxrgen.stages.report_data import report_data

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    report_data(smk.input.index, smk.input.rejections, smk.input.summary, store_root=smk.params.store_root,
                resolution=int(smk.params.resolution), html_path=smk.output.html, grid_path=smk.output.grid,
                markdown_path=smk.output.markdown, seed=int(smk.params.seed))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
