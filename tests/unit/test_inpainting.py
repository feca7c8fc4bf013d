"""In/outpainting with a saved LDM (cxrgen.models.inpainting, rule inpaint_images, `cxrgen inpaint`): the latent mask
covers every masked pixel, the known latents are the original's, results are deterministic per seed, RePaint jumps
add the expected denoiser calls, mask specs fail naming their key."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_autoencoder import tiny_store
from test_ldm import TINY_UNET, ldm_cfg, make_autoencoder, make_clip

from cxrgen.cli import main
from cxrgen.config import ConfigError, validate_config
from cxrgen.evaluate.classifier import save_evaluator, tiny_evaluator
from cxrgen.labels import LABEL_COLUMNS
from cxrgen.models import inpainting
from cxrgen.models.diffusion import build_unet, make_train_scheduler
from cxrgen.models.inpainting import InpaintSettings, encode_images, inpaint, inpaint_latents, latent_mask
from cxrgen.pipeline import CxrPipeline, write_pipeline_json
from cxrgen.stages.inpaint_images import inpaint_images, select_image

FAST = InpaintSettings(steps=4, jump_length=2, jump_n_sample=2, guidance_scale=3.0)


@pytest.fixture(scope="module")
def ldm_dir(tmp_path_factory):
    """A tiny text-conditioned LDM (random UNet, 32 px autoencoder with 8x8 latents) saved as train_ldm saves it."""
    root = tmp_path_factory.mktemp("inpaint")
    ae_dir = make_autoencoder(root / "ae")
    clip_dir = make_clip(root / "clip")
    ldm = root / "ldm"
    torch.manual_seed(0)
    build_unet(TINY_UNET, latent_channels=3, sample_size=8, cross_attention_dim=32).save_pretrained(ldm / "unet")
    make_train_scheduler(ldm_cfg()["schedule"]).save_pretrained(ldm / "scheduler")
    write_pipeline_json(ldm, final_dir=ldm, conditioning="text", ae_dir=ae_dir, clip_dir=clip_dir, sr_dir=None)
    return ldm


def test_latent_mask_covers_every_masked_pixel():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = torch.from_numpy(rng.random((32, 32)) < 0.02)
        for dilation in (0, 1):
            cells = latent_mask(mask, 4, dilation)
            assert cells.shape == (8, 8)
            covered = cells.repeat_interleave(4, 0).repeat_interleave(4, 1)
            assert not (mask & ~covered).any()  # no masked pixel lies in a known cell
    one = torch.zeros(32, 32, dtype=torch.bool)
    one[13, 21] = True  # cell (3, 5)
    assert latent_mask(one, 4, 0).nonzero().tolist() == [[3, 5]]
    assert latent_mask(one, 4, 1).sum() == 9 and latent_mask(one, 4, 1)[2:5, 4:7].all()
    with pytest.raises(ValueError, match="multiple of the autoencoder factor 4"):
        latent_mask(torch.zeros(30, 32, dtype=torch.bool), 4)


def test_mask_specs_as_fractions_and_their_errors_name_the_key():
    rect = inpainting.parse_mask_spec({"rect": [0.25, 0.0, 0.5, 0.5]}).pixels(8, 8)
    assert rect.sum() == 2 * 4 and rect[0:4, 2:4].all()
    assert inpainting.parse_mask_spec({"rect": [0.3, 0.3, 0.4, 0.4]}).pixels(10, 10).sum() == 1
    border = inpainting.parse_mask_spec({"border": 0.25}).pixels(8, 8)
    assert border.sum() == 64 - 16 and not border[2:6, 2:6].any()
    assert inpainting.parse_mask_spec({"border": [0.25, 0, 0, 0]}).pixels(8, 8).sum() == 16  # top only
    for spec, message in [({"circle": [0, 0, 1, 1]}, r"edits\[1\].mask: expected exactly one of \['rect', 'border'\]"),
                          ({"rect": [0, 0, 1]}, r"edits\[1\].mask.rect: expected 4 numbers"),
                          ({"rect": [0.5, 0, 0.2, 1]}, r"edits\[1\].mask.rect: need x0 < x1"),
                          ({"rect": [0, 0, 1.5, 1]}, r"edits\[1\].mask.rect: fractions must lie in \[0, 1\]"),
                          ({"border": 0.5}, r"edits\[1\].mask.border: widths must")]:
        with pytest.raises(ValueError, match=message):
            inpainting.parse_mask_spec(spec, "inpainting.edits[1].mask")
    with pytest.raises(ConfigError, match="inpainting.edits.0"):
        validate_config({"sources": {"nih": {}}, "inpainting": {"edits": [{"mask": {"border": 0.1}}]}})


def test_jumps_add_the_expected_model_calls():
    assert inpainting.repaint_schedule(4, 2, 1) == [4, 3, 2, 1, 0]
    # jump points at levels 1 and 3 (< 6 - 2 + 1), each re-noised 2 levels once
    assert inpainting.repaint_schedule(6, 2, 2) == [6, 5, 4, 3, 4, 5, 4, 3, 2, 1, 2, 3, 2, 1, 0]
    assert inpainting.model_calls(6, 2, 2) == 6 + 2 * 2
    assert inpainting.model_calls(20, 5, 2) == 20 + 3 * 5 and inpainting.model_calls(100, 10, 10) == 100 + 9 * 9 * 10
    walk = inpainting.repaint_schedule(50, 10, 10)
    assert walk[0] == 50 and walk[-1] == 0 and all(abs(a - b) == 1 for a, b in zip(walk, walk[1:], strict=False))


def test_known_latents_are_the_originals_and_results_are_deterministic(ldm_dir):
    pipe = CxrPipeline.from_dir(ldm_dir, use_sr=False)
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    masks = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    masks[:, :, 8:20, 4:16] = True
    unknown = latent_mask(masks, 4, 1)
    known = encode_images(pipe.autoencoder, images)
    calls = []
    for settings in (FAST, InpaintSettings(steps=4, jump_n_sample=1, guidance_scale=3.0)):
        latents, n = inpaint_latents(pipe.sampler, known, unknown, ["No support devices.", ""], [0, 1], settings)
        calls.append(n)
        keep = ~unknown.expand_as(latents)
        assert torch.equal(latents[keep], known[keep])  # the known region is the original's encoding
        assert (latents[~keep] - known[~keep]).abs().mean() > 0.1  # the masked region is generated
    assert calls == [inpainting.model_calls(4, 2, 2), 4] == [6, 4]

    first = inpaint(pipe.autoencoder, pipe.sampler, images, masks, ["No support devices.", ""], [0, 1], FAST)
    again = inpaint(pipe.autoencoder, pipe.sampler, images[1:], masks[1:], [""], [1], FAST)  # alone in its batch
    assert torch.allclose(first["images"][1:], again["images"], atol=1e-5)
    assert (first["regenerated"] | ~masks).all() and first["regenerated"].shape == masks.shape
    other_seed = inpaint(pipe.autoencoder, pipe.sampler, images[1:], masks[1:], [""], [2], FAST)
    assert not torch.allclose(other_seed["images"], again["images"], atol=1e-3)
    # the decoder mixes neighbouring cells, but pixels far from the mask stay at the autoencoder round trip
    far = torch.ones(32, 32, dtype=torch.bool)
    far[:28, :24] = False  # mask rows 8-20, cols 4-16 plus a dilation cell and a decoder margin
    near = ~far & masks[0, 0]
    diff = (first["images"][0, 0] - first["reconstructions"][0, 0]).abs()
    assert diff[far].mean() < 0.5 * diff[near].mean()
    pasted = inpaint(pipe.autoencoder, pipe.sampler, images, masks, ["", ""], [0, 1],
                     InpaintSettings(**{**FAST.__dict__, "paste_known": True}))
    assert torch.equal(pasted["images"][~masks], images[~masks])
    assert inpainting.outside_mask_fidelity(images[0], pasted["images"][0], masks[0])["max_abs_outside"] == 0.0


def test_select_image_by_finding():
    index = pd.DataFrame({"image_id": ["c", "a", "b", "d"], "split": ["test", "test", "train", "test"],
                          "view": ["PA", "AP", "PA", "LATERAL"]})
    for column in LABEL_COLUMNS:
        index[column] = np.nan
    index["lbl_support_devices"] = [1.0, 1.0, 1.0, 1.0]
    edit = {"name": "x", "select": {"finding": "Support Devices"}, "mask": {"border": 0.1}}
    assert select_image(index, edit, "e") == "a"
    assert select_image(index, {**edit, "select": {"finding": "Support Devices", "nth": 1}}, "e") == "c"
    index.loc[1, "lbl_support_devices"] = 0.0
    assert select_image(index, edit, "e") == "c"
    assert select_image(index, {**edit, "select": {"finding": "Support Devices", "value": 0}}, "e") == "a"
    assert select_image(index, {**edit, "select": {"split": "train", "views": []}}, "e") == "b"
    with pytest.raises(ValueError, match=r"e.select: 1 images match .* no nth=2"):
        select_image(index, {**edit, "select": {"finding": "Support Devices", "nth": 2}}, "e")
    with pytest.raises(ValueError, match="e.image_id: 'zz' is not in the store index"):
        select_image(index, {**edit, "image_id": "zz"}, "e")


def test_rule_writes_figure_metrics_and_markdown(ldm_dir, tmp_path):
    tiny_store(tmp_path / "store", n=10, res=32)
    evaluator = save_evaluator(tiny_evaluator(32), tmp_path / "evaluator")
    cfg = validate_config({"sources": {"nih": {}}, "inpainting": {
        "steps": 3, "jump_length": 1, "jump_n_sample": 2, "edits": [
            {"name": "device_removal", "image_id": "nih-0004", "mask": {"rect": [0.3, 0.1, 0.7, 0.5]},
             "prompt": "No support devices.", "finding": "Support Devices", "seeds": 2},
            {"name": "outpainting", "image_id": "nih-0009", "mask": {"border": 0.25}}]}})["inpainting"]
    payload = inpaint_images(index_path=tmp_path / "store" / "index.parquet", ldm_dir=ldm_dir, cfg=cfg, seed=7,
                             evaluator_dir=evaluator, out_png=tmp_path / "out" / "inpainting.png",
                             out_json=tmp_path / "out" / "metrics.json", out_md=tmp_path / "out" / "inpainting.md")
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == json.loads(json.dumps(payload))
    assert [(s["name"], s["seed"]) for s in payload["samples"]] == [("device_removal", 7), ("device_removal", 8),
                                                                   ("outpainting", 7)]
    assert payload["model_calls_per_sample"] == inpainting.model_calls(3, 1, 2) == 5
    first = payload["samples"][0]
    assert all(0 <= first[f"p_{when}"] <= 1 for when in ("before", "autoencoder", "after"))
    assert "p_before" not in payload["samples"][2]  # no finding named
    assert first["psnr_kept_cells_vs_autoencoder"] > first["psnr_outside"] > 0
    assert first["masked_fraction"] == pytest.approx(14 * 13 / 1024)  # columns 9-22, rows 3-15 (rounded outwards)
    assert payload["samples"][2]["masked_fraction"] == pytest.approx(1 - 16 * 16 / 1024)
    assert Image.open(tmp_path / "out" / "inpainting.png").size[1] > 200
    text = (tmp_path / "out" / "inpainting.md").read_text()
    assert "](inpainting.png)" in text and "| device_removal | 8 |" in text


def test_cli_inpaint(ldm_dir, tmp_path, capsys):
    Image.fromarray((np.random.default_rng(0).random((48, 48)) * 65535).astype(np.uint16)).save(tmp_path / "cxr.png")
    mask = np.zeros((48, 48), np.uint8)
    mask[10:30, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "edited.png"
    args = ["inpaint", "--model", str(ldm_dir), "--image", str(tmp_path / "cxr.png"), "--mask",
            str(tmp_path / "mask.png"), "--prompt", "No support devices.", "--steps", "2", "--out", str(out)]
    assert main(args) == 0
    assert "32 px" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.size == (32, 32) and img.mode.startswith("I;16")
    Image.fromarray(np.zeros((48, 40), np.uint8)).save(tmp_path / "bad_mask.png")
    with pytest.raises(SystemExit, match="mask .* does not match the image"):
        main([*args[:5], "--mask", str(tmp_path / "bad_mask.png"), *args[7:]])
