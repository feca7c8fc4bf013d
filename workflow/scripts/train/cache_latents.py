"""Adapter for rule cache_latents: encode the store once into latent shards keyed by the autoencoder's hash."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.cache_latents import cache_latents

    print(cache_latents(index_path=smk.input.index, store_root=smk.params.store_root,
                        resolution=smk.params.resolution, ae_dir=smk.input.autoencoder, out_dir=smk.output.latents))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
