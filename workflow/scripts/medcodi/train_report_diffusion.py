"""Adapter for rule train_report_diffusion: MedCoDi-M's report diffusion model on the frozen report VAE's latents,
prompted by the X-ray views (multi-prompt or frontal-only `single`). Data parallel over the job's GPUs like
train_ldm: the profile's `gpu` resource (none: 1) is the number of ranks."""

from typing import TYPE_CHECKING

from cxrgen.train.state import start_training_rule

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    gpus = start_training_rule(smk)  # log, threads, fresh state for a changed job, data-parallel ranks
    from cxrgen.stages.train_report_diffusion import train_report_diffusion
    from cxrgen.train.distributed import launch

    metrics = launch(train_report_diffusion, gpus, studies=str(smk.input.studies),
                     embeddings=str(smk.input.embeddings), vae_dir=str(smk.input.vae),
                     cfg=dict(smk.params.cfg["report_diffusion"]), prompting=str(smk.wildcards.prompting),
                     seed=int(smk.params.seed), out_dir=str(smk.output.model), state_dir=str(smk.params.state_dir),
                     tracking_json=str(smk.input.tracking), job_name=f"{smk.rule}:{smk.wildcards.prompting}")
    print(metrics)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
