"""Adapter for rule train_ddl_ldm: DDL-CXR's EHR-conditioned LDM on the cohort's image pairs (data parallel over the
job's GPUs like train_ldm: the profile's `gpu` resource, none = 1, is the number of ranks)."""

from pathlib import Path
from typing import TYPE_CHECKING

from cxrgen.train.state import start_training_rule

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    gpus = start_training_rule(smk)  # log, threads, fresh state for a changed job, data-parallel ranks
    from cxrgen.stages.train_ddl_ldm import train_ddl_ldm
    from cxrgen.train.distributed import launch

    metrics = launch(train_ddl_ldm, gpus, cohort_dir=str(Path(smk.input.ehr).parent), latents_dir=str(smk.input.latents),
                     ae_dir=str(smk.input.autoencoder), cfg=dict(smk.params.cfg["ldm"]), seed=int(smk.params.seed),
                     out_dir=str(smk.output.model), state_dir=str(smk.params.state_dir),
                     tracking_json=str(smk.input.tracking), job_name=smk.rule)
    print(metrics)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
