"""Adapter for rule train_ldm: report-conditioned latent diffusion (Cheff schedule, CFG dropout, EMA), per variant.
Data parallel over the job's GPUs: the profile's `gpu` resource (none: 1) is the number of ranks (docs/cluster.md)."""

from typing import TYPE_CHECKING

from cxrgen.train.state import start_training_rule

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    gpus = start_training_rule(smk)  # log, threads, fresh state for a changed job, data-parallel ranks
    from cxrgen.stages.train_ldm import train_ldm
    from cxrgen.train.distributed import launch

    keep_ids = None
    if smk.input.get("lnfs"):  # Diff-CXR LNFS: train on the images the noise filter kept
        from cxrgen.data.lnfs import kept_image_ids

        keep_ids = kept_image_ids(smk.input.lnfs)
    # plain str/dict values: the ranks are fresh interpreters that unpickle the arguments without snakemake
    metrics = launch(train_ldm, gpus, latents_dir=str(smk.input.latents), ae_dir=str(smk.input.autoencoder),
                     clip_dir=smk.input.get("clip") and str(smk.input.clip), cfg=dict(smk.params.cfg), seed=int(smk.params.seed),
                     out_dir=str(smk.output.model), state_dir=str(smk.params.state_dir),
                     tracking_json=str(smk.input.tracking), job_name=f"{smk.rule}:{smk.wildcards.ldm_variant}",
                     keep_ids=keep_ids)
    print(metrics)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
