"""MedCoDi-M / XGeM any-to-any image generation and its evaluation (issue 12, paper Tables 2-3): which test studies
count per direction and what condition they get, per-(seed, study, direction) determinism independent of the batch,
and both stages end to end on the synthetic contract inputs of :mod:`medcodi_ldm_helpers` with a real (tiny,
untrained) autoencoder, a 2-step LDM, an untrained tiny evaluator and a store holding every study image."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from evaluate_helpers import narrowed, write_store
from medcodi_ldm_helpers import medcodi_ldm_cfg, write_medcodi_inputs

from cxrgen.config import validate_config
from cxrgen.evaluate.classifier import save_evaluator, tiny_evaluator
from cxrgen.hashing import dir_digest
from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS
from cxrgen.medcodi.generation import (
    direction_conditions,
    direction_seed,
    generate_direction,
    load_generated,
    load_view_autoencoder,
    parse_direction,
    view_directions,
)
from cxrgen.medcodi.image_evaluation import TABLE3_FINDINGS, classification_scores
from cxrgen.medcodi.ldm import load_embeddings, load_view_ldm
from cxrgen.models.autoencoder import build_autoencoder, save_autoencoder
from cxrgen.stages.evaluate_medcodi_images import evaluate_medcodi_images
from cxrgen.stages.generate_medcodi_images import generate_medcodi_images
from cxrgen.stages.train_medcodi_ldm import train_medcodi_ldm

RES = 32  # tiny AE: 8x8x3 latents, factor 4


def _pids(*numbers):
    return [f"mimic-s{i:03d}" for i in numbers]


# helper studies (period 24, study 21 aside): frontal unless i%6==5, lateral unless i%3==2, report unless i%8==7;
# test split = i%4==3 -> with 48 studies: 3 7 11 15 19 23 27 31 35 39 43 47
ALL_THREE = _pids(3, 19, 27, 43)           # frontal, lateral and report
IMAGES_ONLY = _pids(7, 15, 31, 39)         # frontal + lateral, no report
# 11, 35: report only; 23, 47: nothing


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("medcodi_images")
    paths = write_medcodi_inputs(root, n_studies=48)
    torch.manual_seed(0)
    ae_cfg = validate_config({"sources": {"nih": {}}, "autoencoder": {
        "block_out_channels": [8, 16, 16], "layers_per_block": 1, "norm_num_groups": 8, "latent_channels": 3}})
    ae = build_autoencoder(ae_cfg["autoencoder"], RES)
    ae.register_to_config(scaling_factor=0.5)  # the helper cache's scaling factor
    (paths["ae"] / "config.json").unlink()
    save_autoencoder(ae, paths["ae"])
    meta = json.loads((paths["latents"] / "meta.json").read_text())
    (paths["latents"] / "meta.json").write_text(json.dumps({**meta, "autoencoder_sha256": dir_digest(paths["ae"]),
                                                            "resolution": RES}))
    studies = pd.read_parquet(paths["studies"])
    rows = [(r[f"{v}_image_id"], r, v) for _, r in studies.iterrows() for v in ("frontal", "lateral")
            if r[f"{v}_image_id"] is not None]
    write_store(root / "store", [i for i, _, _ in rows],
                np.stack([r[list(LABEL_COLUMNS)].to_numpy(np.float32) for _, r, _ in rows]), source="mimic",
                resolutions=(RES,), extra={"split": [r["split"] for _, r, _ in rows],
                                           "view": ["PA" if v == "frontal" else "LATERAL" for _, _, v in rows],
                                           "patient_pid": [r["patient_pid"] for _, r, _ in rows],
                                           "study_pid": [r["study_pid"] for _, r, _ in rows]})
    for view in ("frontal", "lateral"):
        train_medcodi_ldm(studies=paths["studies"], embeddings=paths["embeddings"], latents_dir=paths["latents"],
                          ae_dir=paths["ae"], cfg=medcodi_ldm_cfg(), view=view, prompting="multi", seed=0,
                          out_dir=root / "ldm" / f"{view}-multi", state_dir=root / "state" / view)
    save_evaluator(tiny_evaluator(RES), root / "evaluator")
    return {**paths, "root": root, "index": root / "store" / "index.parquet", "evaluator": root / "evaluator"}


def _config(no_weights, **generation):
    config = validate_config({"sources": {"nih": {}},
                              "medcodi": {"generation": {"steps": 3, "guidance_scale": 2.0, "batch_size": 3,
                                                         **generation}},
                              "evaluation": {"backbones": {"use": ["evaluator", "xrv"], "xrv": {"cache_dir": str(no_weights)}},
                                             "bootstrap": {"resamples": 20},
                                             "distribution": {"bootstrap_resamples": 5,
                                                              "kid": {"subset_size": 4, "subsets": 3,
                                                                      "bootstrap_subsets": 2}}}})
    return (narrowed(config["medcodi"], "generate_medcodi_images"),
            narrowed(config["evaluation"], "evaluate_medcodi_images"))


# ------------------------------------------------------------------------------------------- conditions


def test_directions_parse_and_belong_to_their_view():
    assert view_directions("frontal") == ("T->F", "L->F", "L+T->F")
    assert view_directions("lateral") == ("T->L", "F->L", "F+T->L")
    assert parse_direction("L+T->F") == (("lateral", "report"), "frontal")
    assert parse_direction("F->L") == (("frontal",), "lateral")
    for bad in ("F->F", "X->F", "T-F"):
        with pytest.raises(ValueError, match="direction"):
            parse_direction(bad)


def test_direction_studies_need_every_input_and_the_real_target(setup):
    studies, emb = pd.read_parquet(setup["studies"]), load_embeddings(setup["embeddings"])
    found = {d: direction_conditions(studies, emb, d) for d in (*view_directions("frontal"),
                                                                 *view_directions("lateral"))}
    assert found["T->F"].study_pids == ALL_THREE  # 11, 35 have the report but no frontal target
    assert found["L->F"].study_pids == sorted(ALL_THREE + IMAGES_ONLY)
    assert found["L+T->F"].study_pids == ALL_THREE
    assert found["F->L"].study_pids == sorted(ALL_THREE + IMAGES_ONLY)
    assert found["L->F"].target_image_ids[0] == "mimic-img003-f"
    assert found["F->L"].target_image_ids[0] == "mimic-img003-l"
    # a study whose lateral embedding is missing drops out of the lateral-prompted directions only
    row = list(emb["study_pids"]).index("mimic-s003")
    broken = {**emb, "lateral": emb["lateral"].copy()}
    broken["lateral"][row] = np.nan
    assert "mimic-s003" not in direction_conditions(studies, broken, "L->F").study_pids
    assert "mimic-s003" in direction_conditions(studies, broken, "T->F").study_pids


def test_conditions_combine_the_direction_inputs(setup):
    studies, emb = pd.read_parquet(setup["studies"]), load_embeddings(setup["embeddings"])
    row = list(emb["study_pids"]).index("mimic-s019")

    def unit(v):
        return v / np.linalg.norm(v)

    expected = {"T->F": unit(emb["report"][row]), "L->F": unit(emb["lateral"][row]),
                "L+T->F": (unit(emb["lateral"][row]) + unit(emb["report"][row])) / 2,
                "F+T->L": (unit(emb["frontal"][row]) + unit(emb["report"][row])) / 2}
    for direction, vector in expected.items():
        found = direction_conditions(studies, emb, direction)
        np.testing.assert_allclose(found.conditions[found.study_pids.index("mimic-s019")], vector, atol=1e-6)
    both = direction_conditions(studies, emb, "L+T->F").conditions
    assert (np.linalg.norm(both, axis=1) < 1 - 1e-3).all()  # the mean of two unit vectors, not re-normalised


# ------------------------------------------------------------------------------------------- determinism


def test_images_depend_on_seed_study_and_direction_not_on_the_batch(setup):
    model = load_view_ldm(setup["root"] / "ldm" / "frontal-multi")
    ae = load_view_autoencoder(setup["root"] / "ldm" / "frontal-multi", model[2])
    found = direction_conditions(pd.read_parquet(setup["studies"]), load_embeddings(setup["embeddings"]), "L->F")
    seeds = [direction_seed(0, pid, "L->F") for pid in found.study_pids]
    assert seeds[0] == direction_seed(0, found.study_pids[0], "L->F")
    assert len({*seeds, direction_seed(0, found.study_pids[0], "L+T->F"), direction_seed(1, found.study_pids[0],
                                                                                         "L->F")}) == len(seeds) + 2
    run = {"steps": 3, "guidance": 2.0, "eta": 1.0}
    whole = generate_direction(model, ae, found.conditions, seeds, batch_size=8, **run)
    again = generate_direction(model, ae, found.conditions, seeds, batch_size=8, **run)
    chunked = generate_direction(model, ae, found.conditions, seeds, batch_size=3, **run)
    assert whole.shape == (8, RES, RES) and whole.dtype == np.uint8
    np.testing.assert_array_equal(whole, again)
    # other batches only change float summation order: at most one grey level
    assert np.abs(whole.astype(int) - chunked.astype(int)).max() <= 1
    other = generate_direction(model, ae, found.conditions, [s + 1 for s in seeds], batch_size=8, **run)
    assert np.abs(whole.astype(int) - other.astype(int)).mean() > 1


# ------------------------------------------------------------------------------------------- stages


def test_generate_then_evaluate_frontal_and_lateral(setup, tmp_path):
    gen_cfg, eval_cfg = _config(tmp_path / "no_weights")
    for view in ("frontal", "lateral"):
        out = tmp_path / f"{view}-multi.npz"
        summary = generate_medcodi_images(model_dir=setup["root"] / "ldm" / f"{view}-multi",
                                          studies=setup["studies"], embeddings=setup["embeddings"], cfg=gen_cfg,
                                          seed=0, out_path=out)
        found, meta = load_generated(out)
        assert list(found) == list(view_directions(view)) and meta["view"] == view and meta["steps"] == 3
        assert {d: v["n"] for d, v in summary["directions"].items()} == {d: len(g.study_pids)
                                                                          for d, g in found.items()}
        assert found[view_directions(view)[0]].study_pids == ALL_THREE  # T->view
        assert found[view_directions(view)[1]].images.shape == (8, RES, RES)
        assert found[view_directions(view)[1]].seeds[0] == direction_seed(0, found[view_directions(view)[1]]
                                                                          .study_pids[0], view_directions(view)[1])

        payload = evaluate_medcodi_images(generated=out, studies=setup["studies"], index_path=setup["index"],
                                          evaluator_dir=setup["evaluator"], cfg=eval_cfg, seed=0,
                                          out_json=tmp_path / "eval" / f"{view}-multi.json",
                                          out_grid=tmp_path / "eval" / f"{view}-multi.png")
        written = json.loads((tmp_path / "eval" / f"{view}-multi.json").read_text())
        assert written["view"] == view and written["prompting"] == "multi"
        assert (tmp_path / "eval" / f"{view}-multi.png").stat().st_size > 0
        assert set(written["directions"]) == set(view_directions(view))
        assert any("xrv" in line for line in written["skipped_backbones"])  # no local weights: skipped, reported
        for direction, entry in written["directions"].items():
            assert entry["n"] == len(found[direction].study_pids)
            fid = entry["fid"]["evaluator"]
            assert fid["value"] >= 0 and fid["ci"][0] <= fid["value"] <= fid["ci"][1]
            assert set(entry["kid"]) == {"evaluator"}
            assert ("classification" in entry) == (view == "frontal")
        assert payload["n_real"] == 8  # test studies with an image of that view: ALL_THREE + IMAGES_ONLY
    scores = json.loads((tmp_path / "eval" / "frontal-multi.json").read_text())
    for entry in (*scores["directions"].values(), scores["real"]):
        for metric in ("auroc", "f1"):
            assert set(entry["classification"][metric]) == {*TABLE3_FINDINGS, "micro", "macro", "weighted"}
    assert set(scores["thresholds"]) == set(TABLE3_FINDINGS)
    assert scores["real"]["n"] == 8


def test_classification_scores_cover_the_table3_findings_only():
    rng = np.random.default_rng(0)
    n = 40
    labels = np.full((n, len(LABEL_COLUMNS)), np.nan)
    columns = [list(CHEXPERT_LABELS).index(name) for name in TABLE3_FINDINGS]
    for j in columns:
        labels[:, j] = rng.integers(0, 2, n)
    labels[:, columns[0]] = 0.0  # atelectasis: negatives only -> unscored (None), out of the averages
    labels[:, 0] = rng.integers(0, 2, n)  # No Finding: not a Table 3 finding
    probs = np.where(np.nan_to_num(labels) == 1, 0.8, 0.2)
    probs[:, 0] = 1.0 - probs[:, 0]  # inverted on a finding outside the table: must not matter
    thresholds = np.full(len(LABEL_COLUMNS), 0.5)
    out = classification_scores(labels, probs, thresholds, resamples=10, confidence=0.9, seed=0, min_per_class=3)
    assert set(out["auroc"]) == {*TABLE3_FINDINGS, "micro", "macro", "weighted"}
    assert out["auroc"]["Atelectasis"] is None and out["f1"]["Atelectasis"] is None
    for metric in ("auroc", "f1"):
        assert all(out[metric][name] == pytest.approx(1.0) for name in TABLE3_FINDINGS[1:])
        assert out[metric]["macro"] == pytest.approx(1.0) and out[metric]["micro"] == pytest.approx(1.0)
    worse = classification_scores(labels, 1.0 - probs, thresholds, resamples=10, confidence=0.9, seed=0,
                                  min_per_class=3)
    assert worse["auroc"]["macro"] == pytest.approx(0.0) and worse["f1"]["micro"] == pytest.approx(0.0)


def test_no_study_with_the_inputs_reports_every_direction_with_n_zero(tmp_path):
    """A small corpus may have no test lateral: the evaluation writes n = 0 per direction and a placeholder grid
    instead of failing the DAG (the report then prints "–")."""
    from cxrgen.medcodi.generation import GeneratedDirection, save_generated
    from cxrgen.stages.evaluate_medcodi_images import evaluate_medcodi_images

    empty = GeneratedDirection(np.zeros((0, 16, 16), np.uint8), [], [])
    npz = tmp_path / "lateral-single.npz"
    save_generated(npz, {d: empty for d in ("T->L", "F->L", "F+T->L")},
                   {"view": "lateral", "prompting": "single", "split": "test", "seed": 0, "steps": 2,
                    "guidance": 1.0, "eta": 1.0})
    out_json, out_grid = tmp_path / "eval.json", tmp_path / "eval.png"
    payload = evaluate_medcodi_images(generated=npz, studies=tmp_path / "unused.parquet", index_path=tmp_path / "x",
                                      evaluator_dir=tmp_path / "none", cfg={}, seed=0, out_json=out_json,
                                      out_grid=out_grid)
    assert payload["directions"] == {"T->L": {"n": 0}, "F->L": {"n": 0}, "F+T->L": {"n": 0}}
    assert json.loads(out_json.read_text())["directions"]["F+T->L"] == {"n": 0} and out_grid.stat().st_size > 0
