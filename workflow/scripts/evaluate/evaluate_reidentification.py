"""Adapter for rule evaluate_reidentification: generated images scored against their prompts' training images by
the patient verifier, nearest training images per generated image."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.evaluate_reidentification import evaluate_reidentification

    evaluate_reidentification(index_path=smk.input.index, store_root=smk.params.store_root,
                              generated_dir=smk.input.generated, model_dir=smk.input.model,
                              cfg=dict(smk.params.cfg), seed=smk.params.seed, variant=smk.wildcards.variant,
                              out_json=smk.output.json, out_table=smk.output.table, out_html=smk.output.html,
                              out_histogram=smk.output.histogram, out_markdown=smk.output.markdown,
                              tracking_json=smk.input.tracking, job_name=f"{smk.rule}:{smk.wildcards.variant}")


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
