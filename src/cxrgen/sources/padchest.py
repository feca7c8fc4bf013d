"""PadChest adapter (BIMCV, Bustos et al., Medical Image Analysis 2020).

Real layout: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (also accepted gzipped; first column is an unnamed
row index) and the images as ``<ImageDir>/<ImageID>`` (``ImageDir`` = number of the zip the PNG came in, 0–50 and 54),
16-bit grayscale PNGs holding ``BitsStored_DICOM`` (12 or 10) significant bits, all MONOCHROME2. PNGs are matched by
file name anywhere under the root, so a flattened copy works too.

- View from ``Projection``: PA, AP, AP_horizontal (supine AP) -> AP, L -> LATERAL, COSTAL/EXCLUDE/UNK -> UNKNOWN.
- ``spacing_hint_mm`` = ``SpatialResolution_DICOM`` (present on about 40% of rows, else NaN); ``bits_stored_hint`` =
  ``BitsStored_DICOM``. Age = study year − ``PatientBirth``. No official split.
- Report: ``Report`` holds lower-cased, stemmed Spanish tokens ("sin hallazg patolog edad pacient ."), not prose, so
  ``report_findings`` is None by default: feeding it to English text encoders would condition on noise. Option
  ``keep_report: true`` puts the stemmed text in ``report_findings`` (e.g. for a Spanish token vocabulary).

Label policy (``Labels`` is a stringified Python list over PadChest's 194-term taxonomy, leading blanks included):
each report was annotated exhaustively over that taxonomy (by physicians or by a model trained on their annotations),
so for a row with at least one informative label a mapped CheXpert label that is not mentioned is **0**. A row whose
list is empty, null, only ``''``/``exclude``/``suboptimal study``, or contains ``unchanged`` without ``normal`` gets
**NaN** for unmentioned labels ("unchanged" refers to a prior study whose findings are not restated). PadChest has no
uncertainty, so -1 never occurs. No Finding is 1 when ``normal`` is listed and no mapped pathology is positive (support
devices allowed, as in CheXpert); ``normal`` together with a mapped pathology gives No Finding 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.labels import CHEXPERT_LABELS, label_column
from cxrgen.sources.base import register_adapter
from cxrgen.sources.files import find_first, join_files, list_files

CSV_NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
PROJECTION_TO_VIEW = {"PA": "PA", "AP": "AP", "AP_HORIZONTAL": "AP", "L": "LATERAL",
                      "COSTAL": "UNKNOWN", "EXCLUDE": "UNKNOWN", "UNK": "UNKNOWN"}

_GROUPS: dict[str, tuple[str, ...]] = {
    "No Finding": ("normal",),
    "Enlarged Cardiomediastinum": ("aortic elongation", "supra aortic elongation", "descendent aortic elongation",
                                   "ascendent aortic elongation", "aortic button enlargement", "mediastinal enlargement",
                                   "superior mediastinal enlargement"),
    "Cardiomegaly": ("cardiomegaly",),
    "Lung Opacity": ("infiltrates", "alveolar pattern", "interstitial pattern", "reticular interstitial pattern",
                     "reticulonodular interstitial pattern", "ground glass pattern", "increased density",
                     "miliary opacities"),
    "Lung Lesion": ("nodule", "multiple nodules", "pulmonary mass", "mass", "lung metastasis", "cavitation", "abscess",
                    "cyst", "lepidic adenocarcinoma"),
    # CheXpert's labeler counts heart failure and vascular congestion as edema mentions (Irvin et al., AAAI 2019)
    "Edema": ("pulmonary edema", "heart insufficiency", "hilar congestion", "vascular redistribution",
              "central vascular redistribution", "kerley lines"),
    "Consolidation": ("consolidation", "air bronchogram"),
    "Pneumonia": ("pneumonia", "atypical pneumonia"),
    "Atelectasis": ("atelectasis", "laminar atelectasis", "lobar atelectasis", "segmental atelectasis",
                    "total atelectasis", "round atelectasis", "atelectasis basal"),
    "Pneumothorax": ("pneumothorax", "hydropneumothorax"),
    "Pleural Effusion": ("pleural effusion", "loculated pleural effusion", "loculated fissural effusion", "empyema"),
    "Pleural Other": ("pleural thickening", "apical pleural thickening", "calcified pleural thickening",
                      "pleural plaques", "calcified pleural plaques", "pleural mass"),
    "Fracture": ("fracture", "rib fracture", "callus rib fracture", "clavicle fracture", "humeral fracture",
                 "vertebral fracture"),
    "Support Devices": ("nsg tube", "endotracheal tube", "tracheostomy tube", "chest drain tube", "catheter",
                        "central venous catheter", "central venous catheter via jugular vein",
                        "central venous catheter via subclavian vein", "central venous catheter via umbilical vein",
                        "reservoir central venous catheter", "pacemaker", "dual chamber device",
                        "single chamber device", "electrical device", "dai", "artificial heart valve",
                        "artificial mitral heart valve", "artificial aortic heart valve", "ventriculoperitoneal drain tube",
                        "gastrostomy tube", "nephrostomy tube", "double j stent", "aortic endoprosthesis",
                        "endoprosthesis", "osteosynthesis material", "humeral prosthesis"),
}
#: lower-cased PadChest label -> CheXpert label
PADCHEST_TO_CHEXPERT: dict[str, str] = {term: label for label, terms in _GROUPS.items() for term in terms}
#: PadChest labels that also set a second CheXpert label
PADCHEST_SECOND_LABEL: dict[str, str] = {"hydropneumothorax": "Pleural Effusion"}
NON_INFORMATIVE = frozenset({"", "unchanged", "exclude", "suboptimal study"})
_PATHOLOGIES = tuple(x for x in CHEXPERT_LABELS if x not in ("No Finding", "Support Devices"))


def parse_label_list(column: pd.Series) -> pd.Series:
    """``"['normal', ' pleural effusion']"`` -> ``["normal", "pleural effusion"]`` (stripped, lower-cased); null -> []."""
    found = column.fillna("").astype(str).str.findall(r"'([^']*)'")
    return found.map(lambda items: [item.strip().lower() for item in items])


def padchest_labels(labels: pd.Series) -> pd.DataFrame:
    """The ``Labels`` column -> raw CheXpert-convention columns, following the policy in the module docstring."""
    terms = parse_label_list(labels)
    flat = terms.explode()
    flat = flat[flat.notna()]
    hits = pd.concat([flat.map(PADCHEST_TO_CHEXPERT), flat.map(PADCHEST_SECOND_LABEL)]).dropna()
    positive = pd.crosstab(hits.index, hits).reindex(index=labels.index, columns=list(CHEXPERT_LABELS), fill_value=0)
    positive = positive.to_numpy() > 0

    informative = flat[~flat.isin(NON_INFORMATIVE)].groupby(level=0).size().reindex(labels.index, fill_value=0) > 0
    has_unchanged = flat.eq("unchanged").groupby(level=0).any().reindex(labels.index, fill_value=False)
    normal = flat.eq("normal").groupby(level=0).any().reindex(labels.index, fill_value=False)
    complete = (informative & (~has_unchanged | normal)).to_numpy()

    values = np.where(positive, 1.0, np.where(complete[:, None], 0.0, np.nan))
    pathology = positive[:, [CHEXPERT_LABELS.index(x) for x in _PATHOLOGIES]].any(axis=1)
    no_finding = np.where(normal.to_numpy() & ~pathology, 1.0, np.where(complete | pathology, 0.0, np.nan))
    values[:, CHEXPERT_LABELS.index("No Finding")] = no_finding
    return pd.DataFrame(values, index=labels.index, columns=[label_column(x) for x in CHEXPERT_LABELS])


def padchest_metadata(table: pd.DataFrame, keep_report: bool = False) -> pd.DataFrame:
    """The label CSV (read with ``dtype=str``) -> manifest metadata columns plus ``match_key``/``expected_path``."""
    key = table["ImageID"].str.strip()
    folder = table["ImageDir"].str.strip().str.replace(r"\.0$", "", regex=True)
    meta = pd.DataFrame({"match_key": key, "source_key": key, "expected_path": folder + "/" + key})
    meta["patient_id"] = table["PatientID"].str.strip()
    meta["study_id"] = table["StudyID"].str.strip()
    meta["view"] = table["Projection"].str.strip().str.upper().map(PROJECTION_TO_VIEW).fillna("UNKNOWN")
    sex = table["PatientSex_DICOM"].str.strip().str.upper()
    meta["sex"] = sex.where(sex.isin(["M", "F"]), "U")
    study_year = pd.to_numeric(table["StudyDate_DICOM"].str.strip().str[:4], errors="coerce")
    meta["age"] = study_year - pd.to_numeric(table["PatientBirth"], errors="coerce")
    meta["spacing_hint_mm"] = pd.to_numeric(table["SpatialResolution_DICOM"], errors="coerce")
    meta["bits_stored_hint"] = pd.to_numeric(table["BitsStored_DICOM"], errors="coerce")
    report = table["Report"].str.strip()
    meta["report_findings"] = report.where(report != "", None) if keep_report else None
    meta["report_impression"] = None
    meta["official_split"] = None
    return pd.concat([meta, padchest_labels(table["Labels"].where(table["Labels"].str.strip() != "", None))], axis=1)


@register_adapter("padchest")
def scan_padchest(root: Path, options: dict) -> pd.DataFrame:
    """Manifest of a PadChest copy. Options: ``keep_report`` (default False)."""
    root = Path(root)
    table = pd.read_csv(find_first(root, (CSV_NAME,)), dtype=str, keep_default_na=False)
    meta = padchest_metadata(table, keep_report=bool(options.get("keep_report", False)))
    files = list_files(root, (".png",))
    return join_files(meta, files, match_on="name", source="padchest")
