"""MedCoDi-M / XGeM utility experiments per view (issue 12 "Also"): the T->F / T->L twins (rule
generate_medcodi_twins) carry the prompt study's labels and view in the store format the downstream harness reads, are
deterministic, and the per-view downstream jobs (rule run_view_downstream = run_downstream with the view's config)
train and score on real images of that view only; rule evaluate_medcodi_utility's per-view table."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from evaluate_helpers import narrowed, write_store
from medcodi_ldm_helpers import medcodi_ldm_cfg, write_medcodi_inputs

from cxrgen.config import validate_config
from cxrgen.data.latents import load_latents
from cxrgen.evaluate.classifier import tiny_classifier_config
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.medcodi.ldm import load_embeddings, manifest, save_view_ldm, view_trainer, view_training_data
from cxrgen.medcodi.utility import STORE_VIEWS, twin_seed, twin_studies, view_downstream_cfg
from cxrgen.models.autoencoder import build_autoencoder, save_autoencoder
from cxrgen.stages.evaluate_medcodi_utility import evaluate_medcodi_utility
from cxrgen.stages.generate_medcodi_twins import generate_medcodi_twins
from cxrgen.stages.run_downstream import run_downstream
from cxrgen.store import ShardStore
from cxrgen.train.loop import seed_everything

RES = 32  # the tiny autoencoder decodes the helpers' 3x8x8 latents to 32 px


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """48 synthetic studies (frontal PA + lateral films, reports, labels), a store holding every film, a tiny real
    autoencoder and an untrained multi-prompt LDM per view."""
    root = tmp_path_factory.mktemp("medcodi_utility")
    paths = write_medcodi_inputs(root, n_studies=48)
    torch.manual_seed(0)
    ae_cfg = validate_config({"sources": {"nih": {}}, "autoencoder": {
        "block_out_channels": [8, 16, 16], "layers_per_block": 1, "norm_num_groups": 8, "latent_channels": 3}})
    save_autoencoder(build_autoencoder(ae_cfg["autoencoder"], RES), paths["ae"])
    studies = pd.read_parquet(paths["studies"])
    embeddings = load_embeddings(paths["embeddings"])
    for view in ("frontal", "lateral"):
        data = view_training_data(studies, embeddings, load_latents(paths["latents"]), view=view, prompting="multi",
                                  splits=["train"], with_std=False)
        seed_everything(0)
        trainer = view_trainer(medcodi_ldm_cfg(), data, view=view, prompting="multi")
        out = root / "ldm" / f"{view}-multi"
        save_view_ldm(trainer, out, manifest(view=view, prompting="multi", dim=data.embeddings.shape[-1],
                                             latent_shape=list(data.mean.shape[1:]), scaling_factor=0.5,
                                             ae_dir=paths["ae"], out_dir=out))
    films = [(row[f"{view}_image_id"], row, "PA" if view == "frontal" else "LATERAL")
             for _, row in studies.iterrows() for view in ("frontal", "lateral") if pd.notna(row[f"{view}_image_id"])]
    labels = np.stack([row[list(LABEL_COLUMNS)].to_numpy(np.float32) for _, row, _ in films])
    write_store(root / "store", [f for f, _, _ in films], labels, source="mimic", resolutions=(RES,),
                extra={"split": [row["split"] for _, row, _ in films], "view": [v for _, _, v in films],
                       "patient_pid": [row["patient_pid"] for _, row, _ in films],
                       "study_pid": [row["study_pid"] for _, row, _ in films]})
    return {**paths, "root": root, "studies_frame": studies, "store_index": pd.read_parquet(root / "store/index.parquet")}


def _twins_cfg(**overrides) -> dict:
    medcodi = validate_config({"sources": {"nih": {}}, "medcodi": {"utility": {"twins": {
        "steps": 2, "batch_size": 8, **overrides}}}})["medcodi"]
    return narrowed(medcodi, "generate_medcodi_twins")["utility"]["twins"]


def _generate(world, view, out, **overrides):
    return generate_medcodi_twins(studies=world["studies"], embeddings=world["embeddings"],
                                  index=world["root"] / "store/index.parquet",
                                  ldm_dir=world["root"] / "ldm" / f"{view}-multi", ae_dir=world["ae"], view=view,
                                  cfg=_twins_cfg(**overrides), seed=7, resolution=RES, out_root=out)


@pytest.fixture(scope="module")
def twins(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    for view in ("frontal", "lateral"):
        _generate(world, view, root / view)
    return root


@pytest.mark.parametrize(("view", "store_view"), [("frontal", "PA"), ("lateral", "LATERAL")])
def test_twins_carry_the_prompt_studys_labels_and_view(world, twins, view, store_view):
    index = pd.read_parquet(twins / view / "index.parquet")
    studies = world["studies_frame"].set_index("study_pid")
    # every train study with a film of the view, a report and a label: study i lacks a report when i % 8 == 7
    expected = studies[(studies["split"] == "train") & studies[f"{view}_image_id"].notna()
                       & (studies["report"] != "")]
    assert sorted(index["study_pid"]) == sorted(expected.index) and len(index) > 5
    assert (index["view"] == store_view).all() and (index["set"] == "train_twins").all()
    assert (index["split"] == "synthetic").all() and (index["source"] == "synthetic").all()
    for _, twin in index.iterrows():
        study = studies.loc[twin["study_pid"]]
        assert twin["source_image_id"] == study[f"{view}_image_id"]  # the real film of that view of the study
        assert twin["prompt"] == study["report"]
        np.testing.assert_array_equal(twin[list(LABEL_COLUMNS)].to_numpy(np.float32),
                                      study[list(LABEL_COLUMNS)].to_numpy(np.float32))  # NaN == NaN here
        assert twin["seed"] == twin_seed(7, twin["study_pid"], "T->F" if view == "frontal" else "T->L")
    store = ShardStore(twins / view, index)
    pixels = np.stack([store.read(i, RES) for i in range(len(index))])
    store.close()
    assert pixels.shape == (len(index), RES, RES) and pixels.std() > 0
    metrics = json.loads((twins / view / "metrics.json").read_text())
    assert metrics["n_images"] == len(index) and metrics["store_views"] == {store_view: len(index)}


def test_twins_are_deterministic_and_each_twin_depends_only_on_its_study(world, twins, tmp_path):
    full = pd.read_parquet(twins / "lateral" / "index.parquet").set_index("study_pid")
    _generate(world, "lateral", tmp_path / "again")
    again = pd.read_parquet(tmp_path / "again" / "index.parquet").set_index("study_pid")
    pd.testing.assert_frame_equal(full, again)  # same sha256 of every image
    _generate(world, "lateral", tmp_path / "few", n=4, batch_size=4)
    few = pd.read_parquet(tmp_path / "few" / "index.parquet").set_index("study_pid")
    assert len(few) == 4 and set(few.index) <= set(full.index)
    # a twin's noise comes from (seed, study, direction) alone: the same twin in a smaller pool and other batches
    assert (few["seed"] == full.loc[few.index, "seed"]).all()
    store_few, store_full = ShardStore(tmp_path / "few", few.reset_index()), ShardStore(twins / "lateral",
                                                                                        full.reset_index())
    positions = {pid: k for k, pid in enumerate(full.index)}
    for k, pid in enumerate(few.index):
        difference = np.abs(store_few.read(k, RES).astype(int) - store_full.read(positions[pid], RES).astype(int))
        assert difference.max() <= 2  # batch composition changes only float summation order (uint16 steps)
    store_few.close(), store_full.close()


def test_twin_selection_ignores_the_table_order(world):
    studies, embeddings = world["studies_frame"], load_embeddings(world["embeddings"])
    picked = twin_studies(studies, embeddings, view="frontal", splits=["train"], n=5, seed=3)
    shuffled = twin_studies(studies.sample(frac=1.0, random_state=1), embeddings, view="frontal", splits=["train"],
                            n=5, seed=3)
    assert picked["study_pid"].tolist() == shuffled["study_pid"].tolist()
    assert picked["study_pid"].tolist() != twin_studies(studies, embeddings, view="frontal", splits=["train"], n=5,
                                                        seed=4)["study_pid"].tolist()
    with pytest.raises(ValueError, match="allowed"):
        twin_studies(studies, embeddings, view="oblique", splits=["train"], n=None, seed=0)


def _sections(experiment: str, **utility) -> tuple[dict, dict, dict]:
    config = validate_config({"sources": {"nih": {}},
                              "evaluator": {"model": tiny_classifier_config(), "batch_size": 4, "max_steps": 2,
                                            "eval_every": 2, "log_every": 1},
                              "downstream": {"scarcity": {"fractions": [0.0, 0.5]}},
                              "medcodi": {"utility": {"max_steps": 2, **utility}}})
    return (narrowed(config["medcodi"], "run_view_downstream")["utility"], config["downstream"][experiment],
            narrowed(config["evaluator"], "run_view_downstream.evaluator_cfg"))


def _run_view(world, twins, view, experiment, out):
    utility, experiment_cfg, evaluator = _sections(experiment)
    return run_downstream(real_index_path=world["root"] / "store/index.parquet", real_store_root=world["root"] / "store",
                          synthetic_store_root=twins / view, experiment=experiment, seed=0, base_seed=10,
                          cfg=view_downstream_cfg(view, experiment, utility, experiment_cfg), evaluator_cfg=evaluator,
                          resolution=RES, state_dir=out / "state", out_path=out / "metrics.json", tracking_json=None,
                          job_name=f"run_view_downstream:{view}/{experiment}/0")


@pytest.mark.parametrize("view", ["frontal", "lateral"])
def test_real_arms_and_test_set_hold_only_that_view(world, twins, view, tmp_path):
    index = world["store_index"]
    films = index[index["view"].isin(STORE_VIEWS[view])]
    metrics = _run_view(world, twins, view, "anonymisation", tmp_path)
    assert metrics["views"] == STORE_VIEWS[view] and metrics["variant"] == f"medcodi-m:{view}-multi"
    for split, key in (("train", "n_real_train"), ("val", "n_val"), ("test", "n_test")):
        assert metrics[key] == (films["split"] == split).sum() > 0, split
    pool = len(pd.read_parquet(twins / view / "index.parquet"))
    size = min(pool, metrics["n_real_train"])
    real, synthetic = metrics["arms"]["real"], metrics["arms"]["synthetic"]
    assert (real["n_real"], real["n_synthetic"], synthetic["n_real"], synthetic["n_synthetic"]) == (size, 0, 0, size)
    # every twin was prompted from a real film of that view, so the real arm holds all of their sources
    assert f"({size} are the sources of the synthetic arm's prompts)" in real["description"]
    assert real["test"]["n_images"] == metrics["n_test"]


def test_view_config_and_the_per_view_table(world, twins, tmp_path):
    utility, imbalance, _ = _sections("imbalance")
    cfg = view_downstream_cfg("lateral", "imbalance", utility, imbalance)
    assert cfg["imbalance"]["pool_sets"] == ["train_twins"] and cfg["pool_sets"] == ["train_twins"]
    assert cfg["views"] == ["LATERAL"] and cfg["max_steps"] == 2 and set(cfg) >= {"variant", "eval_every"}
    with pytest.raises(ValueError, match="allowed"):
        view_downstream_cfg("oblique", "imbalance", utility, imbalance)

    paths = []
    for experiment in ("scarcity", "anonymisation"):
        _run_view(world, twins, "lateral", experiment, tmp_path / experiment)
        paths.append(tmp_path / experiment / "metrics.json")
    table = evaluate_medcodi_utility(view="lateral", metrics_paths=paths, out_json=tmp_path / "lateral.json",
                                     out_md=tmp_path / "lateral.md")
    assert json.loads((tmp_path / "lateral.json").read_text()) == json.loads(json.dumps(table))
    assert table["view"] == "lateral" and table["direction"] == "T->L" and table["store_views"] == ["LATERAL"]
    assert list(table["experiments"]["scarcity"]["arms"]) == ["syn_0pct", "syn_50pct"]
    arm = table["experiments"]["anonymisation"]["arms"]["synthetic"]
    assert arm["seeds"] == [0] and arm["auroc_macro_ci"] is None and arm["n_real"] == 0
    assert table["experiments"]["anonymisation"]["n_test"] == (world["store_index"]["view"] == "LATERAL").sum() - \
        (world["store_index"].query("view == 'LATERAL'")["split"] != "test").sum()
    markdown = (tmp_path / "lateral.md").read_text()
    assert markdown.startswith("### MedCoDi-M utility experiments: lateral films") and "#### Scarcity" in markdown
    front = _run_view(world, twins, "frontal", "scarcity", tmp_path / "frontal")
    with pytest.raises(ValueError, match="mix store views"):
        evaluate_medcodi_utility(view="lateral", metrics_paths=[paths[0], tmp_path / "frontal" / "metrics.json"],
                                 out_json=tmp_path / "x.json", out_md=tmp_path / "x.md")
    assert front["views"] == ["PA", "AP"]
