import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from cxrgen.config import validate_config
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.models.clip import (
    WEIGHTS_FILE,
    ClipConfigError,
    chance_recall_at_k,
    contrastive_loss,
    encode_images,
    load_clip,
    load_image_encoder,
    load_text_encoder,
    pretrained_clip,
    recall_at_k,
    retrieval_metrics,
    save_clip,
    scratch_clip,
)
from cxrgen.stages.init_tracking import init_tracking
from cxrgen.stages.train_clip import train_clip
from cxrgen.store import ShardWriter, shard_path
from cxrgen.train.loop import Interrupted, latest_checkpoint, seed_everything

RES = 32
REPORTS = ["Large right pleural effusion.", "No acute cardiopulmonary abnormality.", "Cardiomegaly.", ""]


def tiny_cfg(**overrides) -> dict:
    """The validated ``clip`` section with a tiny model (full-scale defaults otherwise)."""
    section = {"embed_dim": 16, "vision": {"width": 32, "layers": 1, "head_width": 16, "patch_size": 8},
               "text": {"width": 32, "heads": 2, "layers": 1, "context_length": 16}, "batch_size": 4,
               "max_steps": 3, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1, "eval_every": 2,
               "lr": 1e-3, "eval_splits": ["val", "test"], **overrides}
    return validate_config({"sources": {"nih": {}}, "clip": section})["clip"]


def tiny_store(root, n=20, res=RES) -> pd.DataFrame:
    """Phantoms whose bright blob position follows the report; every 4th row has no report (must be skipped)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:res, :res] / res
    rows = []
    with ShardWriter(shard_path(root, res, "mimic", 0)) as writer:
        for i in range(n):
            kind = i % 4
            image = np.full((res, res), 0.3) + rng.normal(0, 0.02, (res, res))
            image[((xx - 0.25 - 0.25 * kind) / 0.12) ** 2 + ((yy - 0.5) / 0.2) ** 2 < 1] = 0.9
            offset, nbytes, digest = writer.append((np.clip(image, 0, 1) * 65535).astype(np.uint16))
            row = {"image_id": f"mimic-{i:04d}", "source": "mimic", "shard": 0, f"offset_{res}": offset,
                   f"nbytes_{res}": nbytes, f"sha256_{res}": digest,
                   "split": ["train", "train", "train", "val", "test"][i % 5], "view": "PA",
                   "report_findings": REPORTS[kind] or None, "report_impression": None}
            row.update({column: np.nan for column in LABEL_COLUMNS})
            rows.append(row)
    index = pd.DataFrame(rows)
    index.to_parquet(root / "index.parquet")
    return index


def test_build_from_config_gives_tiny_vit_and_identity_preprocessing():
    seed_everything(0)
    bundle = scratch_clip(tiny_cfg(), RES)
    assert bundle.model_cfg["vision_cfg"]["image_size"] == RES and bundle.context_length == 16
    assert bundle.preprocess_cfg["mean"] == [0.5] * 3  # [-1, 1] store pixels pass through unchanged
    features = encode_images(bundle, torch.rand(3, 1, RES, RES) * 2 - 1)
    assert features.shape == (3, 16)
    assert torch.allclose(features.norm(dim=-1), torch.ones(3))
    assert math.isclose(bundle.model.logit_scale.exp().item(), 1 / 0.07, rel_tol=1e-5)


def test_full_scale_defaults_and_bad_patch_size():
    cfg = validate_config({"sources": {"nih": {}}})["clip"]
    assert cfg["text"]["context_length"] == 77 and cfg["vision"]["patch_size"] == 16 and cfg["embed_dim"] == 512
    with pytest.raises(ClipConfigError, match="clip.vision.patch_size"):
        scratch_clip(tiny_cfg(vision={"patch_size": 7}), RES)


def test_resnet_tower_from_stage_depths():
    seed_everything(0)
    bundle = scratch_clip(tiny_cfg(vision={"layers": [1, 1, 1, 1], "width": 8, "head_width": 8}), RES)
    assert type(bundle.model.visual).__name__ == "ModifiedResNet"
    assert encode_images(bundle, torch.zeros(2, 1, RES, RES)).shape == (2, 16)


def test_clip_loss_is_symmetric_and_logits_transpose():
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    scale = torch.tensor(10.0)
    forward, swapped = contrastive_loss(images, texts, scale), contrastive_loss(texts, images, scale)
    assert torch.allclose(forward, swapped)
    per_image, per_text = ClipLoss().get_logits(images, texts, scale)
    assert torch.allclose(per_text, per_image.T, atol=1e-6)
    ce = torch.nn.functional.cross_entropy
    by_hand = (ce(per_image, torch.arange(6)) + ce(per_image.T, torch.arange(6))) / 2
    assert torch.allclose(forward, by_hand)
    # matched pairs give a lower loss than shuffled ones
    assert contrastive_loss(images, images, scale) < contrastive_loss(images, images.roll(1, 0), scale)


def test_recall_at_k_on_a_hand_made_similarity_matrix():
    similarity = torch.tensor([[0.9, 0.1, 0.0, 0.2],    # right at rank 1
                               [0.8, 0.3, 0.1, 0.0],    # right at rank 2
                               [0.9, 0.8, 0.7, 0.1],    # right at rank 3
                               [0.9, 0.8, 0.7, 0.1]])   # right at rank 4
    recall = recall_at_k(similarity, torch.eye(4, dtype=torch.bool), ks=(1, 2, 3, 4))
    assert recall == {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0}
    chance = chance_recall_at_k(torch.eye(4, dtype=torch.bool), ks=(1, 2, 4))
    assert chance == pytest.approx({1: 0.25, 2: 0.5, 4: 1.0})


def test_identical_reports_count_as_one_candidate():
    images = torch.eye(3)
    texts = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # image 0's text looks like image 1's
    metrics = retrieval_metrics(images, texts, ["a", "a", "b"], ks=(1,))
    assert metrics["unique_texts"] == 2
    # image 0 retrieves text "a" (its own report, shared with image 1): a hit; t2i "a" finds image 1: a hit
    assert metrics["i2t_recall_at_1"] == 1.0 and metrics["t2i_recall_at_1"] == 1.0


def test_save_load_strict_round_trip(tmp_path):
    seed_everything(0)
    bundle = scratch_clip(tiny_cfg(), RES)
    save_clip(bundle, tmp_path / "m")
    loaded = load_clip(tmp_path / "m")
    for (k, v), (k2, v2) in zip(bundle.model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    import open_clip  # plain open_clip reads the same directory

    assert isinstance(open_clip.create_model(f"local-dir:{tmp_path / 'm'}"), open_clip.CLIP)
    weights = load_file(str(tmp_path / "m" / WEIGHTS_FILE))
    weights.pop("text_projection")
    save_file(weights, str(tmp_path / "m" / WEIGHTS_FILE))
    with pytest.raises(RuntimeError, match="text_projection"):
        load_clip(tmp_path / "m")


def test_text_encoder_shapes_mask_determinism_and_pooling(tmp_path):
    seed_everything(0)
    save_clip(scratch_clip(tiny_cfg(), RES), tmp_path / "m")
    encoder = load_text_encoder(tmp_path / "m")
    encoder.train()  # stays in eval mode: frozen
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    assert (encoder.dim, encoder.context_length, encoder.pooled_dim) == (32, 16, 16)
    texts = ["Large right pleural effusion.", "", "word " * 40]
    tokens, mask = encoder.encode(texts)
    assert tokens.shape == (3, 16, 32) and tokens.dtype == torch.float32 and mask.dtype == torch.bool
    import open_clip

    words = len(open_clip.SimpleTokenizer().encode(texts[0]))  # BPE pieces of the first report
    # start + pieces + end; the empty report is start + end; a long report is truncated to 16
    assert mask.sum(dim=1).tolist() == [words + 2, 2, 16]
    assert mask[0, : words + 2].all() and not mask[0, words + 2 :].any()
    again, _ = load_text_encoder(tmp_path / "m").encode(texts)
    assert torch.equal(tokens, again)
    # causal tower: a token's embedding does not depend on the text after it (batch 3 vs batch 1: equal up to the
    # CPU kernels' batch-shape rounding, not bit for bit)
    other, _ = encoder.encode(["Large right lung mass."])
    assert torch.allclose(tokens[0, :3], other[0, :3], atol=1e-5)
    assert not torch.allclose(tokens[0, 3], other[0, 3], atol=1e-3)
    pooled = encoder.encode_pooled(texts)
    assert pooled.shape == (3, 16) and torch.allclose(pooled.norm(dim=-1), torch.ones(3))


def test_image_encoder_embeddings_features_and_input_gradients(tmp_path):
    seed_everything(0)
    save_clip(scratch_clip(tiny_cfg(), RES), tmp_path / "m")
    encoder = load_image_encoder(tmp_path / "m")
    x = (torch.rand(2, 1, 64, 64) * 2 - 1).requires_grad_(True)  # resized to the tower's 32 px
    embedding = encoder(x)
    assert embedding.shape == (2, 16) and encoder.image_size == RES
    maps = encoder.features(x)
    assert maps[0].shape == (2, 32, 4, 4) and torch.allclose(maps[-1], embedding)
    maps[0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_missing_pretrained_path_names_the_key(tmp_path):
    with pytest.raises(ClipConfigError, match="clip.pretrained_path"):
        pretrained_clip(tiny_cfg(pretrained_path=str(tmp_path / "BiomedCLIP")))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ClipConfigError, match="clip.pretrained_arch"):
        pretrained_clip(tiny_cfg(pretrained_path=str(tmp_path / "weights.bin")))


def test_offline_hub_tag_says_which_key_to_set(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as with HF_HUB_OFFLINE=1
    with pytest.raises(ClipConfigError, match="clip.pretrained_path"):
        pretrained_clip(tiny_cfg(pretrained_arch="RN50", pretrained_tag="openai"))


def test_pretrained_local_dir_is_loaded_and_fine_tuned(tmp_path):
    seed_everything(0)
    source = scratch_clip(tiny_cfg(), RES)
    save_clip(source, tmp_path / "biomedclip")
    loaded = pretrained_clip(tiny_cfg(pretrained_path=str(tmp_path / "biomedclip")))
    assert torch.equal(loaded.model.text_projection, source.model.text_projection)


def _train(tmp_path, name, tracking, **kw):
    return train_clip(index_path=tmp_path / "index.parquet", store_root=tmp_path, resolution=RES,
                      cfg=tiny_cfg(**kw.pop("cfg", {})), seed=5, state_dir=tmp_path / f"state_{name}",
                      out_dir=tmp_path / f"out_{name}", tracking_json=tracking, job_name=f"train_clip:{name}", **kw)


def test_stage_kill_resume_equality_outputs_and_tracking(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tiny_store(tmp_path)
    tracking = tmp_path / "run.json"
    init_tracking(tracking, "test", tmp_path)
    straight = _train(tmp_path, "a", None)
    assert straight["n_train_pairs"] == 9  # 12 train rows, every 4th without a report
    assert np.isfinite(straight["final_train_loss"]) and straight["steps"] == 3
    assert straight["retrieval"]["val/pairs"] == 3 and "test/t2i_recall_at_10" in straight["retrieval"]
    out = tmp_path / "out_a"
    assert {p.name for p in out.iterdir()} == {"open_clip_config.json", WEIGHTS_FILE, "metrics.json",
                                              "loss_curve.png", "MODEL_CARD.md", "model_card.json"}
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3

    with pytest.raises(Interrupted):
        _train(tmp_path, "b", tracking, stop_after_steps=3 - 1)  # killed after step 2 (checkpoint at 2)
    assert latest_checkpoint(tmp_path / "state_b").name == "ckpt-00000002.pt"
    assert not (tmp_path / "out_b").exists()
    resumed = _train(tmp_path, "b", tracking)
    assert resumed["resumed_from"] == 2
    a, b = load_clip(out), load_clip(tmp_path / "out_b")
    for (k, v), (_, w) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(v, w), k

    from mlflow.tracking import MlflowClient

    info = json.loads(tracking.read_text())
    client = MlflowClient(info["tracking_uri"])
    run = client.get_run(resumed["mlflow_run_id"])  # the resumed job continued the killed job's run
    assert run.info.status == "FINISHED" and run.data.tags["snakemake.rule"] == "train_clip"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted({m.step for m in losses}) == [1, 2, 3]
    assert "val/i2t_recall_at_5" in run.data.metrics


def test_label_template_texts_add_report_less_train_pairs_but_not_eval_pairs(tmp_path):
    index = tiny_store(tmp_path)
    unreported = index["report_findings"].isna()
    index.loc[unreported, "lbl_cardiomegaly"] = 1.0  # report-less rows get a label → a template report
    index.to_parquet(tmp_path / "index.parquet")
    with_templates = _train(tmp_path, "t", None, cfg={"unreported_text": "label_template", "max_steps": 1})
    assert with_templates["n_train_pairs"] == 12 and with_templates["n_train_report_pairs"] == 9
    assert with_templates["retrieval"]["val/pairs"] == 3  # evaluation keeps real reports only
    without = _train(tmp_path, "e", None, cfg={"max_steps": 1})
    assert without["n_train_pairs"] == 9


def test_unreported_text_is_validated():
    with pytest.raises(Exception, match="unreported_text"):
        tiny_cfg(unreported_text="labels")


def test_zero_shot_auroc_ranks_by_prompt_direction_and_skips_thin_findings():
    from cxrgen.models.clip import zero_shot_label_auroc

    image_features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.0, 1.0], [0.2, 0.8]])
    prompts = {"Cardiomegaly": torch.tensor([[1.0, 0.0], [0.9, 0.0]]), "Edema": torch.tensor([[0.0, 1.0]]),
               "Fracture": torch.tensor([[1.0, 1.0]])}
    labels = {"Cardiomegaly": np.array([1, 1, 1, 0, 0, 0.0]), "Edema": np.array([1, 1, 1, 0, 0, np.nan]),
              "Fracture": np.array([1, 0, 0, 0, 0, 0.0])}
    out = zero_shot_label_auroc(image_features, prompts, labels, min_per_class=2)
    assert out["Cardiomegaly"] == 1.0 and out["Edema"] == 0.0  # edema's prompt points at the negatives
    assert "Fracture" not in out and out["macro"] == 0.5


def test_eval_images_are_encoded_once_per_evaluation_and_match_fresh_encoding(tmp_path, monkeypatch):
    import cxrgen.stages.train_clip as stage
    from cxrgen.train.data import StoreImages, select_rows

    index = tiny_store(tmp_path)
    cfg = tiny_cfg()
    bundle = scratch_clip(cfg, RES)
    all_val = StoreImages(tmp_path, select_rows(index, splits=["val"]), RES)
    reported_val = StoreImages(tmp_path, select_rows(index, splits=["val"], require_report=True), RES)
    encoded = []
    real_encode = stage.encode_images
    monkeypatch.setattr(stage, "encode_images", lambda b, images: encoded.append(len(images)) or real_encode(b, images))
    cache: dict = {}
    stage._retrieval(bundle, reported_val, cfg, cache)
    stage._zero_shot(bundle, all_val, cfg, cache)
    assert sum(encoded) == len(all_val) == 4 and len(reported_val) == 3  # the 3 reported images are not re-encoded
    fresh = stage._image_features(bundle, all_val, batch_size=1, cache={})
    assert torch.allclose(fresh, stage._image_features(bundle, all_val, cfg["batch_size"], cache), atol=1e-6)
