"""Adapter for rule run_downstream: every arm of one downstream experiment for one seed."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job
from cxrgen.train.state import claim_job_state

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    claim_job_state(rule=smk.rule, wildcards=dict(smk.wildcards.items()), params=dict(smk.params.items()),
                    inputs=dict(smk.input.items()), state_dir=smk.params.state_dir)  # changed job: fresh state
    from cxrgen.stages.run_downstream import run_downstream

    metrics = run_downstream(real_index_path=smk.input.index, real_store_root=smk.params.store_root,
                             synthetic_store_root=smk.input.synthetic, experiment=smk.wildcards.experiment,
                             seed=int(smk.wildcards.seed), base_seed=smk.params.base_seed, cfg=dict(smk.params.cfg),
                             evaluator_cfg=dict(smk.params.evaluator_cfg), resolution=smk.params.resolution,
                             state_dir=smk.params.state_dir, out_path=smk.output.metrics,
                             tracking_json=smk.input.tracking,
                             job_name=f"{smk.rule}:{smk.wildcards.experiment}/{smk.wildcards.seed}")
    print({arm: m["test"]["auroc"] for arm, m in metrics["arms"].items()})


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
