import numpy as np
import pandas as pd
import pytest
import torch
from test_ldm import TINY_UNET, ldm_cfg, make_autoencoder, make_clip, shared_tracking_json

from cxrgen.cli import main
from cxrgen.config import validate_config
from cxrgen.hashing import dir_digest
from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS, label_column
from cxrgen.models.diffusion import build_unet, make_train_scheduler
from cxrgen.pipeline import write_pipeline_json
from cxrgen.prompts import TEMPLATES, label_template_report, side_free_variants, template_variants
from cxrgen.stages.build_prompts import build_prompt_sets, build_prompts
from cxrgen.stages.generate import generate
from cxrgen.store import ShardStore


def gen_cfg(**overrides) -> dict:
    cfg = validate_config({"sources": {"nih": {}}, "generate": {
        "n_per_finding": 2, "steps": 2, "sr_steps": 2, "batch_size": 3, "grid_columns": 2}})["generate"]
    cfg.update(overrides)
    return cfg


def unified_index() -> pd.DataFrame:
    rows = []
    reports = ["Large left pleural effusion.", "Large left pleural effusion.", "Cardiomegaly.", "", "Normal chest."]
    for i, text in enumerate(reports):
        row = {"image_id": f"i{i}", "split": "test", "view": "PA", "report_findings": text, "report_impression": None}
        row.update({c: float(j == i) for j, c in enumerate(LABEL_COLUMNS)})
        rows.append(row)
    rows.append({**rows[2], "image_id": "i9", "split": "train", "report_findings": "Pneumothorax."})
    return pd.DataFrame(rows)


def test_prompt_sets_are_class_balanced_with_laterality_and_stable_seeds():
    prompts = build_prompt_sets(unified_index(), gen_cfg(n_per_finding=6))
    reports = prompts[prompts["set"] == "test_reports"]
    # one prompt per distinct non-empty report of the test split
    assert sorted(reports["prompt"]) == ["Cardiomegaly.", "Large left pleural effusion.", "Normal chest."]
    assert reports.set_index("prompt").loc["Cardiomegaly.", "lbl_cardiomegaly"] == 1.0
    templates = prompts[prompts["set"] == "class_balanced"]
    positives = templates[list(LABEL_COLUMNS)].eq(1.0).sum()
    assert (positives == 6).all()  # every finding (incl. No Finding) exactly n_per_finding times
    effusion = templates[templates["lbl_pleural_effusion"] == 1.0]
    assert set(effusion["laterality"]) == {"right", "left", "bilateral"}
    assert all(side in text.lower() for side, text in zip(effusion["laterality"], effusion["prompt"], strict=True))
    normal = templates[templates["lbl_no_finding"] == 1.0]
    assert (normal[[c for c in LABEL_COLUMNS if c != "lbl_no_finding"]] == 0.0).all().all()
    assert (templates.loc[templates["lbl_no_finding"] != 1.0, "lbl_no_finding"] == 0.0).all()
    assert prompts["prompt_id"].is_unique and prompts["seed"].between(0, 2**31 - 1).all()
    only_templates = build_prompt_sets(unified_index(), gen_cfg(n_per_finding=6, sets=["class_balanced"]))
    assert only_templates.set_index("prompt_id")["seed"].equals(templates.set_index("prompt_id")["seed"])


def test_every_finding_has_templates():
    assert set(TEMPLATES) == set(CHEXPERT_LABELS)
    for finding in CHEXPERT_LABELS:
        variants = template_variants(finding)
        assert len(variants) >= 3 and all(text and "{" not in text for text, _ in variants)
    assert len(template_variants("Pneumothorax")) == 9  # 3 templates x right/left/bilateral


@pytest.fixture(scope="module")
def pipeline_dirs(tmp_path_factory):
    """Tiny untrained pipelines saved as the stages save them: AE (32 px, 8x8 latents), SR (32 -> 64), an
    unconditional LDM (ldm/, with SR) and a text-conditioned one (ldm_text/, tiny open_clip text tower, no SR)."""
    from cxrgen.models.sr import build_sr, save_sr

    root = tmp_path_factory.mktemp("pipe")
    ae_dir = make_autoencoder(root / "ae")
    torch.manual_seed(0)
    sr_cfg = validate_config({"sources": {"nih": {}}, "sr": {"model": {
        "block_out_channels": [8, 16], "layers_per_block": 1, "attention_levels": [False, False],
        "mid_attention": False, "norm_num_groups": 8}}})["sr"]
    save_sr(build_sr(sr_cfg, low_res=32, high_res=64), root / "sr")
    ldm = root / "ldm"
    build_unet(TINY_UNET, latent_channels=3, sample_size=8, cross_attention_dim=None).save_pretrained(ldm / "unet")
    make_train_scheduler(ldm_cfg()["schedule"]).save_pretrained(ldm / "scheduler")
    write_pipeline_json(ldm, final_dir=ldm, conditioning="none", ae_dir=ae_dir, clip_dir=None, sr_dir=root / "sr")
    clip_dir = make_clip(root / "clip")
    t2i = root / "ldm_text"
    build_unet(TINY_UNET, latent_channels=3, sample_size=8, cross_attention_dim=32).save_pretrained(t2i / "unet")
    make_train_scheduler(ldm_cfg()["schedule"]).save_pretrained(t2i / "scheduler")
    write_pipeline_json(t2i, final_dir=t2i, conditioning="text", ae_dir=ae_dir, clip_dir=clip_dir, sr_dir=None)
    return root


def test_generate_writes_a_store_with_provenance(pipeline_dirs, tmp_path, tmp_path_factory):
    index_path = tmp_path / "index.parquet"
    unified_index().to_parquet(index_path)
    cfg = gen_cfg(findings=["No Finding", "Pleural Effusion"])
    counts = build_prompts(index_path=index_path, cfg=cfg, out_path=tmp_path / "prompts.parquet")
    assert counts == {"test_reports": 3, "class_balanced": 4, "train_twins": 1}
    root = pipeline_dirs
    metrics = generate(ldm_dir=root / "ldm", ae_dir=None, clip_dir=None, sr_dir=root / "sr",
                       prompts_path=tmp_path / "prompts.parquet", cfg=cfg, out_root=tmp_path / "synthetic",
                       tracking_json=shared_tracking_json(tmp_path_factory), job_name="generate")
    assert metrics["n_images"] == 8 and metrics["resolutions"] == [32, 64]
    index = pd.read_parquet(tmp_path / "synthetic" / "index.parquet")
    expected = {"image_id", "prompt_id", "set", "prompt", "seed", "split", "source", "shard", "ldm_sha", "ae_sha",
                "sr_sha", "ldm_run_id", "offset_32", "nbytes_64", "sha256_64", *LABEL_COLUMNS}
    assert expected <= set(index.columns)
    assert (index["split"] == "synthetic").all() and index["image_id"].is_unique
    assert index["ldm_sha"].nunique() == 1 and index.at[0, "sr_sha"] == dir_digest(root / "sr")
    assert (index.loc[index["set"] == "class_balanced", label_column("Pleural Effusion")] == 1.0).sum() == 2
    prompts = pd.read_parquet(tmp_path / "prompts.parquet").set_index("prompt_id")
    for column in ("prompt", "seed", *LABEL_COLUMNS):  # the prompt's labels travel with the image
        assert index.set_index("prompt_id")[column].equals(prompts[column]), column
    store = ShardStore(tmp_path / "synthetic", index, verify=True)
    assert store.read(0, 32).shape == (32, 32) and store.read(6, 64).shape == (64, 64)
    assert (tmp_path / "synthetic" / "grid.png").is_file() and not (tmp_path / "synthetic.tmp").exists()

    # a different batch size gives the same images (per-sample generators), up to float rounding
    again = generate(ldm_dir=root / "ldm", ae_dir=None, clip_dir=None, sr_dir=None,
                     prompts_path=tmp_path / "prompts.parquet", cfg=gen_cfg(findings=["No Finding", "Pleural Effusion"],
                                                                          batch_size=7),
                     out_root=tmp_path / "again", tracking_json=None)
    assert again["resolutions"] == [32]
    other = ShardStore(tmp_path / "again", pd.read_parquet(tmp_path / "again" / "index.parquet"))
    for i in range(7):
        a, b = store.read(i, 32).astype(np.int64), other.read(i, 32).astype(np.int64)
        assert np.abs(a - b).max() <= 64  # ≤0.1% of the 16-bit range


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "generate" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "--guidance" in capsys.readouterr().out


def test_cli_generate_grid(pipeline_dirs, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["generate", "--model", str(pipeline_dirs / "ldm"), "-n", "2", "--seed", "0", "--steps", "2",
                 "--sr-steps", "2", "--out", str(out), "--save-images", str(tmp_path / "png")]) == 0
    assert out.is_file() and "64 px" in capsys.readouterr().out
    from PIL import Image

    files = sorted((tmp_path / "png").iterdir())
    assert [f.name for f in files] == ["prompt00_seed0.png", "prompt00_seed1.png"]
    with Image.open(files[0]) as img:
        assert img.size == (64, 64) and img.mode.startswith("I;16")


def test_cli_generate_with_prompts(pipeline_dirs, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["generate", "--model", str(pipeline_dirs / "ldm_text"), "--prompt", "Large right pleural effusion.",
                 "--prompt", "No acute findings.", "-n", "2", "--steps", "2", "--guidance", "4",
                 "--out", str(out)]) == 0
    assert out.is_file() and "2 prompt(s) x 2 samples, 32 px" in capsys.readouterr().out


def test_train_twins_use_train_reports_or_label_reports_and_never_test_rows():
    index = unified_index()
    index.loc[[0, 2, 3], "split"] = "train"  # i0 has a report; i3 has none (label 3 = Lung Opacity)
    prompts = build_prompt_sets(index, gen_cfg(sets=["train_twins"]))
    twins = prompts.set_index("source_image_id")
    assert set(twins.index) == {"i0", "i2", "i3", "i9"}
    assert twins.at["i0", "prompt"] == "Large left pleural effusion."
    assert twins.at["i3", "prompt"] == label_template_report(index.iloc[3].to_dict(), "i3")
    assert "opacity" in twins.at["i3", "prompt"].lower() and "left" not in twins.at["i3", "prompt"]
    assert twins.at["i3", label_column("Lung Opacity")] == 1.0
    capped = build_prompt_sets(index, gen_cfg(sets=["train_twins"], train_twins={"splits": ["train"], "n": 2}))
    assert len(capped) == 2 and capped.equals(build_prompt_sets(index, gen_cfg(sets=["train_twins"],
                                                                               train_twins={"splits": ["train"], "n": 2})))


def test_label_template_report_states_only_positive_labels():
    labels = {label_column("Cardiomegaly"): 1.0, label_column("Pleural Effusion"): 0.0,
              label_column("Pneumothorax"): float("nan"), label_column("No Finding"): 0.0}
    text = label_template_report(labels, "x")
    assert text in side_free_variants("Cardiomegaly")
    assert label_template_report(labels, "x") == text  # deterministic per key
    both = label_template_report({**labels, label_column("Pneumothorax"): 1.0}, "x")
    assert both.startswith(text) and "pneumothorax" in both.lower()
    assert label_template_report({label_column("No Finding"): 1.0}, "y") in side_free_variants("No Finding")
    assert label_template_report({label_column("Edema"): -1.0}, "z") == ""  # uncertain is not stated


def patient_index(n: int = 30) -> pd.DataFrame:
    """Images of 10 patients: every 3rd train image lateral, every 5th in val/test, every 7th without a patient id,
    every 4th without a report (a label-derived prompt)."""
    rows = []
    for i in range(n):
        row = {"image_id": f"img{i:02d}", "patient_pid": None if i % 7 == 3 else f"pid{i % 10}",
               "split": ("val" if i % 2 else "test") if i % 5 == 4 else "train",
               "view": "LATERAL" if i % 3 == 2 else ("AP" if i % 2 else "PA"),
               "report_findings": "" if i % 4 == 1 else f"Report {i}.", "report_impression": None}
        row.update({c: float(j == i % 14) for j, c in enumerate(LABEL_COLUMNS)})
        rows.append(row)
    return pd.DataFrame(rows)


def test_reid_probe_has_k_distinct_seeds_per_sampled_frontal_train_image_of_a_patient():
    index = patient_index()
    eligible = index[(index["split"] == "train") & index["view"].isin(["PA", "AP"]) & index["patient_pid"].notna()]
    cfg = gen_cfg(sets=["train_twins", "reid_probe"], train_twins={"splits": ["train"], "n": 4},
                  reid_probe={"n": 5, "seeds": 3})
    prompts = build_prompt_sets(index, cfg)
    probe = prompts[prompts["set"] == "reid_probe"]
    assert len(probe) == 15 and probe["prompt_id"].nunique() == 5
    assert (probe.groupby("prompt_id")["seed"].nunique() == 3).all()  # K rows, K distinct seeds per prompt
    assert (probe["prompt_id"] == "probe-" + probe["source_image_id"]).all()
    assert set(probe["source_image_id"]) <= set(eligible["image_id"])
    image_ids = "syn-" + prompts["prompt_id"] + "-s" + prompts["seed"].astype(str)  # as rule generate names them
    assert image_ids.is_unique
    by_id = index.set_index("image_id")
    for _, row in probe.iterrows():  # the image's report (or its label-derived report) and its labels
        source = by_id.loc[row["source_image_id"]]
        expected = source["report_findings"] or label_template_report(source.to_dict(), row["source_image_id"])
        assert row["prompt"] == expected and row[LABEL_COLUMNS[int(row["source_image_id"][3:]) % 14]] == 1.0
    assert prompts.equals(build_prompt_sets(index, cfg))  # deterministic
    # its own random stream: another twin sample leaves the probe (prompts and seeds) unchanged
    other = build_prompt_sets(index, gen_cfg(sets=["train_twins", "reid_probe"], train_twins={"splits": ["train"],
                                                                                              "n": 2},
                                            reid_probe={"n": 5, "seeds": 3}))
    assert other[other["set"] == "reid_probe"].reset_index(drop=True).equals(probe.reset_index(drop=True))
    everything = build_prompt_sets(index, gen_cfg(sets=["reid_probe"], reid_probe={"n": 1000, "seeds": 2}))
    assert set(everything["source_image_id"]) == set(eligible["image_id"]) and len(everything) == 2 * len(eligible)


def test_generate_samples_the_probe_set_without_sr_and_the_store_stays_readable(pipeline_dirs, tmp_path):
    from cxrgen.evaluate.classifier import LabelledImages, with_store_root
    from cxrgen.stages.draw_sample_sheet import draw_sample_sheet

    index_path = tmp_path / "index.parquet"
    patient_index().to_parquet(index_path)
    cfg = gen_cfg(sets=["class_balanced", "reid_probe"], findings=["No Finding"], reid_probe={"n": 2, "seeds": 2})
    build_prompts(index_path=index_path, cfg=cfg, out_path=tmp_path / "prompts.parquet")
    metrics = generate(ldm_dir=pipeline_dirs / "ldm", ae_dir=None, clip_dir=None, sr_dir=pipeline_dirs / "sr",
                       prompts_path=tmp_path / "prompts.parquet", cfg=cfg, out_root=tmp_path / "syn",
                       tracking_json=None)
    assert metrics["sets"] == {"class_balanced": 2, "reid_probe": 4} and metrics["resolutions"] == [32, 64]
    assert metrics["sr_skipped_sets"] == ["reid_probe"] and set(metrics["seconds_by_set"]) == set(metrics["sets"])
    index = pd.read_parquet(tmp_path / "syn" / "index.parquet")
    probe = (index["set"] == "reid_probe").to_numpy()
    assert index["image_id"].is_unique and index.loc[probe, "prompt_id"].nunique() == 2
    assert index.loc[probe, "offset_64"].isna().all() and index.loc[~probe, "offset_64"].notna().all()
    assert index["offset_32"].notna().all()
    store = ShardStore(tmp_path / "syn", index, verify=True)
    for position in range(len(index)):
        assert store.read(position, 32).shape == (32, 32)
        if probe[position]:
            with pytest.raises(KeyError, match="no 64px blob"):
                store.read(position, 64)
        else:
            assert store.read(position, 64).shape == (64, 64)
    # readers of the whole store fall back to the resolution every row has; without the probe rows, x_HR again
    whole = LabelledImages(with_store_root(index, tmp_path / "syn"), 64)
    assert whole.image(int(np.flatnonzero(probe)[0])).shape == (1, 64, 64)
    assert whole._stores[0][1] == 32
    assert LabelledImages(with_store_root(index[~probe], tmp_path / "syn"), 64)._stores[0][1] == 64
    sheet = draw_sample_sheet(stores={"cheff": tmp_path / "syn"}, columns=4, out_png=tmp_path / "sheet.png",
                              out_json=tmp_path / "sheet.json")
    shown = {row["image_id"] for row in sheet["rows"]["cheff"]}
    assert sheet["resolution"] == 64 and shown and shown <= set(index.loc[~probe, "image_id"])
