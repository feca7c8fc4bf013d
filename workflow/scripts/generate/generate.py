"""Adapter for rule generate: DDIM sampling + SR cascade into the synthetic store, with a sample grid."""

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from cxrgen.logutil import setup_job

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_job(smk.log[0], smk.threads)
    from cxrgen.stages.generate import generate

    metrics = generate(ldm_dir=smk.input.ldm, ae_dir=smk.input.autoencoder, clip_dir=smk.input.get("clip"),
                       sr_dir=smk.input.sr, prompts_path=smk.input.prompts, cfg=dict(smk.params.cfg),
                       out_root=smk.output.store, tracking_json=smk.input.tracking,
                       job_name=f"{smk.rule}:{smk.wildcards.variant}", dkim_dir=smk.input.get("dkim"))
    shutil.copyfile(Path(smk.output.store) / "grid.png", smk.output.grid)
    print(metrics)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
