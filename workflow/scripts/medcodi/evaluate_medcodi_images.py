"""Adapter for rule evaluate_medcodi_images: FID/KID per direction against the real images of the view and, for the
frontal view, the classifier's AUROC/F1 against the prompt study's labels (MedCoDi-M Tables 2-3)."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.evaluate_medcodi_images import evaluate_medcodi_images

    evaluate_medcodi_images(generated=smk.input.images, studies=smk.input.studies, index_path=smk.input.index,
                            evaluator_dir=smk.input.evaluator, cfg=dict(smk.params.cfg), seed=int(smk.params.seed),
                            out_json=smk.output.results, out_grid=smk.output.grid, tracking_json=smk.input.tracking,
                            job_name=f"{smk.rule}:{smk.wildcards.view}-{smk.wildcards.prompting}")


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
