"""Adapter for rule build_icu_cohort: the DDL-CXR ICU cohort (stays, pairs, hourly EHR series, counts)."""

import json
from pathlib import Path
from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging
from cxrgen.stages.build_icu_cohort import build_icu_cohort

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    report = build_icu_cohort(
        smk.params.mimic_iv_root, smk.params.mimic_cxr_root, smk.input.index, Path(smk.output.cohort).parent,
        dict(smk.params.cfg), salt_env=smk.params.salt_env, demo_only=smk.params.demo_only)
    print(json.dumps({k: report[k] for k in ("mimic_iv_version", "prediction_stays", "pairs", "published")}, indent=1))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
