"""Adapter for rule build_prompts: test-split report prompts and class-balanced template prompts."""

from typing import TYPE_CHECKING

import pandas as pd

from cxrgen.logutil import setup_logging
from cxrgen.stages.generate import build_prompt_sets

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    prompts = build_prompt_sets(pd.read_parquet(smk.input.index), dict(smk.params.cfg))
    prompts.to_parquet(smk.output.prompts, index=False)
    print(prompts.groupby("set").size().to_dict())


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
