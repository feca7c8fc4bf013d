"""Adapter for rule filter_noise: Diff-CXR LNFS over the cached latents (filtered index, report fragment, figure)."""

import json
from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.filter_noise import filter_noise

    summary = filter_noise(
        latents_dir=smk.input.latents, out_index=smk.output.index, out_markdown=smk.output.markdown,
        out_figure=smk.output.figure, cfg=dict(smk.params.cfg), seed=smk.params.seed,
        store_root=smk.params.store_root, store_index=smk.input.index, resolution=smk.params.resolution,
        truth_paths=list(smk.input.truth), manifest_paths=list(smk.input.manifests))
    print(json.dumps(summary, indent=1, default=float))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
