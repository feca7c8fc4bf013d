"""Adapter for rule ingest_shard: decode + resample one shard of one source into the store."""

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cxrgen.ingest import ingest_shard, write_shard_outputs
from cxrgen.logutil import setup_logging

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    index_part, rejections, stats = ingest_shard(
        pd.read_parquet(smk.input.manifest), source=smk.wildcards.source, source_root=Path(smk.params.root),
        shard=int(smk.wildcards.shard), store_root=Path(smk.params.store_root),
        resolutions=list(smk.params.resolutions), geometry=smk.params.geometry, intensity=smk.params.intensity,
        canvas_mm=smk.params.canvas_mm,
        target_spacing_mm=smk.params.target_spacing_mm)
    write_shard_outputs(index_part, rejections, stats, smk.output.index, smk.output.rejections, smk.output.stats)
    print(stats)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
