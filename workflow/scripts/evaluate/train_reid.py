"""Adapter for rule train_reid: the Siamese patient-verification network on the real train split.
Data parallel over the job's GPUs: the profile's `gpu` resource (none: 1) is the number of ranks (docs/cluster.md)."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job
from cxrgen.train.state import claim_job_state

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    claim_job_state(rule=smk.rule, wildcards=dict(smk.wildcards.items()), params=dict(smk.params.items()),
                    inputs=dict(smk.input.items()), state_dir=smk.params.state_dir)  # changed job: fresh state
    from cxrgen.stages.train_reid import train_reid
    from cxrgen.train.distributed import launch

    gpus = int(smk.resources.get("gpu", 0) or 1)
    # plain str/int/dict values: the ranks are fresh interpreters that unpickle the arguments without snakemake
    metrics = launch(train_reid, gpus, index_path=str(smk.input.index), store_root=str(smk.params.store_root),
                     resolution=int(smk.params.resolution), cfg=dict(smk.params.cfg), seed=int(smk.params.seed),
                     state_dir=str(smk.params.state_dir), out_dir=str(smk.output.model),
                     tracking_json=str(smk.input.tracking), job_name=str(smk.rule))
    print({k: metrics.get(k) for k in ("steps", "verification", "threshold")})


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
