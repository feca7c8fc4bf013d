"""The study-level view of the unified store that MedCoDi-M trains on: per study its frontal film, its lateral film
and its report, paired only through the store's ``study_pid`` (the source's own study structure: MIMIC-CXR study
folders with the metadata's ``ViewPosition``, IU-Xray's report XML image lists), never through file names."""

from __future__ import annotations

import pandas as pd

from cxrgen.labels import LABEL_COLUMNS

FRONTAL_VIEWS = ("PA", "AP")  # PA preferred: an erect full-inspiration film (the order of this tuple)
LATERAL_VIEWS = ("LATERAL",)
MODALITIES = ("frontal", "lateral", "report")
COLUMNS = ["study_pid", "patient_pid", "split", "source", "frontal_image_id", "lateral_image_id", "report",
           *LABEL_COLUMNS]


def study_report(rows: pd.DataFrame) -> str:
    """The study's impression (MedCoDi-M conditions on the impression), else its findings; "" if it has neither.
    Rows of one study carry the same report; the first non-empty one (by image id) counts."""
    for column in ("report_impression", "report_findings"):
        texts = rows[column].fillna("").astype(str).str.strip()
        texts = texts[texts.str.len() > 0]
        if len(texts):
            return str(texts.iloc[0])
    return ""


def study_table(index: pd.DataFrame, sources: list[str] | tuple[str, ...] = ("mimic", "iuxray")) -> pd.DataFrame:
    """One row per study of ``sources`` (columns :data:`COLUMNS`, sorted by study_pid): ``frontal_image_id`` = the
    first PA image by image id, else the first AP one (None if the study has neither), ``lateral_image_id`` = its
    first LATERAL image (None if absent; UNKNOWN views pair with nothing), ``report`` (:func:`study_report`), and the
    14 ``lbl_*`` labels of the frontal image's row, else of the lateral's, else of the study's first row."""
    missing = {"study_pid", "patient_pid", "split", "source", "view", "image_id", "report_findings",
               "report_impression", *LABEL_COLUMNS} - set(index.columns)
    if missing:
        raise ValueError(f"study_table: the index lacks columns {sorted(missing)}")
    rows = index[index["source"].isin(list(sources))].sort_values(["study_pid", "image_id"])
    out = []
    for study_pid, study in rows.groupby("study_pid", sort=True):
        frontal = next((study[study["view"] == view] for view in FRONTAL_VIEWS if (study["view"] == view).any()),
                       study.iloc[:0])
        lateral = study[study["view"].isin(LATERAL_VIEWS)]
        label_row = (frontal if len(frontal) else lateral if len(lateral) else study).iloc[0]
        patients, splits = study["patient_pid"].unique(), study["split"].unique()
        if len(patients) > 1 or len(splits) > 1:
            raise ValueError(f"study {study_pid} spans patients {list(patients)} / splits {list(splits)}")
        out.append({"study_pid": study_pid, "patient_pid": patients[0], "split": splits[0],
                    "source": study["source"].iloc[0],
                    "frontal_image_id": str(frontal["image_id"].iloc[0]) if len(frontal) else None,
                    "lateral_image_id": str(lateral["image_id"].iloc[0]) if len(lateral) else None,
                    "report": study_report(study), **{c: float(label_row[c]) for c in LABEL_COLUMNS}})
    return pd.DataFrame(out, columns=COLUMNS)


def modality_mask(studies: pd.DataFrame) -> pd.DataFrame:
    """Booleans ``frontal``, ``lateral``, ``report``: which modalities each study has."""
    return pd.DataFrame({"frontal": studies["frontal_image_id"].notna().to_numpy(),
                         "lateral": studies["lateral_image_id"].notna().to_numpy(),
                         "report": (studies["report"].fillna("").str.len() > 0).to_numpy()}, index=studies.index)


def combination_names(studies: pd.DataFrame) -> pd.Series:
    """The study's modality combination, e.g. ``frontal+lateral+report`` (``none`` for a study with none)."""
    mask = modality_mask(studies)
    return mask.apply(lambda r: "+".join(m for m in MODALITIES if r[m]) or "none", axis=1)


def study_counts(studies: pd.DataFrame) -> dict:
    """Studies per split, per modality combination, and per split x combination (``studies.json``)."""
    combos = combination_names(studies)
    return {"studies": len(studies),
            "per_split": {str(k): int(v) for k, v in studies["split"].value_counts().sort_index().items()},
            "per_combination": {str(k): int(v) for k, v in combos.value_counts().sort_index().items()},
            "per_split_combination": {str(split): {str(k): int(v) for k, v in
                                                   combos[studies["split"] == split].value_counts().sort_index().items()}
                                      for split in sorted(studies["split"].unique())},
            "per_source": {str(k): int(v) for k, v in studies["source"].value_counts().sort_index().items()}}
