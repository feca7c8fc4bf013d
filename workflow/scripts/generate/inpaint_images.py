"""Adapter for rule inpaint_images: Cheff §5 in/outpainting of configured store images with the saved LDM."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.inpaint_images import inpaint_images

    payload = inpaint_images(index_path=smk.input.index, ldm_dir=smk.input.ldm, ae_dir=smk.input.autoencoder,
                             clip_dir=smk.input.clip, evaluator_dir=smk.input.get("evaluator"),
                             cfg=dict(smk.params.cfg), seed=int(smk.params.seed), out_png=smk.output.grid,
                             out_json=smk.output.metrics, out_md=smk.output.markdown,
                             tracking_json=smk.input.tracking, job_name=smk.rule)
    print({k: v for k, v in payload.items() if k != "samples"})


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
