"""Rule ``build_study_table``: the study-level view MedCoDi-M trains on (:func:`cxrgen.medcodi.studies.study_table`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrgen.medcodi.studies import study_counts, study_table
from cxrgen.train.job import write_json


def build_study_table(*, index_path: Path | str, sources: list[str], out_parquet: Path | str,
                      out_json: Path | str) -> dict:
    """Write ``out_parquet`` (one row per study of ``sources``, config key ``medcodi.sources``) and ``out_json``
    (studies per split and per modality combination); returns the counts. Fails when no study has both views and a
    report, since every MedCoDi-M model needs such studies."""
    studies = study_table(pd.read_parquet(index_path), sources)
    counts = study_counts(studies)
    if not counts["per_combination"].get("frontal+lateral+report"):
        raise ValueError(f"build_study_table: no study of medcodi.sources = {sources} has a frontal film, a lateral "
                         f"film and a report ({counts['per_combination']}); MedCoDi-M needs sources with multi-view "
                         "reported studies (mimic, iuxray)")
    Path(out_parquet).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{out_parquet}.tmp")
    studies.to_parquet(tmp, index=False)
    tmp.replace(out_parquet)
    write_json(out_json, counts)
    return counts
