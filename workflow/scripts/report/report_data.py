"""Adapter for rule report_data: HTML + markdown data report and the sample grid of the unified store."""

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cxrgen.logutil import setup_logging
from cxrgen.report.data_report import write_data_report

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    write_data_report(
        pd.read_parquet(smk.input.index), pd.read_parquet(smk.input.rejections),
        json.loads(Path(smk.input.summary).read_text()), store_root=Path(smk.params.store_root),
        resolution=int(smk.params.resolution), html_path=Path(smk.output.html), grid_path=Path(smk.output.grid),
        markdown_path=Path(smk.output.markdown), seed=int(smk.params.seed))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
