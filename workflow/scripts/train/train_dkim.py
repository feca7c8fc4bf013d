"""Adapter for rule train_dkim: Diff-CXR's disease-knowledge adapter, trained with the base LDM frozen (stage 2).
Data parallel over the job's GPUs: the profile's `gpu` resource (none: 1) is the number of ranks (docs/cluster.md)."""

from typing import TYPE_CHECKING

from cxrgen.train.state import start_training_rule

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    gpus = start_training_rule(smk)  # log, threads, fresh state for a changed job, data-parallel ranks
    from cxrgen.stages.train_dkim import train_dkim
    from cxrgen.train.distributed import launch

    keep_ids = None
    if smk.input.get("lnfs"):  # the base LDM of this variant trained on the LNFS-kept images: so does DKIM
        from cxrgen.data.lnfs import kept_image_ids

        keep_ids = kept_image_ids(smk.input.lnfs)
    # plain str/dict values: the ranks are fresh interpreters that unpickle the arguments without snakemake
    metrics = launch(train_dkim, gpus, ldm_dir=str(smk.input.ldm), latents_dir=str(smk.input.latents),
                     clip_dir=str(smk.input.clip), cfg=dict(smk.params.cfg), ldm_cfg=dict(smk.params.ldm_cfg),
                     seed=int(smk.params.seed), out_dir=str(smk.output.model), state_dir=str(smk.params.state_dir),
                     tracking_json=str(smk.input.tracking), job_name=f"{smk.rule}:{smk.wildcards.ldm_variant}",
                     keep_ids=keep_ids)
    print(metrics)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
