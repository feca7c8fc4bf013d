"""MedCoDi-M / XGeM joint generation (paper §2.3, Table 6, Fig. 7): the joint layers train while the generators stay
frozen, an untrained (zero-gated) alignment samples exactly like independent generation, resume is exact, and the
evaluation writes the contract's JSON and figure on a tiny setup."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from medcodi_joint_helpers import RESOLUTION, build_generators, rule_cfg
from medcodi_ldm_helpers import DIM

from cxrgen.config import validate_config
from cxrgen.medcodi.joint import (
    DIRECTIONS,
    JointAlignment,
    PairSettings,
    hamming_counts,
    load_generators,
    load_joint,
    sample_pair,
)
from cxrgen.stages.train_joint_alignment import train_joint_alignment
from cxrgen.train.loop import Interrupted


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return build_generators(tmp_path_factory.mktemp("joint"))


def _train(setup, name: str, **kwargs) -> dict:
    kwargs.setdefault("cfg", rule_cfg("train_joint_alignment"))
    return train_joint_alignment(studies=setup["studies"], embeddings=setup["embeddings"],
                                 latents_dir=setup["latents"], ae_dir=setup["ae"], frontal_dir=setup["frontal"],
                                 lateral_dir=setup["lateral"], report_dir=setup["report"], vae_dir=setup["vae"],
                                 seed=0, out_dir=setup["root"] / name, state_dir=setup["root"] / f"state-{name}",
                                 **kwargs)


def _generators(setup):
    return load_generators(setup["frontal"], setup["lateral"], setup["report"])


def _frozen_state(generators) -> dict[str, torch.Tensor]:
    return {f"{m}.{k}": v.clone() for m, module in generators.frozen_modules().items()
            for k, v in module.state_dict().items()}


def test_training_moves_only_the_joint_layers(setup):
    import pandas as pd

    from cxrgen.data.latents import load_latents
    from cxrgen.medcodi.joint import JointTrainer, joint_training_data
    from cxrgen.medcodi.ldm import load_embeddings
    from cxrgen.medcodi.text_vae import load_text_vae
    from cxrgen.train.loop import seed_everything
    from cxrgen.train.sections import loop_config

    generators = _generators(setup)
    before = _frozen_state(generators)
    data = joint_training_data(pd.read_parquet(setup["studies"]), load_embeddings(setup["embeddings"]),
                               load_latents(setup["latents"], ae_dir=setup["ae"]), load_text_vae(setup["vae"]),
                               float(generators.report_manifest["latent_scale"]), ["train"])
    cfg = rule_cfg("train_joint_alignment")
    seed_everything(0)
    trainer = JointTrainer(cfg, generators, data)
    initial = {k: v.clone() for k, v in trainer.joint.state_dict().items()}
    trainer.fit(loop_config(cfg, 0), setup["root"] / "state-direct")
    after = _frozen_state(generators)
    assert before.keys() == after.keys()  # the joint processors are not registered inside the UNets
    assert all(torch.equal(before[k], after[k]) for k in before)
    moved = [k for k, v in trainer.joint.state_dict().items() if not torch.equal(v, initial[k])]
    assert any("gate" in k for k in moved) and any(k.startswith("env.") for k in moved)
    # 3 steps = one round of the pairs: every V and both kinds of partner layers learned something
    assert {k.split(".")[1] for k in moved if k.startswith("env.")} == {"frontal", "lateral", "report"}
    assert any(k.startswith("report_partner.") for k in moved)
    assert any(k.startswith("image_attention.frontal.") for k in moved)
    assert any(k.startswith("image_attention.lateral.") for k in moved)


def test_zero_gate_joint_sampling_equals_independent_sampling(setup):
    generators = _generators(setup)
    torch.manual_seed(1)
    joint = JointAlignment.for_generators(generators, tokens=2, hidden=16)
    with torch.no_grad():  # random V and partner projections: only the zero gates keep the flows apart
        for name, p in joint.named_parameters():
            if not (name.endswith("gate") or name.endswith("gates")):
                p.normal_()
    joint.install(generators.unets)
    conditions = torch.nn.functional.normalize(torch.randn(3, DIM), dim=-1)
    settings = PairSettings(steps=3, image_guidance=2.0, report_guidance=2.0, image_eta=1.0)
    for pair in (("frontal", "lateral"), ("lateral", "report")):
        seeds = {m: [10 + i + 7 * k for i in range(3)] for k, m in enumerate(pair)}
        together = sample_pair(generators, joint, pair, conditions, seeds, settings, use_joint=True)
        apart = sample_pair(generators, joint, pair, conditions, seeds, settings, use_joint=False)
        for m in pair:
            assert torch.equal(together[m], apart[m])
        with torch.no_grad():
            joint.image_attention[pair[0]][next(iter(joint.image_attention[pair[0]]))].gate.fill_(0.5)
        coupled = sample_pair(generators, joint, pair, conditions, seeds, settings, use_joint=True)
        assert not torch.allclose(coupled[pair[0]], apart[pair[0]])  # the comparison above could fail
        with torch.no_grad():
            for p in joint.parameters():
                if p.ndim == 1 and p.shape == (1,):
                    p.zero_()


def test_independent_image_flow_matches_sample_view(setup):
    from cxrgen.medcodi.ldm import sample_view

    generators = _generators(setup)
    conditions = torch.nn.functional.normalize(torch.randn(2, DIM), dim=-1)
    settings = PairSettings(steps=3, image_guidance=2.0, report_guidance=2.0)
    seeds = {"frontal": [3, 4], "lateral": [5, 6]}
    apart = sample_pair(generators, None, ("frontal", "lateral"), conditions, seeds, settings, use_joint=False)
    reference = sample_view(setup["frontal"], conditions, [3, 4], steps=3, guidance=2.0, eta=1.0)
    assert torch.allclose(apart["frontal"], reference, atol=1e-5)


def test_resume_equals_uninterrupted_run(setup):
    full = _train(setup, "full", cfg=rule_cfg("train_joint_alignment", max_steps=2))
    with pytest.raises(Interrupted):
        _train(setup, "resumed", cfg=rule_cfg("train_joint_alignment", max_steps=2), stop_after_steps=1)
    resumed = _train(setup, "resumed", cfg=rule_cfg("train_joint_alignment", max_steps=2))
    assert resumed["resumed_from"] == 1 and full["steps"] == resumed["steps"] == 2
    from safetensors.torch import load_file

    a = load_file(setup["root"] / "full" / "alignment" / "diffusion_pytorch_model.safetensors")
    b = load_file(setup["root"] / "resumed" / "alignment" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    generators = _generators(setup)
    joint = load_joint(setup["root"] / "full", generators)
    assert float(joint.report_partner.gates.abs().sum()) > 0  # trained: the gates left zero


def test_hamming_counts_on_a_hand_made_case():
    a = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1]])
    b = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1]])
    assert hamming_counts(a, b) == {"0": 1, "2": 2}
    assert set(DIRECTIONS) == {"T->F+L", "L->F+T", "F->L+T"}


def test_evaluation_writes_table6_and_fig7(setup):
    from cxrgen.evaluate.classifier import save_evaluator, tiny_evaluator
    from cxrgen.medcodi.prompt_encoders import save_manifest
    from cxrgen.models.clip import save_clip, scratch_clip
    from cxrgen.stages.evaluate_joint_generation import evaluate_joint_generation
    from cxrgen.train.loop import seed_everything

    root = setup["root"]
    if not (root / "full").exists():
        _train(setup, "full", cfg=rule_cfg("train_joint_alignment", max_steps=2))
    seed_everything(0)
    encoder_cfg = validate_config({"sources": {"nih": {}}, "medcodi": {"prompt_encoders": {
        "embed_dim": DIM, "vision": {"width": 32, "layers": 1, "head_width": 16, "patch_size": 8},
        "text": {"width": 32, "heads": 2, "layers": 1, "context_length": 16}}}})["medcodi"]["prompt_encoders"]
    save_clip(scratch_clip(encoder_cfg, RESOLUTION), root / "encoders")
    save_manifest(root / "encoders", resolution=RESOLUTION, embed_dim=DIM, pairs=[("frontal", "report")])
    save_evaluator(tiny_evaluator(resolution=RESOLUTION), root / "evaluator")
    kwargs = {"studies": setup["studies"], "embeddings": setup["embeddings"], "frontal_dir": setup["frontal"],
              "lateral_dir": setup["lateral"], "report_dir": setup["report"], "vae_dir": setup["vae"],
              "joint_dir": root / "full", "ae_dir": setup["ae"], "encoders_dir": root / "encoders",
              "evaluator_dir": root / "evaluator", "cfg": rule_cfg("evaluate_joint_generation"), "seed": 0}
    payload = evaluate_joint_generation(**kwargs, out_json=root / "eval" / "joint.json",
                                        out_png=root / "eval" / "hamming.png")
    written = json.loads((root / "eval" / "joint.json").read_text())
    assert (root / "eval" / "hamming.png").stat().st_size > 0
    assert set(written["similarity"]) == set(DIRECTIONS)
    n_test = 2  # write_medcodi_inputs: test studies 3, 7, 11, 15, 19, 23; with F, L and T: 3 and 19
    for values in written["similarity"].values():
        assert values["n"] == n_test
        for mode in ("independent", "joint"):
            assert -1.0 <= values[mode]["mean"] <= 1.0
            assert values[mode]["ci"][0] <= values[mode]["mean"] <= values[mode]["ci"][1]
        assert values["difference"]["mean"] == pytest.approx(values["joint"]["mean"] - values["independent"]["mean"])
    hamming = written["hamming"]
    assert hamming["pair"] == "L->F+T" and len(hamming["labels"]) == 14
    for mode in ("independent", "joint"):
        assert sum(hamming[mode].values()) == n_test
        assert all(0 <= int(d) <= 14 for d in hamming[mode])
    # the trained gates are non-zero, so joint and independent generation differ (the comparison is not vacuous)
    assert payload["similarity"]["T->F+L"]["joint"]["mean"] != payload["similarity"]["T->F+L"]["independent"]["mean"]
    again = evaluate_joint_generation(**kwargs, out_json=root / "eval2" / "joint.json",
                                      out_png=root / "eval2" / "hamming.png")
    assert again["similarity"] == payload["similarity"] and again["hamming"] == payload["hamming"]

    # a corpus without a test study holding all three modalities: n = 0 everywhere, no failure
    studies = pd.read_parquet(setup["studies"])
    studies.loc[studies["split"] == "test", "lateral_image_id"] = None
    studies.to_parquet(root / "no_test_lateral.parquet")
    empty = evaluate_joint_generation(**{**kwargs, "studies": root / "no_test_lateral.parquet"},
                                      out_json=root / "eval3" / "joint.json", out_png=root / "eval3" / "hamming.png")
    assert {d: v["n"] for d, v in empty["similarity"].items()} == dict.fromkeys(DIRECTIONS, 0)
    assert json.loads((root / "eval3" / "joint.json").read_text())["hamming"]["n"] == 0
