"""Adapter for rule train_icu_predictor: one fusion predictor arm (ehr | ehr_last_cxr | ddl_cxr) x seed."""

from pathlib import Path
from typing import TYPE_CHECKING

from cxrgen.train.state import start_training_rule

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    start_training_rule(smk)  # log, threads, fresh state for a changed job (one process: no data parallelism)
    from cxrgen.stages.train_icu_predictor import train_icu_predictor

    arm, seed = smk.wildcards.icu_arm, int(smk.wildcards.icu_seed)
    metrics = train_icu_predictor(cohort_dir=str(Path(smk.input.ehr).parent), arm=arm, cfg=dict(smk.params.cfg["predictor"]),
                                  seed=int(smk.params.seed), out_dir=smk.output.model,
                                  state_dir=smk.params.state_dir, latents_dir=smk.input.get("latents"),
                                  ae_dir=smk.input.get("autoencoder"), generated_path=smk.input.get("generated"),
                                  tracking_json=smk.input.tracking, job_name=f"{smk.rule}:{arm}:seed{seed}")
    print(metrics)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
