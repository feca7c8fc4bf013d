"""Adapter for rule index_source: run the source adapter on its native layout, pseudonymise, assign shards."""

from pathlib import Path
from typing import TYPE_CHECKING

from cxrgen.ingest import index_source
from cxrgen.logutil import setup_logging
from cxrgen.privacy import resolve_salt

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    salt = resolve_salt(smk.params.salt_env, demo_only=smk.params.demo_only)
    manifest = index_source(smk.wildcards.source, Path(smk.params.root), smk.params.shards, salt,
                            dict(smk.params.options))
    manifest.to_parquet(smk.output.manifest, index=False)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
