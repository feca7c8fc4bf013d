"""Adapter for rule train_prompt_encoders: MedCoDi-M's prompt encoders (pairwise InfoNCE rounds, one image tower).
Data parallel over the job's GPUs: the profile's `gpu` resource (none: 1) is the number of ranks (docs/cluster.md)."""

from typing import TYPE_CHECKING

from cxrgen.train.state import start_training_rule

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    gpus = start_training_rule(smk)  # log, threads, fresh state for a changed job, data-parallel ranks
    from cxrgen.stages.train_prompt_encoders import train_prompt_encoders
    from cxrgen.train.distributed import launch

    # plain str/int/dict values: the ranks are fresh interpreters that unpickle the arguments without snakemake
    metrics = launch(train_prompt_encoders, gpus, studies_path=str(smk.input.studies), index_path=str(smk.input.index),
                     store_root=str(smk.params.store_root), resolution=int(smk.params.resolution),
                     cfg=dict(smk.params.cfg["prompt_encoders"]), seed=int(smk.params.seed),
                     state_dir=str(smk.params.state_dir),
                     out_dir=str(smk.output.model), tracking_json=str(smk.input.tracking), job_name=str(smk.rule))
    print({k: metrics.get(k) for k in ("steps", "seconds_per_step_this_run", "train_pairs")})


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
