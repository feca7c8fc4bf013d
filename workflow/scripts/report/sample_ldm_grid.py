"""Adapter for rule sample_ldm_grid: the sample grid of a trained LDM (template reports × seeds, EMA weights)."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.sample_ldm_grid import sample_ldm_grid

    payload = sample_ldm_grid(ldm_dir=smk.input.ldm, ae_dir=smk.input.autoencoder, clip_dir=smk.input.get("clip"),
                              grid_cfg=dict(smk.params.cfg["sample_grid"]), seed=int(smk.params.seed),
                              out_png=smk.output.grid, out_json=smk.output.meta, tracking_json=smk.input.tracking,
                              job_name=f"{smk.rule}:{smk.wildcards.ldm_variant}")
    print(payload)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
