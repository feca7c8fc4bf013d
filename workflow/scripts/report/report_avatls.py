"""Adapter for rule report_avatls: retrieval recall@k with and without the AVA-TLS squeeze (markdown fragment)."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging
from cxrgen.stages.report_avatls import report_avatls

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    print(report_avatls(baseline_dir=smk.input.baseline, avatls_dir=smk.input.avatls,
                        out_path=smk.output.report))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
