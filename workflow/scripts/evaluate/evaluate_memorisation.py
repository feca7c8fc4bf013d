"""Adapter for rule evaluate_memorisation: nearest training images, re-identification share, closest pairs,
diversity of repeated generations."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.evaluate_memorisation import evaluate_memorisation

    evaluate_memorisation(real_dir=smk.input.real, generated_dir=smk.input.generated, cfg=dict(smk.params.cfg),
                          seed=smk.params.seed, variant=smk.wildcards.variant, out_json=smk.output.json,
                          out_html=smk.output.table, out_pairs=smk.output.pairs, out_histogram=smk.output.histogram,
                          out_markdown=smk.output.markdown, tracking_json=smk.input.tracking,
                          job_name=f"{smk.rule}:{smk.wildcards.variant}")


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
