"""MIMIC-CXR demo corpus in the DICOM release layout plus the JPG release's CSVs (gzipped, as shipped).

No MIMIC metadata ships offline, so studies are built from real IU-Xray reports: the text is rewritten in the MIMIC
report format (``FINAL REPORT``, EXAMINATION/INDICATION/COMPARISON/FINDINGS/IMPRESSION, ``___`` de-identification) and
labelled with :func:`cxrgen.sources.iuxray.mesh_to_chexpert` plus simple negation/uncertainty cues so the CheXpert CSV
holds 1/0/-1/blank. Each subject has 1-4 studies; PA studies nearly always add a lateral (demo-enriched, so that
MedCoDi-M has enough frontal + lateral + report studies), portable AP studies sometimes do. One phantom seed and one
film size per view per subject: a study's frontal and lateral films, and a patient's films across studies, show the
same patient; the study's findings select what is drawn, and each film is its own acquisition
(:func:`cxrgen.demo.films.vary_acquisition`). Film sizes, spacings and the DICOM encoding mix are plausible choices,
not measured MIMIC statistics (none offline).

With ``icu_stays`` the corpus also holds the portable AP films of the ICU patients planned by
:func:`cxrgen.demo.icu.plan_icu_stays` (the same plan the MIMIC-IV demo tables are written from): one phantom seed, film
size and fake person per subject, so a patient's films differ only in their findings; StudyDate/StudyTime are the
plan's film times, and the report and CheXpert row are written from the film's findings. ICU films are never bad or
noisy files, so the ICU cohort of the demo is exactly the plan's.
"""

from __future__ import annotations

import gzip
import io
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.demo import noise as demo_noise
from cxrgen.demo.badfiles import DICOM_FILM_MIX, plan_bad_files, remove_missing
from cxrgen.demo.common import DemoContext
from cxrgen.demo.films import FilmStyle, demo_size, render, vary_acquisition, write_film
from cxrgen.demo.icu import IcuPlan, plan_icu_stays
from cxrgen.demo.layouts.iuxray import read_reports
from cxrgen.labels import CHEXPERT_LABELS
from cxrgen.sources.iuxray import mesh_laterality, mesh_to_chexpert, parse_report_xml
from cxrgen.sources.mimic import CHEXPERT_CSV, METADATA_CSV, SPLIT_CSV

# demo-enriched split shares (the real release is 98.0 / 0.8 / 1.4 % train / validate / test) so small corpora
# still contain every split
_SPLIT_SHARES = {"train": 0.7, "validate": 0.15, "test": 0.15}
# ICU subjects hold out twice the test share: at the cohort's 14.5 % mortality a 15 % test split of ~200 demo cohort
# stays would hold ~4 deaths, too few for a bootstrap interval of the mortality AUROC to mean anything
_ICU_SPLIT_SHARES = {"train": 0.55, "validate": 0.15, "test": 0.3}
_VIEW_CODE_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}
# (rows, cols, spacing mm) of plausible DX/CR films: portrait PA/lateral cassettes, landscape portable AP detectors
_FILMS = {"PA": [(3056, 2544, 0.139), (2544, 3056, 0.139)], "AP": [(2539, 3050, 0.139), (2022, 2022, 0.168)],
          "LATERAL": [(3056, 2544, 0.139), (2846, 2330, 0.150)]}
# label -> (keyword regex) for the negation/uncertainty cues written into the CheXpert CSV
_CUES = {"Pneumothorax": r"pneumothora", "Pleural Effusion": r"effusion", "Consolidation": r"consolidation",
         "Edema": r"edema", "Pneumonia": r"pneumonia", "Cardiomegaly": r"cardiomegaly"}
# share of PA (erect) / portable AP studies with a lateral film; demo-enriched for the frontal+lateral+report studies
# MedCoDi-M trains on (in the real release roughly a third of the films are laterals)
_LATERAL_SHARE = {"PA": 0.95, "AP": 0.3}
_NEGATION = re.compile(r"\b(no|without|negative for|free of)\b")
_UNCERTAIN = re.compile(r"\b(possible|possibly|may|might|cannot be excluded|questionable|suspect\w*|likely)\b")


def dicom_id(rng: np.random.Generator) -> str:
    """MIMIC dicom_id format: five dash-separated groups of 8 hex digits."""
    return "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, size=5))


def report_labels(terms: list[str], text: str) -> dict[str, float]:
    """MeSH labels, plus 0 for a negated mention and -1 for a hedged positive mention (per sentence)."""
    labels = mesh_to_chexpert(terms)
    for sentence in re.split(r"(?<=[.;])\s+", text.lower()):
        for label, keyword in _CUES.items():
            if not re.search(keyword, sentence):
                continue
            if labels[label] == 1.0 and _UNCERTAIN.search(sentence):
                labels[label] = -1.0
            elif np.isnan(labels[label]) and _NEGATION.search(sentence):
                labels[label] = 0.0
    return labels


def _deid(text: str | None) -> str | None:
    return None if text is None else re.sub(r"X{2,}", "___", text)


def _wrap(text: str) -> str:
    return "\n".join(" " + line for line in textwrap.wrap(text, 76))


def mimic_report(examination: str, rep: dict) -> str:
    """An IU report rewritten in the MIMIC-CXR free-text layout; absent sections are left out."""
    lines = [" " * 33 + "FINAL REPORT", f" EXAMINATION:  {examination}", " "]
    if rep["indication"]:
        lines += [f" INDICATION:  {_deid(rep['indication'])}", " "]
    lines += [f" COMPARISON:  {_deid(rep['comparison']) or 'None.'}", " "]
    for header, key in (("FINDINGS", "findings"), ("IMPRESSION", "impression")):
        if rep[key]:
            lines += [f" {header}:", " ", _wrap(_deid(rep[key])), " "]
    return "\n".join(lines).rstrip() + "\n"


def _film_style(rng: np.random.Generator) -> FilmStyle:
    """A mix of DX/CR encodings: 12-bit native, 16-bit with a non-identity rescale, compressed variants."""
    kind = int(rng.integers(4))
    if kind == 0:
        return FilmStyle(bits_stored=12, transfer_syntax="explicit_le", window=(2048.0, 4096.0), modality="DX",
                         spacing_tags=("PixelSpacing", "ImagerPixelSpacing"))
    if kind == 1:
        return FilmStyle(bits_stored=16, transfer_syntax="jpeg_lossless", rescale_slope=0.5, rescale_intercept=-1024.0,
                         window=(14000.0, 30000.0), modality="DX", spacing_tags=("ImagerPixelSpacing",))
    if kind == 2:
        return FilmStyle(bits_stored=12, transfer_syntax="rle", photometric="MONOCHROME1", voi_lut_sequence=True,
                         modality="CR", spacing_tags=("PixelSpacing",))
    return FilmStyle(bits_stored=14, transfer_syntax="jpeg2000_lossless", rescale_slope=1.0, rescale_intercept=0.0,
                     modality="DX", spacing_tags=("ImagerPixelSpacing",))


def _gz_csv(path: Path, frame: pd.DataFrame) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:  # mtime 0: byte-identical reruns
        gz.write(frame.to_csv(index=False).encode())
    path.write_bytes(buf.getvalue())


def write(root: Path, n_images: int, ctx: DemoContext, icu_stays: int = 0) -> dict:
    """``n_images`` films of general MIMIC subjects plus the films of ``icu_stays`` planned ICU patients (whose
    subject and study ids the general subjects avoid); returns ``{"icu_films": <count>}``."""
    root = Path(root)
    plan = plan_icu_stays(ctx, icu_stays)
    rng = ctx.rng("mimic", "layout")
    xmls = read_reports()
    reps = [parse_report_xml(b) for b in xmls.values()]
    reps = [r for r in reps if r["findings"] or r["impression"]]
    rep_order = rng.permutation(len(reps))

    # subjects -> studies -> images, until n_images images are planned
    images, studies, used_subjects, used_studies = [], [], set(plan.subject_ids), set(plan.study_ids)
    rep_i = 0
    while len(images) < n_images:
        subject = int(rng.integers(10_000_000, 20_000_000))
        if subject in used_subjects:
            continue
        used_subjects.add(subject)
        subject_rng = ctx.rng("mimic", "subject", subject)
        phantom_seed = int(subject_rng.integers(2**31))
        film_choice = {view: int(subject_rng.integers(len(sizes))) for view, sizes in _FILMS.items()}
        split = str(rng.choice(list(_SPLIT_SHARES), p=list(_SPLIT_SHARES.values())))
        date = pd.Timestamp(int(rng.integers(2110, 2200)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
        for _ in range(int(rng.choice([1, 2, 3, 4], p=[0.45, 0.3, 0.15, 0.1]))):
            if len(images) >= n_images:
                break
            study = int(rng.integers(50_000_000, 60_000_000))
            if study in used_studies:
                continue
            used_studies.add(study)
            rep = reps[rep_order[rep_i % len(reps)]]
            rep_i += 1
            portable = rng.random() < 0.35
            views = ["AP"] if portable else ["PA"]
            if rng.random() < _LATERAL_SHARE[views[0]]:
                views.append(str(rng.choice(["LL", "LATERAL"], p=[0.6, 0.4])))
            date = date + pd.Timedelta(days=int(rng.integers(1, 400)))
            studies.append({"subject": subject, "study": study, "rep": rep, "split": split,
                            "exam": "CHEST (PORTABLE AP)" if portable else "CHEST (PA AND LAT)",
                            "date": date.strftime("%Y%m%d"), "time": f"{rng.integers(0, 24):02d}{rng.integers(0, 60):02d}"
                            f"{rng.integers(0, 60):02d}.{rng.integers(0, 1000):03d}", "portable": portable,
                            "phantom_seed": phantom_seed, "film_choice": film_choice})
            for view in views:
                images.append({"study_index": len(studies) - 1, "view": view, "dicom_id": dicom_id(rng)})
    images = images[:n_images]

    bad = plan_bad_files(range(len(images)), ctx.bad_fraction, ctx.rng("mimic", "bad_files"), DICOM_FILM_MIX)
    noisy = demo_noise.plan_for(ctx, "mimic", range(len(images)), bad)
    meta_rows, split_rows, label_rows = [], [], {}
    for i, image in enumerate(images):
        st = studies[image["study_index"]]
        rep, view = st["rep"], image["view"]
        study_dir = root / "files" / f"p{str(st['subject'])[:2]}" / f"p{st['subject']}"
        text = " ".join(filter(None, [rep["findings"], rep["impression"]]))
        labels = report_labels(rep["mesh_major"], text)
        label_rows[(st["subject"], st["study"])] = labels
        report_path = study_dir / f"s{st['study']}.txt"
        if not report_path.exists():
            report_path.parent.mkdir(parents=True, exist_ok=True)
            report_path.write_text(mimic_report(st["exam"], rep))

        item_rng = ctx.rng("mimic", "image", image["dicom_id"])
        base_view = "LATERAL" if view in ("LL", "LATERAL") else view
        rows, cols, spacing = _FILMS[base_view][st["film_choice"][base_view]]
        h, w, demo_spacing = demo_size(rows, cols, spacing, ctx)
        sides = mesh_laterality(rep["mesh_major"])
        findings = {k: sides.get(k, "") for k, v in labels.items() if v == 1.0 and k != "No Finding"}
        pixels = vary_acquisition(render(base_view, h, w, demo_spacing, findings, seed=st["phantom_seed"]), item_rng)
        path = study_dir / f"s{st['study']}" / f"{image['dicom_id']}.dcm"
        pixels = demo_noise.inject(ctx, "mimic", image["dicom_id"], noisy.get(i), pixels,
                                   path.relative_to(root).as_posix())
        kind = bad.get(i)
        write_film(path, pixels, _film_style(item_rng), demo_spacing, view_position=view,
                   patient_id=str(st["subject"]), phi=ctx.phi.fake_person(item_rng),
                   uid_seed=("mimic", ctx.seed, image["dicom_id"]), bad_kind=kind,
                   study_instance_uid=None,
                   extra={"StudyDate": st["date"], "StudyTime": st["time"].split(".")[0],
                          "AccessionNumber": str(st["study"])})
        if kind == "missing_file":
            remove_missing(path)
        if kind == "orphan_file":
            continue  # on disk, but in no CSV
        meta_rows.append({
            "dicom_id": image["dicom_id"], "subject_id": st["subject"], "study_id": st["study"],
            "PerformedProcedureStepDescription": st["exam"], "ViewPosition": view, "Rows": h, "Columns": w,
            "StudyDate": st["date"], "StudyTime": st["time"], "ProcedureCodeSequence_CodeMeaning": st["exam"],
            "ViewCodeSequence_CodeMeaning": _VIEW_CODE_MEANING[view],
            "PatientOrientationCodeSequence_CodeMeaning": "Recumbent" if st["portable"] else "Erect",
        })
        split_rows.append({"dicom_id": image["dicom_id"], "study_id": st["study"], "subject_id": st["subject"],
                           "split": st["split"]})

    icu_films = _write_icu_films(root, plan, ctx, meta_rows, split_rows, label_rows)
    root.mkdir(parents=True, exist_ok=True)
    _gz_csv(root / (METADATA_CSV + ".gz"), pd.DataFrame(meta_rows))
    _gz_csv(root / (SPLIT_CSV + ".gz"), pd.DataFrame(split_rows))
    # the real CheXpert CSV lists the 14 labels alphabetically after subject_id, study_id
    label_frame = pd.DataFrame([{"subject_id": s, "study_id": t, **labels} for (s, t), labels in
                                sorted(label_rows.items())], columns=["subject_id", "study_id",
                                                                      *sorted(CHEXPERT_LABELS)])
    _gz_csv(root / (CHEXPERT_CSV + ".gz"), label_frame)
    return {"icu_films": icu_films}


def icu_split(ctx: DemoContext, subject_id: int) -> str:
    """The split-CSV split of an ICU subject (``_ICU_SPLIT_SHARES``: test-enriched)."""
    rng = ctx.rng("mimic", "icu", "split", subject_id)
    return str(rng.choice(list(_ICU_SPLIT_SHARES), p=list(_ICU_SPLIT_SHARES.values())))


def _write_icu_films(root: Path, plan: IcuPlan, ctx: DemoContext, meta_rows: list, split_rows: list,
                     label_rows: dict) -> int:
    """Render and write the plan's portable AP films; append their metadata, split and label rows."""
    exam = "CHEST (PORTABLE AP)"
    count = 0
    for adm in plan.admissions:
        subject = adm.subject_id
        subject_rng = ctx.rng("mimic", "icu", "subject", subject)
        split = icu_split(ctx, subject)
        rows, cols, spacing = _FILMS["AP"][int(subject_rng.integers(len(_FILMS["AP"])))]
        h, w, demo_spacing = demo_size(rows, cols, spacing, ctx)
        person = ctx.phi.fake_person(subject_rng)
        study_dir = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}"
        for k, film in enumerate(adm.films):
            when = adm.time(film.hours)
            date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S.") + f"{when.microsecond // 1000:03d}"
            report = {"indication": "___ with hypoxia and respiratory failure in the ICU, evaluate for interval change.",
                      "comparison": "___." if k else None, "findings": film.findings_text,
                      "impression": film.impression_text}
            study_dir.mkdir(parents=True, exist_ok=True)
            (study_dir / f"s{film.study_id}.txt").write_text(mimic_report(exam, report))
            label_rows[(subject, film.study_id)] = film.labels
            item_rng = ctx.rng("mimic", "image", film.dicom_id)
            pixels = vary_acquisition(render("AP", h, w, demo_spacing, film.findings, seed=adm.phantom_seed,
                                             sex=adm.sex, age=adm.age), item_rng)
            write_film(study_dir / f"s{film.study_id}" / f"{film.dicom_id}.dcm", pixels, _film_style(item_rng),
                       demo_spacing, view_position="AP", patient_id=str(subject), phi=person,
                       uid_seed=("mimic", ctx.seed, film.dicom_id), study_instance_uid=None,
                       extra={"StudyDate": date, "StudyTime": time.split(".")[0],
                              "AccessionNumber": str(film.study_id)})
            meta_rows.append({
                "dicom_id": film.dicom_id, "subject_id": subject, "study_id": film.study_id,
                "PerformedProcedureStepDescription": exam, "ViewPosition": "AP", "Rows": h, "Columns": w,
                "StudyDate": date, "StudyTime": time, "ProcedureCodeSequence_CodeMeaning": exam,
                "ViewCodeSequence_CodeMeaning": _VIEW_CODE_MEANING["AP"],
                "PatientOrientationCodeSequence_CodeMeaning": "Recumbent"})
            split_rows.append({"dicom_id": film.dicom_id, "study_id": film.study_id, "subject_id": subject,
                               "split": split})
            count += 1
    return count
