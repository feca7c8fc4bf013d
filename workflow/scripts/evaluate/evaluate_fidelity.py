"""Adapter for rule evaluate_fidelity: evaluator AUROC/F1 of generated images against their prompt labels, real
reference row, real-vs-generated grid per finding."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.evaluate_fidelity import evaluate_fidelity

    evaluate_fidelity(real_dir=smk.input.real, generated_dir=smk.input.generated, cfg=dict(smk.params.cfg),
                      seed=smk.params.seed, variant=smk.wildcards.variant, out_json=smk.output.json,
                      out_html=smk.output.table, out_figure=smk.output.figure, out_grid=smk.output.grid,
                      out_markdown=smk.output.markdown, tracking_json=smk.input.tracking,
                      job_name=f"{smk.rule}:{smk.wildcards.variant}")


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
