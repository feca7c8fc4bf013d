"""Adapter for rule evaluate_labeler: the labeler vs IU-Xray MeSH terms and vs the demo MIMIC labels."""

import json
from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    from cxrgen.stages.evaluate_labeler import evaluate_labeler

    print(json.dumps(evaluate_labeler(smk.input.index, smk.output.markdown, smk.output.table), indent=1))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
