"""Adapter for rule ingest_shard: decode + resample one shard of one source into the store."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging
from cxrgen.stages.ingest_shard import ingest_shard

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    stats = ingest_shard(
        smk.input.manifest, source=smk.wildcards.source, source_root=smk.params.root, shard=int(smk.wildcards.shard),
        store_root=smk.params.store_root, resolutions=list(smk.params.resolutions), geometry=smk.params.geometry,
        intensity=smk.params.intensity, target_spacing_mm=smk.params.target_spacing_mm,
        canvas_mm=smk.params.canvas_mm, index_path=smk.output.index, rejections_path=smk.output.rejections,
        stats_path=smk.output.stats, workers=smk.threads, reduced_decode=smk.params.reduced_decode)
    print(stats)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
