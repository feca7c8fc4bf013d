"""Adapter for rule build_prompts: test-split report prompts and class-balanced template prompts."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging
from cxrgen.stages.build_prompts import build_prompts

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    print(build_prompts(index_path=smk.input.index, cfg=dict(smk.params.cfg), out_path=smk.output.prompts))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
