"""Adapter for rule generate_medcodi_twins: one view's synthetic pool for the utility experiments (MedCoDi-M T->F /
T->L twins of training studies, in the store format the downstream harness reads)."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.generate_medcodi_twins import generate_medcodi_twins

    view = str(smk.wildcards.view)
    metrics = generate_medcodi_twins(studies=smk.input.studies, embeddings=smk.input.embeddings,
                                     index=smk.input.index, ldm_dir=smk.input.ldm, ae_dir=smk.input.autoencoder,
                                     view=view, cfg=dict(smk.params.cfg["utility"]["twins"]),
                                     seed=int(smk.params.seed), resolution=int(smk.params.resolution),
                                     out_root=smk.output.store, tracking_json=smk.input.tracking,
                                     job_name=f"{smk.rule}:{view}")
    print(metrics)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
