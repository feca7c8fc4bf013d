"""Adapter for rule build_study_table: MedCoDi-M's study-level view of the store (frontal, lateral, report)."""

import json
from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging
from cxrgen.stages.build_study_table import build_study_table

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    counts = build_study_table(index_path=str(smk.input.index), sources=list(smk.params.sources),
                               out_parquet=str(smk.output.studies), out_json=str(smk.output.counts))
    print(json.dumps(counts["per_combination"], indent=1))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
