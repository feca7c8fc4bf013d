"""Adapter for rule embed_prompts: every study's frontal, lateral and report embedding in MedCoDi-M's shared space."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.embed_prompts import embed_prompts

    counts = embed_prompts(studies_path=str(smk.input.studies), index_path=str(smk.input.index),
                           store_root=str(smk.params.store_root), encoders_dir=str(smk.input.encoders),
                           out_npz=str(smk.output.embeddings))
    print(counts)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
