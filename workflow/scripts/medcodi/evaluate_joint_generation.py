"""Adapter for rule evaluate_joint_generation: MedCoDi-M joint vs independent generation (Table 6 cosine similarity,
Fig. 7 Hamming distance)."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.evaluate_joint_generation import evaluate_joint_generation

    evaluate_joint_generation(studies=smk.input.studies, embeddings=smk.input.embeddings,
                              frontal_dir=smk.input.frontal, lateral_dir=smk.input.lateral,
                              report_dir=smk.input.report, vae_dir=smk.input.vae, joint_dir=smk.input.joint,
                              ae_dir=smk.input.autoencoder, encoders_dir=smk.input.encoders,
                              evaluator_dir=smk.input.evaluator, cfg=dict(smk.params.cfg["joint"]),
                              seed=int(smk.params.seed), out_json=smk.output.similarity, out_png=smk.output.hamming,
                              tracking_json=smk.input.tracking, job_name=smk.rule)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
