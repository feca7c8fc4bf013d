"""Adapter for rules extract_real_features (real reference/train/val sets) and extract_generated_features (one
generated variant): images → features of every usable backbone + evaluator probabilities."""

from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    common = {"evaluator_dir": smk.input.evaluator, "cfg": dict(smk.params.cfg), "resolution": smk.params.resolution,
              "out_dir": smk.output.features, "tracking_json": smk.input.tracking,
              "clip_dir": smk.input.clip[0] if smk.input.clip else None}
    if smk.rule == "extract_real_features":
        from cxrgen.stages.extract_real_features import extract_real_features

        counts = extract_real_features(index_path=smk.input.index, store_root=smk.params.store_root,
                                       seed=smk.params.seed, job_name=smk.rule, **common)
    else:
        from cxrgen.stages.extract_generated_features import extract_generated_features

        counts = extract_generated_features(synthetic_root=smk.input.store,
                                            job_name=f"{smk.rule}:{smk.wildcards.variant}", **common)
    print(counts)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
