"""Adapter for rule write_model_cards: every trained model's card completed with the evaluations that concern it."""

from pathlib import Path
from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    from cxrgen.stages.write_model_cards import write_model_cards

    models = dict(zip(smk.params.names, smk.input.models, strict=True))
    evaluations = {name: dict(labels) for name, labels in dict(smk.params.evaluations).items()}
    write_model_cards(models=models, evaluations=evaluations, demo=bool(smk.params.demo),
                      out_dir=Path(smk.output.index).parent, index_path=smk.output.index)  # cards next to index


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
