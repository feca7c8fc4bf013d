"""Adapter for rule unify_store: merge shard indexes into the unified MaCheX-style index."""

import json
from pathlib import Path
from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging
from cxrgen.unify import unify, write_split_manifests

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    index, rejections, summary = unify(
        [Path(p) for p in smk.input.index_parts], [Path(p) for p in smk.input.rejection_parts],
        label_policy=dict(smk.params.label_policy), val_fraction=smk.params.val_fraction,
        test_fraction=smk.params.test_fraction, source_priority=list(smk.params.source_priority),
        seed=smk.params.seed, labeler_sources=list(smk.params.labeler_sources))
    index.to_parquet(smk.output.index, index=False)
    rejections.to_parquet(smk.output.rejections, index=False)
    Path(smk.output.summary).write_text(json.dumps(summary, indent=1))
    write_split_manifests(index, Path(smk.output.splits))
    print(json.dumps({k: v for k, v in summary.items() if k != "duplicates"}, indent=1))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
