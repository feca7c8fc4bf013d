"""Adapter for rule evaluate_distribution: FID/KID per backbone with the real-vs-real floor and bootstrap CIs."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.evaluate_distribution import evaluate_distribution

    evaluate_distribution(real_dir=smk.input.real, generated_dir=smk.input.generated, cfg=dict(smk.params.cfg),
                          seed=smk.params.seed, variant=smk.wildcards.variant, out_json=smk.output.json,
                          out_html=smk.output.table, out_figure=smk.output.figure, out_markdown=smk.output.markdown,
                          tracking_json=smk.input.tracking, job_name=f"{smk.rule}:{smk.wildcards.variant}")


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
