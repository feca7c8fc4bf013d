"""Adapter for rule generate_medcodi_reports: reports generated from the test studies' real films (F->T, L->T,
F+L->T) by the report diffusion model of one prompting mode."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.generate_medcodi_reports import generate_medcodi_reports

    prompting = str(smk.wildcards.prompting)
    summary = generate_medcodi_reports(studies=str(smk.input.studies), embeddings=str(smk.input.embeddings),
                                       model_dir=str(smk.input.model), vae_dir=str(smk.input.vae),
                                       cfg=dict(smk.params.cfg["report_generation"]), prompting=prompting,
                                       seed=int(smk.params.seed), out_path=str(smk.output.reports),
                                       tracking_json=str(smk.input.tracking), job_name=f"{smk.rule}:{prompting}")
    print(summary)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
