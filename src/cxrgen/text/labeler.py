"""Offline, rule-based CheXpert-style report labeler for the 14 observations of :data:`cxrgen.labels.CHEXPERT_LABELS`.

How a report is labelled (the design follows the published CheXpert labeler's stages — mention extraction,
classification, aggregation — but the phrase lists, cue lists and scope rules below are this project's own):

1. **Normalise and split.** Lower case, de-identification tokens (``XXXX``, ``___``) become ``xxxx``; the text is cut
   into sentences (``. ! ?`` followed by a space, line breaks) and each sentence into *clauses* at scope terminators
   (``;``, ``:``, "but", "however", "although", "except", "other than", "which", "there is", …). A negation or
   uncertainty cue never reaches across a clause boundary.
2. **Mentions.** Each observation has a list of regular expressions (:data:`MENTIONS`); every match in a clause is a
   mention. A few observations also have *normal statements* (:data:`NORMAL_STATEMENTS`): "heart size is normal"
   yields a negative Cardiomegaly mention, "the mediastinum is unremarkable" a negative Enlarged Cardiomediastinum
   mention, "costophrenic angles are sharp" a negative Pleural Effusion mention. "Heart size is borderline / at the
   upper limits of normal" is an uncertain Cardiomegaly mention.
3. **Classification of a mention.** Cue phrases are found per clause. Phrases that contain a negation word but express
   doubt ("cannot be excluded", "not ruled out") are uncertainty cues; pseudo-negations ("no change in", "no
   interval increase") are ignored. The *nearest* cue before the mention decides (negation -> 0, uncertainty -> -1);
   without one, the nearest cue after it that looks backwards ("is not seen", "has resolved", "is suspected",
   "cannot be excluded", "?"). "suggest / concerning for …" inside a negation ("no opacity to suggest pneumonia") is
   part of the negation. A negation word inside a mention ("heart is not enlarged") negates it. Two different
   findings joined by "or" / "versus" outside any negation ("atelectasis or pneumonia") are both uncertain.
4. **Aggregation per report** (CheXpert's order): any positive mention -> 1, else any uncertain -> -1, else any
   negative -> 0, else blank (NaN). **No Finding** is 1 when the report has text and none of the 12 pathology
   observations (all but No Finding and Support Devices) is positive or uncertain; otherwise blank.

Output values follow the raw-label convention of the manifests (1, 0, -1, NaN); :func:`label_reports` returns a
[N, 14] float32 array in :data:`~cxrgen.labels.CHEXPERT_LABELS` order.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS, NEGATIVE, POSITIVE, UNCERTAIN

#: the observations whose positive/uncertain mention rules out "No Finding"
PATHOLOGIES: tuple[str, ...] = tuple(k for k in CHEXPERT_LABELS if k not in ("No Finding", "Support Devices"))

_GAP = r"[a-z0-9\s,/-]{0,40}?"  # a short stretch of words inside one clause

# ---- mentions (this project's own phrase lists) -------------------------------------------------------------------
MENTIONS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        r"(?:widen\w*|enlarg\w*|prominen\w*) (?:of the )?(?:superior )?(?:cardio ?)?mediastin\w*",
        r"(?:cardio ?)?mediastin\w*(?: silhouette| contours?| shadow)? (?:is |are |appears? |remains? )?"
        r"(?:mildly |moderately |markedly )?(?:widen\w*|enlarg\w*|prominent)",
    ),
    "Cardiomegaly": (
        r"cardiomegal\w*",
        r"(?:enlarge\w*|large|big) (?:cardiac silhouette|cardiac shadow|heart)",
        r"(?:cardiac|heart) (?:enlargement|size (?:is )?(?:mildly |moderately )?increased)",
        r"enlargement of (?:the )?(?:cardiac silhouette|cardiac shadow|heart)",
        r"(?:heart|cardiac silhouette|cardiac shadow|heart size)(?: size)? (?:is |are |appears |remains )?"
        r"(?:again )?(?:not )?(?:mildly |moderately |markedly |severely |slightly )?(?:enlarged|large)",
    ),
    "Lung Opacity": (
        r"opaci\w*",
        r"(?<!bone )(?<!bony )(?<!mineral )(?<!soft tissue )densit(?:y|ies)",
        r"infiltra\w*",
        r"air ?-?space (?:disease|process)",
        r"haz(?:e|y|iness)",
        r"interstitial (?:markings|prominence|pattern|disease|thickening|changes)",
        r"reticula(?:r|tion)\w*",
    ),
    "Lung Lesion": (
        r"nodul\w*",
        r"(?<!soft tissue )mass(?:es)?\b",
        r"(?<!bony )(?<!osseous )(?<!lytic )(?<!sclerotic )(?<!skin )lesions?",
        r"tumou?rs?",
        r"neoplasm\w*",
        r"carcinoma\w*",
        r"metasta\w*",
        r"cavita\w*",
    ),
    "Edema": (
        r"(?<!soft tissue )oedema|(?<!soft tissue )edema",
        r"(?:vascular|pulmonary|venous) congestion",
        r"congestive (?:heart )?failure|heart failure|\bchf\b",
        r"fluid overload",
        r"kerley",
        r"cephaliz\w*",
        r"(?:vascular|vasculature) (?:prominence|engorgement)",
        r"(?:prominent|engorged|indistinct) (?:pulmonary )?(?:vasculature|vascular markings|vessels)",
    ),
    "Consolidation": (
        r"consolidat\w*",
    ),
    "Pneumonia": (
        r"(?:broncho)?pneumoni\w*",
        r"pneumonitis",
        r"(?<!granulomatous )(?<!prior )(?<!old )(?<!previous )(?<!remote )infectio\w*",
    ),
    "Atelectasis": (
        r"atelecta\w*",
        r"(?:lobar|lobe|segmental|lung) collapse",
        r"collapse of the (?:\w+ ){0,3}(?:lobe|lung|segment)",
    ),
    "Pneumothorax": (
        r"(?:hydro|hemo|haemo)?pneumothora\w*",
    ),
    "Pleural Effusion": (
        r"(?<!pericardial )(?<!joint )effusions?",
        r"pleural fluid",
        r"(?:hydro|hemo|haemo)thorax",
        r"fluid (?:in|within) the (?:\w+ ){0,2}(?:pleural|fissure|costophrenic)",
        r"blunt\w* (?:of )?(?:the )?(?:\w+ ){0,2}(?:costophrenic|cp) (?:angles?|sulc\w*|recess\w*)",
        r"(?:costophrenic|cp) (?:angle |sulcus )?blunting",
    ),
    "Pleural Other": (
        r"pleural (?:and parenchymal |-parenchymal |parenchymal )?(?:thickening|plaques?|calcifications?|scar\w*)",
        r"pleural-parenchymal (?:scar\w*|thickening)",
        r"thickening of the (?:\w+ )?pleura",
        r"fibrothorax",
        r"(?:bi)?apical (?:pleural )?(?:cap|capping|thickening)",
        r"fissur\w* thickening|thickening (?:of|in|along) the (?:\w+ )?fissure",
    ),
    "Fracture": (
        r"fractur\w*",
        r"\bfx\b",
    ),
    "Support Devices": (
        r"(?:endotracheal|tracheostomy|nasogastric|orogastric|chest|feeding|enteric|gastric|dobhoff|"
        r"\bet|\bng|\bog|\bng/og) tubes?",
        r"tracheostomy",
        r"catheters?",
        r"(?:picc|central|central venous|venous|swan-ganz|swan ganz|jugular|subclavian|dialysis|port) (?:line|catheter)s?",
        r"\bpicc\b",
        r"port-?a-?cath|mediport|porta?cath|(?:chest|infusion|power) port",
        r"pacemaker\w*|\bpacer\b|defibrillator|\baicd\b|\bicd\b",
        r"(?:pacing|pacemaker|pacer|cardiac|transvenous) (?:leads?|wires?|generator|device)",
        r"stents?\b",
        r"(?:chest|jugular|subclavian|cardiac|arm|wall) xxxx (?:with (?:its |the )?)?tip|xxxx tip|tip (?:projecting|projects|"
        r"overl\w*|terminat\w*|in the|at the)",
        r"(?:lines and tubes|tubes and lines)",
        r"stimulator|prosthe\w*|valve replacement|shunt|tubing|leads\b|generator|hardware|internal fixation|"
        r"embolization coils|coils\b",
        r"(?:surgical |vascular )?clips?\b",
        r"(?:medical )?device",
        r"\bdrains?\b",
    ),
}

#: literal substrings of which at least one occurs wherever a mention pattern of the observation matches (a cheap
#: pre-filter: Python's ``re`` cannot skip ahead on patterns that start with ``\b``); checked by the tests
TRIGGERS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": ("mediastin",),
    "Cardiomegaly": ("cardiomegal", "enlarg", "large", "big", "increased"),
    "Lung Opacity": ("opaci", "densit", "infiltra", "space", "haz", "interstitial", "reticula"),
    "Lung Lesion": ("nodul", "mass", "lesion", "tumo", "neoplasm", "carcinoma", "metasta", "cavita"),
    "Edema": ("edema", "congestion", "failure", "chf", "overload", "kerley", "cephaliz", "vascula", "vessels"),
    "Consolidation": ("consolidat",),
    "Pneumonia": ("pneumoni", "infectio"),
    "Atelectasis": ("atelecta", "collapse"),
    "Pneumothorax": ("pneumothora",),
    "Pleural Effusion": ("effusion", "fluid", "thorax", "blunt"),
    "Pleural Other": ("pleura", "fibrothorax", "apical", "fissur"),
    "Fracture": ("fractur", "fx"),
    "Support Devices": ("tub", "tracheostomy", "catheter", "line", "picc", "cath", "port", "pace", "defibrillator",
                        "icd", "lead", "wire", "generator", "device", "stent", "clip", "drain", "tip", "stimulator",
                        "prosthe", "valve", "shunt", "hardware", "fixation", "coil"),
}

#: (observation, subject regex, predicate regex, status): "<subject> … <predicate>" (or predicate first) in one clause
NORMAL_STATEMENTS: tuple[tuple[str, str, str, float], ...] = (
    ("Cardiomegaly",
     r"heart|cardiac (?:size|silhouette|contours?|shadow)|cardio ?mediastinal (?:silhouette|contours?|shadow)",
     r"borderline|upper limits? of normal|high normal|top normal|top-normal|mildly prominent", UNCERTAIN),
    ("Cardiomegaly",
     r"heart|cardiac (?:size|silhouette|contours?|shadow)|cardio ?mediastinal (?:silhouette|contours?|shadow)",
     r"(?<!limits of )(?<!limit of )normal\b|within normal limits|unremarkable|not enlarged|normal-sized|normal sized",
     NEGATIVE),
    ("Enlarged Cardiomediastinum",
     r"mediastin\w*|cardio ?mediastinal (?:silhouette|contours?|shadow)",
     r"(?<!limits of )(?<!limit of )normal\b|within normal limits|unremarkable|not (?:widened|enlarged)",
     NEGATIVE),
    ("Pleural Effusion",
     r"costophrenic (?:angles?|sulci|recesses)",
     r"sharp\w*|clear|preserved|normal|well-defined|well defined", NEGATIVE),
)

# ---- cues ------------------------------------------------------------------------------------------------------
_TERMINATORS = re.compile(
    r";|:|\b(?:but|however|although|though|whereas|while|except|aside from|apart from|other than|otherwise|which|"
    r"there (?:is|are|has been|have been)|and (?=the\b|there\b))\b")
# doubt expressed with a negation word (matched first; they count as uncertainty, in both directions)
_UNCERTAIN_BOTH = re.compile(
    r"\b(?:(?:can ?not|can't|could not|couldn't|does not|do not) (?:be )?(?:entirely |completely |totally |fully )?"
    r"(?:exclude[sd]?|rule[sd]? out)|not (?:be )?(?:entirely |completely |totally |fully )?(?:excluded|ruled out)|"
    r"difficult to (?:exclude|rule out)|versus|vs\b\.?)")
_PSEUDO_NEGATION = re.compile(
    r"\b(?:no|without) (?:significant |appreciable |substantial |definite |interval |further |apparent )?"
    r"(?:change|increase|decrease|improvement|worsening|progression|enlargement of)\w*|"
    r"\bnot (?:significantly |substantially )?(?:changed|increased|decreased|improved|worsened)|\bnot only\b|"
    r"\bgram[- ]negative\b")
_NEGATION_PRE = re.compile(
    r"\b(?:no|not|without|negative for|free of|clear of|absence of|resolution of|resolved|nor|neither|never|"
    r"removal of|interval removal of)\b")
_NEGATION_POST = re.compile(
    r"\b(?:not (?:been )?(?:seen|identified|demonstrated|visualized|visualised|visible|present|evident|appreciated|"
    r"noted|detected|apparent|shown)|(?:(?:is|are|appears?) )?within (?:the )?(?:normal limits|limits of normal)|"
    r"(?:has |have )?(?:resolved|cleared)|(?:has |have )?(?:been )?removed|absent|"
    r"no longer (?:seen|present|visualized|visible|evident|identified)|ruled out)\b")
_UNCERTAIN_PRE = re.compile(
    r"\b(?:may|might|could|possibl[ey]|probabl[ey]|likely|questionabl[ey]|question of|suspicious|suspicion|"
    r"suspect(?:ed)?|suggest(?:s|ive|ing|ed)?|concern(?:ing)? (?:for|of)|worrisome|consider(?:ed)?|equivocal|"
    r"indeterminate|borderline|differential|presumed|presumably|cannot exclude)\b")
# an uncertainty cue of this family inside a negation's clause belongs to the negation ("no opacity to suggest …")
_SUGGEST_FAMILY = re.compile(r"^(?:suggest|concern|worrisome|suspicious|suspicion)")
_UNCERTAIN_POST = re.compile(
    r"(?:\b(?:is |are |was |were )?(?:possible|suspected|questioned|likely|favou?red|not excluded)\b|\?)")
_NEG_INSIDE = re.compile(r"\b(?:no|not)\b")
_OR_JOIN = re.compile(r"^\s*,?\s*(?:or|versus|vs\.?|and/or)\s+(?:[a-z-]+\s+){0,3}$")
_DEID = re.compile(r"_{2,}|\bx{2,}\b", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")

_COMPILED_MENTIONS: dict[str, re.Pattern] = {
    label: re.compile("|".join(rf"\b(?:{p})" for p in pats))
    for label, pats in MENTIONS.items()
}
_COMPILED_NORMALS = [
    (label, re.compile(rf"\b(?:{subj})\b{_GAP}\b(?:{pred})|\b(?:{pred}){_GAP}\b(?:{subj})\b"), status)
    for label, subj, pred, status in NORMAL_STATEMENTS
]
_NORMAL_TRIGGERS = {"Cardiomegaly": ("heart", "cardi"), "Enlarged Cardiomediastinum": ("mediastin",),
                    "Pleural Effusion": ("costophrenic",)}


@dataclass(frozen=True)
class Mention:
    """One mention of an observation: label, status (1, 0, -1), sentence number and the matched text."""

    label: str
    status: float
    sentence: int
    text: str


def normalise(text: str | None) -> str:
    if not text:
        return ""
    return re.sub(r"[ \t]+", " ", _DEID.sub("xxxx", str(text))).strip().lower()


def split_sentences(text: str | None) -> list[str]:
    """Sentences of a report (normalised); empty pieces are dropped."""
    return [s.strip(" .") for s in _SENTENCE.split(normalise(text)) if s.strip(" .")]


def _clauses(sentence: str) -> list[tuple[int, int]]:
    bounds, start = [], 0
    for m in _TERMINATORS.finditer(sentence):
        bounds.append((start, m.start()))
        start = m.end()
    bounds.append((start, len(sentence)))
    return [(a, b) for a, b in bounds if b > a]


def _spans(pattern: re.Pattern, text: str, masked: list[tuple[int, int]]) -> list[tuple[int, int, str]]:
    out = []
    for m in pattern.finditer(text):
        if not any(a < m.end() and m.start() < b for a, b in masked):
            out.append((m.start(), m.end(), m.group()))
    return out


def _find_mentions(clause: str) -> list[tuple[str, int, int, str]]:
    return [(label, m.start(), m.end(), m.group()) for label, pattern in _COMPILED_MENTIONS.items()
            if any(t in clause for t in TRIGGERS[label]) for m in pattern.finditer(clause)]


def _classify_clause(clause: str) -> list[tuple[str, float, int, int]]:
    """(label, status, start, end) of every mention in one clause."""
    found_mentions = _find_mentions(clause)
    normals = [(label, pattern, status) for label, pattern, status in _COMPILED_NORMALS
               if any(t in clause for t in _NORMAL_TRIGGERS[label])]
    if not found_mentions and not normals:
        return []
    both = _spans(_UNCERTAIN_BOTH, clause, [])
    masked = [(a, b) for a, b, _ in both] + [(m.start(), m.end()) for m in _PSEUDO_NEGATION.finditer(clause)]
    neg_pre = _spans(_NEGATION_PRE, clause, masked)
    neg_post = _spans(_NEGATION_POST, clause, masked)
    unc_pre = _spans(_UNCERTAIN_PRE, clause, masked)
    first_negation = min((a for a, _, _ in neg_pre), default=len(clause))
    unc_pre = [c for c in unc_pre if not (_SUGGEST_FAMILY.match(c[2]) and c[0] > first_negation)]
    unc_post = _spans(_UNCERTAIN_POST, clause, masked)
    pre = [(b, NEGATIVE) for _, b, _ in neg_pre] + [(b, UNCERTAIN) for _, b, _ in unc_pre + both]
    post = [(a, NEGATIVE) for a, _, _ in neg_post] + [(a, UNCERTAIN) for a, _, _ in unc_post + both]

    mentions: list[tuple[str, float, int, int]] = []
    for label, start, end, text in found_mentions:
        if _NEG_INSIDE.search(text):
            mentions.append((label, NEGATIVE, start, end))
            continue
        before = [c for c in pre if c[0] <= start]
        after = [c for c in post if c[0] >= end]
        if before:
            status = max(before, key=lambda c: c[0])[1]
        elif after:
            status = min(after, key=lambda c: c[0])[1]
        else:
            status = POSITIVE
        mentions.append((label, status, start, end))
    # "atelectasis or pneumonia": two different findings offered as alternatives are both uncertain
    mentions.sort(key=lambda m: m[2])
    for i in range(len(mentions) - 1):
        (la, sa, _, ea), (lb, sb, stb, eb) = mentions[i], mentions[i + 1]
        if la != lb and sa == POSITIVE and sb == POSITIVE and _OR_JOIN.match(clause[ea:stb]):
            mentions[i] = (la, UNCERTAIN, mentions[i][2], ea)
            mentions[i + 1] = (lb, UNCERTAIN, stb, eb)
    found = {m[0] for m in mentions if m[1] in (POSITIVE, UNCERTAIN)}
    for label, pattern, status in normals:
        if label in found:
            continue
        m = pattern.search(clause)
        if m:
            mentions.append((label, status, m.start(), m.end()))
            found.add(label)  # the first matching statement per label wins (borderline before normal)
    return mentions


@functools.lru_cache(maxsize=65536)
def _sentence_mentions(sentence: str) -> tuple[tuple[str, float, str], ...]:
    """(label, status, text) of the mentions of one normalised sentence (cached: reports repeat sentences a lot)."""
    out = []
    for a, b in _clauses(sentence):
        for label, status, start, end in _classify_clause(sentence[a:b]):
            out.append((label, status, sentence[a + start:a + end]))
    return tuple(out)


def extract_mentions(text: str | None) -> list[Mention]:
    """Every classified mention of a report text."""
    return [Mention(label, status, s_i, found) for s_i, sentence in enumerate(split_sentences(text))
            for label, status, found in _sentence_mentions(sentence)]


def aggregate(mentions: Iterable[Mention], has_text: bool) -> dict[str, float]:
    """Report-level labels (CheXpert order: positive > uncertain > negative > blank) plus No Finding."""
    statuses: dict[str, set[float]] = {}
    for m in mentions:
        statuses.setdefault(m.label, set()).add(m.status)
    labels = dict.fromkeys(CHEXPERT_LABELS, np.nan)
    for label, found in statuses.items():
        labels[label] = next(v for v in (POSITIVE, UNCERTAIN, NEGATIVE) if v in found)
    if has_text and not any(labels[k] in (POSITIVE, UNCERTAIN) for k in PATHOLOGIES):
        labels["No Finding"] = POSITIVE
    return labels


def label_report(findings: str | None, impression: str | None = None) -> dict[str, float]:
    """Labels of one report (FINDINGS and IMPRESSION text; either may be None)."""
    text = " \n".join(t for t in (findings, impression) if isinstance(t, str) and t.strip())
    sentences = split_sentences(text)
    mentions = [Mention(label, status, s_i, found) for s_i, sentence in enumerate(sentences)
                for label, status, found in _sentence_mentions(sentence)]
    return aggregate(mentions, has_text=bool(sentences))


def label_reports(findings: Sequence[str | None], impressions: Sequence[str | None] | None = None) -> np.ndarray:
    """[N, 14] float32 labels (1, 0, -1, NaN) in CHEXPERT_LABELS order. Identical texts are labelled once."""
    impressions = impressions if impressions is not None else [None] * len(findings)
    if len(impressions) != len(findings):
        raise ValueError("findings and impressions differ in length")
    cache: dict[tuple, np.ndarray] = {}
    out = np.full((len(findings), len(CHEXPERT_LABELS)), np.nan, dtype=np.float32)
    for i, key in enumerate(zip(findings, impressions, strict=True)):
        key = tuple(k if isinstance(k, str) else None for k in key)
        if key not in cache:
            labels = label_report(*key)
            cache[key] = np.array([labels[k] for k in CHEXPERT_LABELS], dtype=np.float32)
        out[i] = cache[key]
    return out


def label_frame(frame: pd.DataFrame, findings: str = "report_findings",
                impression: str = "report_impression") -> pd.DataFrame:
    """The ``lbl_*`` columns (raw convention) for the report columns of ``frame``, same index."""
    values = label_reports(frame[findings].tolist(), frame[impression].tolist())
    return pd.DataFrame(values, index=frame.index, columns=list(LABEL_COLUMNS))
