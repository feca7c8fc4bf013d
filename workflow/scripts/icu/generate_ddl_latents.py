"""Adapter for rule generate_ddl_latents: the up-to-date latent CXR of every prediction stay (DDIM, per-stay seeds)."""

from pathlib import Path
from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.generate_ddl_latents import generate_ddl_latents

    summary = generate_ddl_latents(cohort_dir=str(Path(smk.input.ehr).parent), latents_dir=smk.input.latents,
                                   ae_dir=smk.input.autoencoder, model_dir=smk.input.model,
                                   cfg=dict(smk.params.cfg["generation"]), seed=int(smk.params.seed),
                                   out_path=smk.output.latents, tracking_json=smk.input.tracking, job_name=smk.rule)
    print(summary)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
