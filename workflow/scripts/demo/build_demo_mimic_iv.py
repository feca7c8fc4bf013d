"""Adapter for rule build_demo_mimic_iv: the demo ICU patients' MIMIC-IV v2.2 tables."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging
from cxrgen.stages.build_demo_mimic_iv import build_demo_mimic_iv

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    info = build_demo_mimic_iv(smk.output.root, icu_stays=smk.params.icu_stays, seed=smk.params.seed)
    print(f"MIMIC-IV v{info['version']}: {info['admissions']} ICU admissions, mortality {info['mortality']:.3f}, "
          f"{info['rows']['icu/chartevents']} chartevents in {info['seconds']} s")


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
