"""Adapter for rule report_medcodi: the MedCoDi-M (XGeM) report fragment (data, retrieval, Tables 2-6, Fig. 7, notes),
its summary paragraph, the tables as json and the figures."""

from pathlib import Path
from typing import TYPE_CHECKING

from cxrgen.logutil import setup_logging

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main(smk) -> None:
    setup_logging(smk.log[0])
    from cxrgen.stages.report_medcodi import report_medcodi

    models = {"text_vae": Path(smk.input.text_vae) / "metrics.json"}
    models |= {f"report_diffusion/{Path(d).name}": Path(d) / "metrics.json" for d in smk.input.report_models}
    models |= {f"ldm/{Path(d).name}": Path(d) / "metrics.json" for d in smk.input.view_models}
    joint = smk.input.joint
    report_medcodi(studies_json=smk.input.studies, encoders_metrics=Path(smk.input.encoders) / "metrics.json",
                   model_metrics=models, image_evals={Path(p).stem: p for p in smk.input.image_evals},
                   report_evals={Path(p).stem: p for p in smk.input.report_evals}, joint_json=joint,
                   hamming_png=Path(joint).with_name("hamming.png"),
                   out_md=smk.output.markdown,
                   out_summary=smk.output.summary, out_json=smk.output.tables, out_fid=smk.output.fid,
                   out_hamming=smk.output.hamming, out_grids={Path(p).stem: p for p in smk.output.grids},
                   utility_fragments={Path(p).stem: p for p in smk.input.utility})


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
