"""Adapter for rule evaluate_ddl_images: image quality of the generated later images on the held-out image pairs
(errors, evaluator AUROC, FID/KID) next to the prior image carried forward."""

from pathlib import Path
from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.evaluate_ddl_images import evaluate_ddl_images

    evaluate_ddl_images(cohort_dir=str(Path(smk.input.pairs).parent), latents_dir=smk.input.latents,
                        ae_dir=smk.input.autoencoder, model_dir=smk.input.model, evaluator_dir=smk.input.evaluator,
                        index_path=smk.input.index, cfg=dict(smk.params.cfg), backbones_cfg=dict(smk.params.backbones_cfg),
                        seed=int(smk.params.seed), out_dir=smk.output.results, tracking_json=smk.input.tracking,
                        job_name=smk.rule)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
