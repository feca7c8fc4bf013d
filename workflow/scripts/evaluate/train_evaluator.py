"""Adapter for rule train_evaluator: the in-domain DenseNet classifier on the real train split."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job
from cxrgen.train.state import claim_job_state

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    claim_job_state(rule=smk.rule, wildcards=dict(smk.wildcards.items()), params=dict(smk.params.items()),
                    inputs=dict(smk.input.items()), state_dir=smk.params.state_dir)  # changed job: fresh state
    from cxrgen.stages.train_evaluator import train_evaluator

    metrics = train_evaluator(index_path=smk.input.index, store_root=smk.params.store_root,
                              resolution=smk.params.resolution, cfg=dict(smk.params.cfg), seed=smk.params.seed,
                              state_dir=smk.params.state_dir, out_dir=smk.output.model,
                              tracking_json=smk.input.tracking, job_name=smk.rule)
    print({k: v for k, v in metrics.items() if k != "val"})


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
