"""Adapter for rule train_joint_alignment: MedCoDi-M's joint-generation layers (environment encoders + cross-flow
attention) over the frozen multi-prompt generators. Data parallel over the job's GPUs like train_medcodi_ldm: the
profile's `gpu` resource (none: 1) is the number of ranks."""

from typing import TYPE_CHECKING

from cxrgen.train.state import start_training_rule

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    gpus = start_training_rule(smk)  # log, threads, fresh state for a changed job, data-parallel ranks
    from cxrgen.stages.train_joint_alignment import train_joint_alignment
    from cxrgen.train.distributed import launch

    metrics = launch(train_joint_alignment, gpus, studies=str(smk.input.studies), embeddings=str(smk.input.embeddings),
                     latents_dir=str(smk.input.latents), ae_dir=str(smk.input.autoencoder),
                     frontal_dir=str(smk.input.frontal), lateral_dir=str(smk.input.lateral),
                     report_dir=str(smk.input.report), vae_dir=str(smk.input.vae), cfg=dict(smk.params.cfg["joint"]),
                     seed=int(smk.params.seed), out_dir=str(smk.output.model), state_dir=str(smk.params.state_dir),
                     tracking_json=str(smk.input.tracking), job_name=smk.rule)
    print(metrics)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
