"""Adapter for rule evaluate_icu: AUROC/AUPRC tables (overall, by hours since the last CXR, paired comparisons)."""

from pathlib import Path
from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.icu.inputs import PREDICTIONS_FILE
    from cxrgen.stages.evaluate_icu import evaluate_icu

    files = [Path(d) / PREDICTIONS_FILE for d in smk.input.predictors]
    evaluate_icu(prediction_files=files, cfg=dict(smk.params.cfg["evaluation"]), out_dir=smk.output.results,
                 tracking_json=smk.input.tracking, job_name=smk.rule)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
