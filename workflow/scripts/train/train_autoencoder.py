"""Adapter for rule train_autoencoder: KL autoencoder f=4 (Cheff §7.3.1).
Data parallel over the job's GPUs: the profile's `gpu` resource (none: 1) is the number of ranks (docs/cluster.md)."""

from typing import TYPE_CHECKING

from cxrgen.train.state import start_training_rule

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    gpus = start_training_rule(smk)  # log, threads, fresh state for a changed job, data-parallel ranks
    from cxrgen.stages.train_autoencoder import train_autoencoder
    from cxrgen.train.distributed import launch

    clip = smk.input.get("clip")
    # plain str/int/dict values: the ranks are fresh interpreters that unpickle the arguments without snakemake
    metrics = launch(train_autoencoder, gpus, index_path=str(smk.input.index), store_root=str(smk.params.store_root),
                     resolution=int(smk.params.resolution), cfg=dict(smk.params.cfg), seed=int(smk.params.seed),
                     state_dir=str(smk.params.state_dir), out_dir=str(smk.output.model),
                     tracking_json=str(smk.input.tracking), job_name=str(smk.rule),
                     clip_dir=str(clip) if clip else None)
    print(metrics)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
