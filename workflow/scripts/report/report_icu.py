"""Adapter for rule report_icu: the DDL-CXR report fragment (cohort, outcome tables, the paper's claim by hours since
the last CXR, image quality, notes) and its figures."""

from pathlib import Path
from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    from cxrgen.stages.report_icu import report_icu

    quality = Path(smk.input.quality)
    report_icu(cohort_json=smk.input.cohort, results_json=Path(smk.input.evaluation) / "icu_results.json",
               quality_json=quality / "evaluation_images.json", quality_grid=quality / "evaluation_images.png",
               out_md=smk.output.markdown, out_png=smk.output.figure, out_grid=smk.output.grid)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
