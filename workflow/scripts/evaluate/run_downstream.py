"""Adapter for rule run_downstream: every arm of one downstream experiment for one seed.
Data parallel over the job's GPUs: the profile's `gpu` resource (none: 1) is the number of ranks (docs/cluster.md)."""

from typing import TYPE_CHECKING

from cxrgen.train.state import start_training_rule

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    gpus = start_training_rule(smk)  # log, threads, fresh state for a changed job, data-parallel ranks
    from cxrgen.stages.run_downstream import run_downstream
    from cxrgen.train.distributed import launch

    experiment, seed = str(smk.wildcards.experiment), int(smk.wildcards.seed)
    # plain str/int/dict values: the ranks are fresh interpreters that unpickle the arguments without snakemake
    metrics = launch(run_downstream, gpus, real_index_path=str(smk.input.index),
                     real_store_root=str(smk.params.store_root), synthetic_store_root=str(smk.input.synthetic),
                     experiment=experiment, seed=seed, base_seed=int(smk.params.base_seed), cfg=dict(smk.params.cfg),
                     evaluator_cfg=dict(smk.params.evaluator_cfg), resolution=int(smk.params.resolution),
                     state_dir=str(smk.params.state_dir), out_path=str(smk.output.metrics),
                     tracking_json=str(smk.input.tracking), job_name=f"{smk.rule}:{experiment}/{seed}")
    print({arm: m["test"]["auroc"] for arm, m in metrics["arms"].items()})


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
