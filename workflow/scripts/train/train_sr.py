"""Adapter for rules train_sr (bicubic LR) and finetune_sr (LR decoded by the autoencoder; Cheff §5)."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job
from cxrgen.train.state import claim_job_state

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    claim_job_state(rule=smk.rule, wildcards=dict(smk.wildcards.items()), params=dict(smk.params.items()),
                    inputs=dict(smk.input.items()), state_dir=smk.params.state_dir)  # changed job: fresh state
    from cxrgen.stages.train_sr import train_sr

    finetune = smk.rule == "finetune_sr"
    cfg = dict(smk.params.cfg)
    metrics = train_sr(index_path=smk.input.index, store_root=smk.params.store_root, low_res=smk.params.low_res,
                       high_res=smk.params.high_res, cfg=cfg, seed=smk.params.seed, state_dir=smk.params.state_dir,
                       out_dir=smk.output.model, tracking_json=smk.input.tracking, job_name=smk.rule,
                       mode="decoded" if finetune else "bicubic",
                       ae_dir=smk.input.autoencoder if finetune else None,
                       init_dir=smk.input.base if finetune else None)
    print(metrics)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
