"""Adapter for rule build_demo_sources: write one source's demo corpus in its native layout."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging
from cxrgen.stages.build_demo_sources import build_demo_sources

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    meta = build_demo_sources(
        smk.wildcards.source, smk.output.root, smk.output.meta, n_images=smk.params.n_images,
        seed=smk.params.seed, downscale=smk.params.downscale, bad_fraction=smk.params.bad_fraction,
        noise_fraction=smk.params.noise_fraction, noise_path=smk.output.noise,
        icu_stays=smk.params.icu_stays)
    print(f"{meta['source']}: {meta['files_written']} files ({meta['noisy_files']} noisy) in {meta['seconds']} s")


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
