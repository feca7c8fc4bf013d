"""The MedCoDi-M (XGeM) report (rule report_medcodi) from hand-made json files in the shapes of the issue-12 evaluation
contract: every number lands in its table cell, a direction without results prints "–", missing files are said to be
missing."""

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

from cxrgen.report.medcodi import ALL_IMAGE_DIRECTIONS, IMAGE_DIRECTIONS, JOINT_DIRECTIONS, REPORT_DIRECTIONS
from cxrgen.stages.report_medcodi import report_medcodi

LABELS = ["Cardiomegaly", "Edema"]


def _cls(base):
    return {"auroc": {"Cardiomegaly": base, "Edema": base + 0.01, "micro": base + 0.02, "macro": base + 0.03,
                      "weighted": base + 0.04},
            "f1": {"Cardiomegaly": base - 0.1, "Edema": base - 0.09, "micro": base - 0.08, "macro": base - 0.07,
                   "weighted": base - 0.06}}


def _image_eval(view, prompting, skip=()):
    """FID = 10·(direction index + 1) + (0.5 for multi), n = 5 + direction index."""
    directions = {}
    for i, direction in enumerate(IMAGE_DIRECTIONS[view]):
        if direction in skip:
            continue
        k = ALL_IMAGE_DIRECTIONS.index(direction)
        fid = 10.0 * (k + 1) + (0.5 if prompting == "multi" else 0.0)
        entry = {"n": 5 + k, "fid": {"inception": {"value": fid, "ci": [fid - 1, fid + 1]},
                                     "xrv": {"value": fid / 10, "ci": [fid / 10 - 0.1, fid / 10 + 0.1]}},
                 "kid": {"inception": {"value": 0.0123, "ci": [0.01, 0.015]}}}
        if view == "frontal":
            entry["classification"] = _cls(0.6 + 0.1 * i + (0.05 if prompting == "multi" else 0.0))
        directions[direction] = entry
    payload = {"view": view, "prompting": prompting, "directions": directions,
               "config": {"steps": 4, "guidance_scale": 2.0}}
    if view == "frontal" and prompting == "multi":
        payload["real"] = {"n": 9, "classification": _cls(0.91)}
    return payload


def _report_eval(prompting):
    directions = {}
    for i, direction in enumerate(REPORT_DIRECTIONS):
        b = 0.4 + 0.1 * i + (0.01 if prompting == "multi" else 0.0)
        directions[direction] = {"n": 6 + i, "bleu": {"1": b, "2": b / 2, "3": b / 3, "4": b / 5},
                                 "labeler_f1": {"Cardiomegaly": 0.3 + i / 10, "Edema": 0.2, "micro": 0.25,
                                                "macro": 0.26, "weighted": 0.27}}
    payload = {"prompting": prompting, "directions": directions, "labels": ["Edema", "Cardiomegaly"],
               "examples": [{"study_pid": "s1", "reference": "mild edema.", "generated": {"F->T": "edema."}}]}
    if prompting == "single":
        payload["reference"] = {"n": 11, "labeler_f1": {"Cardiomegaly": 0.95, "Edema": 0.9, "micro": 0.93,
                                                        "macro": 0.925, "weighted": 0.94}}
    return payload


def _joint():
    similarity = {}
    for i, direction in enumerate(JOINT_DIRECTIONS):
        similarity[direction] = {"n": 7, "independent": {"mean": 0.5, "ci": [0.45, 0.55]},
                                 "joint": {"mean": 0.6 + i / 100, "ci": [0.55, 0.65]},
                                 "difference": {"mean": 0.1 + i / 100, "ci": [0.02 - i / 10, 0.18]}}
    return {"similarity": similarity,
            "hamming": {"pair": "L->F+T", "labels": LABELS, "independent": {"0": 2, "1": 4, "2": 1},
                        "joint": {"0": 5, "1": 2}, "mean_independent": 0.857, "mean_joint": 0.286}}


def _write(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return path


def _layout(tmp_path, skip=(), drop_report=None):
    medcodi = tmp_path / "medcodi"
    studies = _write(medcodi / "studies.json", {
        "studies": 40, "per_split": {"test": 10, "train": 24, "val": 6},
        "per_combination": {"frontal+lateral+report": 30, "frontal+report": 10},
        "per_split_combination": {"test": {"frontal+lateral+report": 8, "frontal+report": 2},
                                  "train": {"frontal+lateral+report": 18, "frontal+report": 6},
                                  "val": {"frontal+lateral+report": 4, "frontal+report": 2}},
        "per_source": {"iuxray": 12, "mimic": 28}})
    retrieval = {"test": {"frontal->report": {"queries": 10.0, "recall_at_1": 0.3, "recall_at_1_chance": 0.1,
                                              "recall_at_5": 0.7, "recall_at_5_chance": 0.5, "recall_at_10": 1.0,
                                              "recall_at_10_chance": 1.0}}}
    encoders = _write(medcodi / "prompt_encoders" / "metrics.json",
                      {"retrieval": retrieval, "steps": 60, "embed_dim": 128, "resolution": 64})
    models = {"text_vae": _write(medcodi / "text_vae" / "metrics.json", {"steps": 400, "n_train": 24,
                                                                           "parameters": 1000, "final_loss": 2.5}),
              "ldm/frontal-multi": medcodi / "ldm" / "frontal-multi" / "metrics.json"}  # absent file
    images = {f"{v}-{p}": _write(medcodi / "eval" / "images" / f"{v}-{p}.json", _image_eval(v, p, skip))
              for v in ("frontal", "lateral") for p in ("multi", "single")}
    reports = {p: _write(medcodi / "eval" / "reports" / f"{p}.json", _report_eval(p))
               for p in ("multi", "single") if p != drop_report}
    if drop_report:
        reports[drop_report] = medcodi / "eval" / "reports" / f"{drop_report}.json"
    joint = _write(medcodi / "eval" / "joint.json", _joint())
    out = tmp_path / "reports" / "medcodi"
    text = report_medcodi(studies_json=studies, encoders_metrics=encoders, model_metrics=models, image_evals=images,
                          report_evals=reports, joint_json=joint, hamming_png=medcodi / "eval" / "hamming.png",
                          out_md=out / "medcodi.md", out_summary=out / "summary.md", out_json=out / "medcodi.json",
                          out_fid=out / "fid.png", out_hamming=out / "hamming.png",
                          out_grids={name: out / "grids" / f"{name}.png" for name in images})
    return text, out


def _tables(text):
    """Markdown tables after each bold caption / heading: {caption: [rows as cell lists]} (header row included)."""
    found, caption, rows = {}, None, []
    for line in text.splitlines():
        if line.startswith("|"):
            if not line.startswith("|---"):
                rows.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if rows:
            found[caption] = rows
            rows = []
        if line.startswith("**") or line.startswith("#"):
            caption = line.strip("*# ")
    if rows:
        found[caption] = rows
    return found


def _row(table, *first):
    for row in table:
        if row[:len(first)] == list(first):
            return dict(zip(table[0], row, strict=True))
    raise AssertionError(f"no row {first} in {table}")


def test_every_table_has_the_right_numbers_in_the_right_cells(tmp_path):
    text, out = _layout(tmp_path)
    tables = _tables(text)
    assert text.startswith("# MedCoDi-M (XGeM)") and "later version is titled **XGeM**" in text
    # data counts
    data = tables["Data"]
    assert _row(data, "frontal+lateral+report") == {"modalities": "frontal+lateral+report", "test": "8",
                                                   "train": "18", "val": "4", "all": "30"}
    # retrieval: the measured pair with chance in brackets, the pairs not measured print "–"
    retrieval = tables["Shared latent space: cross-modal retrieval of the prompt encoders"]
    assert _row(retrieval, "test", "frontal->report")["R@1"] == "0.300 (0.100)"
    assert _row(retrieval, "test", "lateral->frontal")["R@5"] == "–"
    assert len(retrieval) == 1 + 6
    # Table 2: FID per backbone, rows single then multi, T->F ... F+T->L columns
    fid = tables["FID, inception features"]
    assert fid[0] == ["model", *ALL_IMAGE_DIRECTIONS]
    assert [r[0] for r in fid[1:]] == ["MedCoDi (single)", "MedCoDi-M (multi)"]
    assert _row(fid, "MedCoDi (single)")["T->F"] == "10.00 [9.00, 11.00]"
    assert _row(fid, "MedCoDi-M (multi)")["F+T->L"] == "60.50 [59.50, 61.50]"
    assert _row(fid, "MedCoDi-M (multi)")["L->F"] == "20.50 [19.50, 21.50]"
    assert _row(tables["FID, xrv features"], "MedCoDi (single)")["F->L"] == "5.00 [4.90, 5.10]"
    assert _row(tables["KID, inception features"], "MedCoDi-M (multi)")["T->L"] == "0.0123 [0.0100, 0.0150]"
    assert _row(tables["Test studies per direction (n)"], "MedCoDi-M (multi)")["F+T->L"] == "10"
    # Table 3: frontal AUROC / F1 per label and average, Real Data row
    auroc, f1 = tables["AUROC"], tables["F1"]
    assert auroc[0] == ["model", "direction", "n", *LABELS, "micro", "macro", "weighted"]
    assert _row(auroc, "MedCoDi-M (multi)", "L->F")["Edema"] == "0.760"
    assert _row(auroc, "MedCoDi (single)", "L+T->F")["weighted"] == "0.840"
    assert _row(f1, "MedCoDi (single)", "T->F")["Cardiomegaly"] == "0.500"
    assert _row(auroc, "Real Data") == {"model": "Real Data", "direction": "–", "n": "9", "Cardiomegaly": "0.910",
                                        "Edema": "0.920", "micro": "0.930", "macro": "0.940", "weighted": "0.950"}
    # Table 4: BLEU per report direction, both promptings
    bleu = tables["Table 4: report generation (BLEU)"]
    assert _row(bleu, "MedCoDi-M (multi)", "F+L->T") == {"model": "MedCoDi-M (multi)", "direction": "F+L->T",
                                                         "n": "8", "BLEU-1": "0.610", "BLEU-2": "0.305",
                                                         "BLEU-3": "0.203", "BLEU-4": "0.122"}
    assert _row(bleu, "MedCoDi (single)", "F->T")["BLEU-1"] == "0.400"
    # Table 5: labeler F1
    labeler = tables["Table 5: labeler F1 of generated reports"]
    assert labeler[0] == ["model", "direction", "n", "Edema", "Cardiomegaly", "micro", "macro", "weighted"]
    assert _row(labeler, "Real reports") == {"model": "Real reports", "direction": "–", "n": "11", "Edema": "0.900",
                                             "Cardiomegaly": "0.950", "micro": "0.930", "macro": "0.925",
                                             "weighted": "0.940"}
    assert "- MedCoDi-M (multi), reference: “mild edema.”; F->T: “edema.”" in text
    assert _row(labeler, "MedCoDi (single)", "L->T")["Cardiomegaly"] == "0.400"
    assert _row(labeler, "MedCoDi-M (multi)", "F->T")["macro"] == "0.260"
    # Table 6: joint vs independent with the interval of the difference
    joint = tables["Table 6: joint vs independent generation (cosine similarity in the shared space)"]
    assert _row(joint, "T->F+L")["difference [CI]"] == "0.100 [0.020, 0.180]"
    assert _row(joint, "T->F+L")["CI excludes 0"] == "yes"
    assert _row(joint, "L->F+T")["CI excludes 0"] == "no"  # [-0.08, 0.18]
    assert _row(joint, "F->L+T")["joint"] == "0.620 [0.550, 0.650]"
    # Fig. 7: histogram table (a distance only one mode reached counts 0 for the other) and the figure
    hamming = tables["Fig. 7: Hamming distance between generated image and generated report labels"]
    assert _row(hamming, "2") == {"Hamming distance": "2", "independent": "1", "joint": "0"}
    assert "mean distance independent 0.86, joint 0.29" in text
    assert "![Hamming distance histogram, independent vs joint](hamming.png)" in text
    for name in ("fid.png", "hamming.png", "grids/frontal-multi.png", "grids/lateral-single.png"):
        assert (out / name).stat().st_size > 0
    # which config produced the tables
    assert 'Settings: `{"guidance_scale": 2.0, "steps": 4}`' in text
    assert "rule train_prompt_encoders (60 steps" in text
    # models: a missing metrics.json prints dashes, never numbers
    assert _row(tables["Models"], "ldm/frontal-multi")["steps"] == "–"
    assert _row(tables["Models"], "text_vae")["parameters"] == "1000"
    # notes: n per direction and the demo caveat
    assert "T->F (single) n=5" in text and "smallest 5" in text and "demo-scale data" in text
    # tables as data and the short summary paragraph
    tables_json = json.loads((out / "medcodi.json").read_text())
    assert tables_json["tables"]["table2_fid"]["inception"]["MedCoDi-M (multi)"]["T->L"] == "40.50 [39.50, 41.50]"
    summary = (out / "summary.md").read_text()
    assert "[medcodi.md](medcodi.md)" in summary and "60.50 [59.50, 61.50]" in summary and "XGeM" in summary


def test_a_missing_direction_and_missing_files_render_dashes(tmp_path):
    text, out = _layout(tmp_path, skip=("L->F", "F+T->L"), drop_report="single")
    tables = _tables(text)
    fid = tables["FID, inception features"]
    assert _row(fid, "MedCoDi (single)")["L->F"] == "–" and _row(fid, "MedCoDi-M (multi)")["F+T->L"] == "–"
    assert _row(fid, "MedCoDi-M (multi)")["T->F"] == "10.50 [9.50, 11.50]"  # its neighbours keep their numbers
    assert _row(tables["Test studies per direction (n)"], "MedCoDi (single)")["L->F"] == "–"
    auroc = tables["AUROC"]
    assert set(list(_row(auroc, "MedCoDi-M (multi)", "L->F").values())[2:]) == {"–"}
    bleu = tables["Table 4: report generation (BLEU)"]
    assert list(_row(bleu, "MedCoDi (single)", "F->T").values())[2:] == ["–"] * 5
    assert _row(bleu, "MedCoDi-M (multi)", "F->T")["BLEU-4"] == "0.082"
    assert ("No results for 7 direction(s): L->F (single), F+T->L (single), L->F (multi), F+T->L (multi), "
            "F->T (single), L->T (single), F+L->T (single) (shown as –)") in text


def test_nothing_available_says_so(tmp_path):
    out = tmp_path / "r"
    text = report_medcodi(studies_json=None, encoders_metrics=tmp_path / "absent.json", model_metrics={},
                          image_evals={}, report_evals={}, joint_json=None, hamming_png=None, out_md=out / "m.md",
                          out_summary=out / "s.md", out_json=out / "m.json", out_fid=out / "f.png",
                          out_hamming=out / "h.png")
    assert text.count("not available in this run") >= 6
    assert "|" not in text  # no table, hence no number, is made up
    assert "MedCoDi-M evaluation results not available" in (out / "s.md").read_text()



def _text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_rule_adapter_maps_the_rule_files(tmp_path):
    """workflow/scripts/report/report_medcodi.py with the rule's input/output names reads every file it is given."""
    medcodi = tmp_path / "results" / "medcodi"
    views = [f"{v}-{p}" for v in ("frontal", "lateral") for p in ("multi", "single")]
    for name in views:
        _write(medcodi / "eval" / "images" / f"{name}.json", _image_eval(*name.split("-")))
        _write(medcodi / "ldm" / name / "metrics.json", {"steps": 200, "n_train": 12})
    for p in ("multi", "single"):
        _write(medcodi / "eval" / "reports" / f"{p}.json", _report_eval(p))
        _write(medcodi / "report_diffusion" / p / "metrics.json", {"steps": 800})
    _write(medcodi / "text_vae" / "metrics.json", {"steps": 400})
    _write(medcodi / "prompt_encoders" / "metrics.json", {"steps": 60, "retrieval": {}})
    out = tmp_path / "results" / "reports" / "medcodi"
    smk = SimpleNamespace(
        input=SimpleNamespace(studies=str(medcodi / "studies.json"), encoders=str(medcodi / "prompt_encoders"),
                              text_vae=str(medcodi / "text_vae"),
                              report_models=[str(medcodi / "report_diffusion" / p) for p in ("multi", "single")],
                              view_models=[str(medcodi / "ldm" / n) for n in views],
                              image_evals=[str(medcodi / "eval" / "images" / f"{n}.json") for n in views],
                              report_evals=[str(medcodi / "eval" / "reports" / f"{p}.json") for p in ("multi", "single")],
                              joint=str(_write(medcodi / "eval" / "joint.json", _joint())),
                              utility=[str(_text(medcodi / "eval" / "utility" / "lateral.md",
                                                 "# Utility\n\n| arm | AUROC |\n|---|---|\n| real | 0.61 |\n"))]),
        output=SimpleNamespace(markdown=str(out / "medcodi.md"), summary=str(out / "summary.md"),
                               tables=str(out / "medcodi.json"), fid=str(out / "fid.png"),
                               hamming=str(out / "hamming.png"),
                               grids=[str(out / "grids" / f"{n}.png") for n in views]),
        log=[str(tmp_path / "log.txt")])
    script = Path(__file__).resolve().parents[2] / "workflow" / "scripts" / "report" / "report_medcodi.py"
    spec = importlib.util.spec_from_file_location("report_medcodi_adapter", script)
    adapter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(adapter)
    adapter.main(smk)
    tables = _tables((out / "medcodi.md").read_text())
    assert _row(tables["Models"], "ldm/lateral-single")["steps"] == "200"
    assert _row(tables["Models"], "report_diffusion/multi")["steps"] == "800"
    assert _row(tables["FID, inception features"], "MedCoDi-M (multi)")["F->L"] == "50.50 [49.50, 51.50]"
    assert _row(tables["Table 4: report generation (BLEU)"], "MedCoDi (single)", "L->T")["n"] == "7"
    assert "Study counts (studies.json) not available" in (out / "medcodi.md").read_text()
    assert all((out / "grids" / f"{n}.png").is_file() for n in views)
    text = (out / "medcodi.md").read_text()
    assert "### lateral\n\n### Utility" in text and "| real | 0.61 |" in text


def test_a_direction_with_no_study_prints_dashes():
    """evaluate_medcodi_reports lists every direction, with n = 0 and no scores where no study qualified."""
    from cxrgen.report.medcodi import MedcodiInputs, medcodi_markdown

    reports = {"multi": _report_eval("multi")}
    reports["multi"]["directions"]["L->T"] = {"n": 0, "bleu": {str(k): None for k in range(1, 5)},
                                              "labeler_f1": {"Edema": None, "micro": float("nan")}}
    text = medcodi_markdown(MedcodiInputs(reports=reports))
    tables = _tables(text)
    assert list(_row(tables["Table 4: report generation (BLEU)"], "MedCoDi-M (multi)", "L->T").values())[2:] == [
        "0", "–", "–", "–", "–"]
    assert _row(tables["Table 5: labeler F1 of generated reports"], "MedCoDi-M (multi)", "L->T")["micro"] == "–"
    assert "L->T (multi)" in text.split("No results for")[1]
