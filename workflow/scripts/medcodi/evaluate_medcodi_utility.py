"""Adapter for rule evaluate_medcodi_utility: one view's utility table (JSON + markdown fragment) over experiments
and seeds."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    from cxrgen.stages.evaluate_medcodi_utility import evaluate_medcodi_utility

    evaluate_medcodi_utility(view=str(smk.wildcards.view), metrics_paths=list(smk.input.metrics),
                             out_json=smk.output.table, out_md=smk.output.markdown, demo_note=bool(smk.params.demo))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
