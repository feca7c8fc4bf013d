"""Adapter for rule unify_store: merge shard indexes into the unified MaCheX-style index."""

import json
from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging
from cxrgen.stages.unify_store import unify_store

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    summary = unify_store(
        list(smk.input.index_parts), list(smk.input.rejection_parts), label_policy=dict(smk.params.label_policy),
        val_fraction=smk.params.val_fraction, test_fraction=smk.params.test_fraction,
        source_priority=list(smk.params.source_priority), seed=smk.params.seed,
        labeler_sources=list(smk.params.labeler_sources), index_path=smk.output.index,
        rejections_path=smk.output.rejections, rejection_manifest_path=smk.output.rejection_manifest,
        summary_path=smk.output.summary, splits_dir=smk.output.splits)
    print(json.dumps({k: v for k, v in summary.items() if k != "duplicates"}, indent=1))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
