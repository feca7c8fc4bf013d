"""Adapter for rule train_clip: contrastive image-report pretraining (open_clip, from scratch).
Data parallel over the job's GPUs: the profile's `gpu` resource (none: 1) is the number of ranks (docs/cluster.md)."""

from typing import TYPE_CHECKING

from cxrgen.train.state import start_training_rule

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    gpus = start_training_rule(smk)  # log, threads, fresh state for a changed job, data-parallel ranks
    from cxrgen.stages.train_clip import train_clip
    from cxrgen.train.distributed import launch

    # plain str/int/dict values: the ranks are fresh interpreters that unpickle the arguments without snakemake
    metrics = launch(train_clip, gpus, index_path=str(smk.input.index), store_root=str(smk.params.store_root),
                     resolution=int(smk.params.resolution), cfg=dict(smk.params.cfg), seed=int(smk.params.seed),
                     state_dir=str(smk.params.state_dir), out_dir=str(smk.output.model),
                     tracking_json=str(smk.input.tracking), job_name=str(smk.rule))
    print(metrics)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
