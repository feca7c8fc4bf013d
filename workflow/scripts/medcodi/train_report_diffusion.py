"""Adapter for rule train_report_diffusion: MedCoDi-M's report diffusion model on the frozen report VAE's latents,
prompted by the X-ray views (multi-prompt or frontal-only `single`). Data parallel over the job's GPUs like
train_ldm: the profile's `gpu` resource (none: 1) is the number of ranks."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job
from cxrgen.train.state import claim_job_state

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    claim_job_state(rule=smk.rule, wildcards=dict(smk.wildcards.items()), params=dict(smk.params.items()),
                    inputs=dict(smk.input.items()), state_dir=smk.params.state_dir)  # changed job: fresh state
    from cxrgen.stages.train_report_diffusion import train_report_diffusion
    from cxrgen.train.distributed import launch

    gpus = int(smk.resources.get("gpu", 0) or 1)
    metrics = launch(train_report_diffusion, gpus, studies=str(smk.input.studies),
                     embeddings=str(smk.input.embeddings), vae_dir=str(smk.input.vae),
                     cfg=dict(smk.params.cfg["report_diffusion"]), prompting=str(smk.wildcards.prompting),
                     seed=int(smk.params.seed), out_dir=str(smk.output.model), state_dir=str(smk.params.state_dir),
                     tracking_json=str(smk.input.tracking), job_name=f"{smk.rule}:{smk.wildcards.prompting}")
    print(metrics)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
