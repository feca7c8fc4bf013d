# cxrgen — chest X-ray synthesis pipeline. Table of contents only: logic lives in src/cxrgen, rules in workflow/rules.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/unify.smk"
include: "workflow/rules/icu.smk"
include: "workflow/rules/medcodi.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/conditioning.smk"
include: "workflow/rules/filter.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/evaluate_metrics.smk"


rule all:
    input:
        final_targets(),
    default_target: True
