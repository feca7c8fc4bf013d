"""Adapter for rule train_medcodi_ldm: the MedCoDi-M image LDM of one view with multi- or single-prompt conditioning.
Data parallel over the job's GPUs like train_ldm: the profile's `gpu` resource (none: 1) is the number of ranks."""

from typing import TYPE_CHECKING

from cxrgen.train.state import start_training_rule

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    gpus = start_training_rule(smk)  # log, threads, fresh state for a changed job, data-parallel ranks
    from cxrgen.stages.train_medcodi_ldm import train_medcodi_ldm
    from cxrgen.train.distributed import launch

    view, prompting = smk.wildcards.view, smk.wildcards.prompting
    # plain str/dict values: the ranks are fresh interpreters that unpickle the arguments without snakemake
    metrics = launch(train_medcodi_ldm, gpus, studies=str(smk.input.studies), embeddings=str(smk.input.embeddings),
                     latents_dir=str(smk.input.latents), ae_dir=str(smk.input.autoencoder),
                     cfg=dict(smk.params.cfg["ldm"]), view=view, prompting=prompting, seed=int(smk.params.seed),
                     out_dir=str(smk.output.model), state_dir=str(smk.params.state_dir),
                     tracking_json=str(smk.input.tracking), job_name=f"{smk.rule}:{view}-{prompting}")
    print(metrics)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
