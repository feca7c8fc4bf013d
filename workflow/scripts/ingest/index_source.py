"""Adapter for rule index_source: run the source adapter on its native layout, pseudonymise, assign shards."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging
from cxrgen.stages.index_source import index_source

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    index_source(smk.wildcards.source, smk.params.root, smk.params.shards, salt_env=smk.params.salt_env,
                 demo_only=smk.params.demo_only, options=dict(smk.params.options), manifest_path=smk.output.manifest)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
