"""Adapter for rule write_summary: results/summary.md from the report fragments, for terminal readers."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    from cxrgen.stages.write_summary import write_summary

    write_summary(fragments=list(smk.input.fragments), out_path=smk.output.summary, demo=smk.params.demo,
                  config=dict(smk.params.config))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
