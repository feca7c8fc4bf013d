"""Adapter for rule evaluate_medcodi_reports: BLEU-1..4 and report-labeler F1 per direction (MedCoDi-M Tables 4-5)."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.evaluate_medcodi_reports import evaluate_medcodi_reports

    prompting = str(smk.wildcards.prompting)
    payload = evaluate_medcodi_reports(generated=str(smk.input.reports), studies=str(smk.input.studies),
                                       index=str(smk.input.index),
                                       cfg=dict(smk.params.cfg["report_generation"]["evaluation"]),
                                       prompting=prompting, out_json=str(smk.output.json),
                                       tracking_json=str(smk.input.tracking), job_name=f"{smk.rule}:{prompting}")
    print({d: {"n": r["n"], "bleu": r["bleu"]} for d, r in payload["directions"].items()})


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
