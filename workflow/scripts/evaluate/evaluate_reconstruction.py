"""Adapter for rule evaluate_reconstruction: the Cheff Table 2 chains (AE, SR base/fine-tuned, full chain,
bicubic reference) on real held-out images."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.evaluate_reconstruction import evaluate_reconstruction

    evaluate_reconstruction(index_path=smk.input.index, store_root=smk.params.store_root,
                            ae_dir=smk.input.autoencoder, sr_base_dir=smk.input.sr_base, sr_dir=smk.input.sr,
                            cfg=dict(smk.params.cfg), seed=smk.params.seed, low_res=smk.params.low_res,
                            high_res=smk.params.high_res, out_json=smk.output.json, out_html=smk.output.table,
                            out_figure=smk.output.figure, out_markdown=smk.output.markdown,
                            tracking_json=smk.input.tracking, job_name=smk.rule)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
