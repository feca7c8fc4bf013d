"""Adapter for rule report_avatls: retrieval recall@k with and without the AVA-TLS squeeze (markdown fragment)."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging
from cxrgen.report.avatls import write_avatls_report

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    print(write_avatls_report(baseline_dir=smk.input.baseline, avatls_dir=smk.input.avatls,
                              out_path=smk.output.report))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
