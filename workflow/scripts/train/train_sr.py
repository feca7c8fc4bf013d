"""Adapter for rules train_sr (bicubic LR) and finetune_sr (LR decoded by the autoencoder; Cheff §5).
Data parallel over the job's GPUs: the profile's `gpu` resource (none: 1) is the number of ranks (docs/cluster.md)."""

from typing import TYPE_CHECKING

from cxrgen.train.state import start_training_rule

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    gpus = start_training_rule(smk)  # log, threads, fresh state for a changed job, data-parallel ranks
    from cxrgen.stages.train_sr import train_sr
    from cxrgen.train.distributed import launch

    finetune = smk.rule == "finetune_sr"
    # plain str/int/dict values: the ranks are fresh interpreters that unpickle the arguments without snakemake
    metrics = launch(train_sr, gpus, index_path=str(smk.input.index), store_root=str(smk.params.store_root),
                     low_res=int(smk.params.low_res), high_res=int(smk.params.high_res), cfg=dict(smk.params.cfg),
                     seed=int(smk.params.seed), state_dir=str(smk.params.state_dir), out_dir=str(smk.output.model),
                     tracking_json=str(smk.input.tracking), job_name=str(smk.rule),
                     mode="decoded" if finetune else "bicubic",
                     ae_dir=str(smk.input.autoencoder) if finetune else None,
                     init_dir=str(smk.input.base) if finetune else None)
    print(metrics)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
