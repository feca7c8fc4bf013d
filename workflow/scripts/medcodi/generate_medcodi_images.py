"""Adapter for rule generate_medcodi_images: every test study's image of one view from the real inputs of each
MedCoDi-M direction (T->F, L->F, L+T->F or T->L, F->L, F+T->L)."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.generate_medcodi_images import generate_medcodi_images

    print(generate_medcodi_images(model_dir=smk.input.model, studies=smk.input.studies,
                                  embeddings=smk.input.embeddings, cfg=dict(smk.params.cfg),
                                  seed=int(smk.params.seed), out_path=smk.output.images,
                                  tracking_json=smk.input.tracking,
                                  job_name=f"{smk.rule}:{smk.wildcards.view}-{smk.wildcards.prompting}"))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
