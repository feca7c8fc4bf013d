"""Adapter for rule train_text_vae: MedCoDi-M's report VAE (Optimus-style, from scratch) on the study table's train
reports. Data parallel over the job's GPUs: the profile's `gpu` resource (none: 1) is the number of ranks."""

from typing import TYPE_CHECKING

from cxrgen.train.state import start_training_rule

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    gpus = start_training_rule(smk)  # log, threads, fresh state for a changed job, data-parallel ranks
    from cxrgen.stages.train_text_vae import train_text_vae
    from cxrgen.train.distributed import launch

    metrics = launch(train_text_vae, gpus, studies=str(smk.input.studies), cfg=dict(smk.params.cfg["text_vae"]),
                     seed=int(smk.params.seed), out_dir=str(smk.output.model), state_dir=str(smk.params.state_dir),
                     tracking_json=str(smk.input.tracking), job_name=smk.rule)
    print(metrics)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
