"""Adapter for rule draw_sample_sheet: one row per generated variant at the stores' x_HR (Cheff's figures)."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging
from cxrgen.stages.draw_sample_sheet import draw_sample_sheet

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    stores = dict(zip(smk.params.variants, smk.input.stores, strict=True))
    meta = draw_sample_sheet(stores=stores, columns=int(smk.params.cfg["sample_sheet"]["columns"]),
                             out_png=smk.output.sheet, out_json=smk.output.meta)
    print({variant: len(rows) for variant, rows in meta["rows"].items()}, meta["resolution"])


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
