"""Expected GPU-hours of every GPU job of a plan, from the config alone (no data, no credentials, no GPU).

Method (the ASSUMPTIONS, stated once here and printed with every table):

* Work = floating-point operations. The forward cost of each heavy model (the LDM / SR UNets, the autoencoder, the
  DenseNet evaluator) is *counted*, not guessed: the model is built from the config on PyTorch's ``meta`` device and
  one forward pass of one item is run under ``torch.utils.flop_counter.FlopCounterMode`` (no memory, no compute).
  Transformer towers and the small MLP/GRU models use the analytic 2 x parameters x tokens.
* A training step costs 3 forward passes per item (forward + backward ~ 2 x forward), frozen parts 1; classifier-free
  guidance doubles each sampling step.
* Throughput: ``ASSUMED_TFLOPS`` = **60 TFLOP/s sustained per GPU**, i.e. ~40 % of an A100's dense TF32 / ~20 % of
  its bf16 peak (Cheff trained on 8 A100 40 GB, §7.3; MedCoDi-M on 4 A100, §3.3). Data loading, validation,
  checkpointing and multi-GPU scaling losses are not counted: read the figures as lower bounds within ~2x.
* Item counts that depend on data (prompts, real sets, cohorts) come from ``DATA_SIZES``, each with its source.
* Papers' reported budgets are shown next to the estimate where they exist (``REPORTED``); only MedCoDi-M reports one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache

ASSUMED_TFLOPS = 60.0  # sustained FLOP/s per GPU, in 1e12 (see the module docstring)
TRAIN_PASSES = 3.0      # forward + backward of a trained model, in forward passes
N_FINDINGS = 14         # CheXpert observations (template prompts, DKIM knowledge)

# Data sizes used where a job's item count depends on the data (the plan reads none).
DATA_SIZES = {
    "machex_train_images": 651_471,   # Cheff §4: MaCheX frontal training images
    "mimic_studies": 227_835,         # MIMIC-CXR v2 (Johnson et al. 2019): studies = free-text reports
    "medcodi_train_studies": 45_111,  # MedCoDi-M code logs: frontal training studies (seed-implementations.md)
    "ddl_ldm_pairs": 8_545,           # DDL-CXR code: LDM training pairs (icu.ldm.max_steps = 200 epochs of them)
    "ddl_predictor_stays": 5_142,     # DDL-CXR code: predictor training stays
    "downstream_arms": 3,             # arms per downstream experiment (real / synthetic / mixed), an average
}
REPORTED = {  # paper budgets, GPU-hours, by branch
    "medcodi": (4 * 38.354, "MedCoDi-M §3.3: 4 A100, ~38.354 h for all experiments"),
}
# xrv DenseNet-121 at 224 px + Inception-v3 at 299 px: published 2.9 / 5.7 G multiply-accumulates, x 2 FLOPs each
FEATURE_BACKBONE_GFLOPS = 2 * (2.9 + 5.7)


@dataclass(frozen=True)
class Estimate:
    gpu_hours: float  # per job
    basis: str


def _gpu_hours(gflop: float) -> float:
    return gflop * 1e9 / (ASSUMED_TFLOPS * 1e12) / 3600.0


def _count_forward_gflops(build, make_inputs) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build()
        inputs = make_inputs()
        with FlopCounterMode(display=False) as counter:
            model(*inputs[0], **inputs[1])
    return counter.get_total_flops() / 1e9


def _latent_shape(cfg: dict) -> tuple[int, int]:
    """(channels, side) of the autoencoder latents at the store's low resolution."""
    ae = cfg["autoencoder"]
    return int(ae["latent_channels"]), min(cfg["ingest"]["resolutions"]) // 2 ** (len(ae["block_out_channels"]) - 1)


@cache
def _unet_gflops(arch_items: str, channels: int, side: int, context_dim: int | None, tokens: int) -> float:
    import torch

    from cxrgen.models.diffusion import build_unet

    arch = json.loads(arch_items)
    def inputs():  # built on the meta device, inside _count_forward_gflops
        context = {} if context_dim is None else {"encoder_hidden_states": torch.zeros(1, tokens, context_dim)}
        return (torch.zeros(1, channels, side, side), torch.tensor([1])), context

    return _count_forward_gflops(
        lambda: build_unet(arch, latent_channels=channels, sample_size=side, cross_attention_dim=context_dim), inputs)


def _freeze(section: dict) -> str:
    """A hashable key of a config section (for the forward-cost caches)."""
    return json.dumps(section, sort_keys=True)


def ldm_gflops(cfg: dict, conditioning: str = "text") -> float:
    """One forward pass of the Cheff LDM UNet on one latent (cross-attending to 77 CLIP tokens when text)."""
    channels, side = _latent_shape(cfg)
    context = int(cfg["clip"]["text"]["width"]) if conditioning == "text" else None
    return _unet_gflops(_freeze(cfg["ldm"]["unet"]), channels, side, context, 77)


@cache
def _sr_gflops(model_items: str, side: int) -> float:
    import torch

    from cxrgen.models.sr import build_sr_unet

    return _count_forward_gflops(lambda: build_sr_unet(json.loads(model_items), side),
                                 lambda: ((torch.zeros(1, 2, side, side), torch.tensor([1])), {}))


def sr_gflops(cfg: dict, train: bool = False) -> float:
    """One forward pass of the SR UNet at x_HR (training: on sr.train_crop patches when set)."""
    high = max(cfg["ingest"]["resolutions"])
    side = int(cfg["sr"]["train_crop"] or high) if train else high
    return _sr_gflops(_freeze(cfg["sr"]["model"]), side)


@cache
def _ae_gflops(ae_items: str, side: int) -> float:
    import torch

    from cxrgen.models.autoencoder import build_autoencoder

    return _count_forward_gflops(lambda: build_autoencoder(json.loads(ae_items), side),
                                 lambda: ((torch.zeros(1, 1, side, side),), {}))


def autoencoder_gflops(cfg: dict) -> float:
    """Encode + decode of one image at x_LR."""
    return _ae_gflops(_freeze(cfg["autoencoder"]), min(cfg["ingest"]["resolutions"]))


@cache
def _densenet_gflops(model_items: str, side: int) -> float:
    import torch

    from cxrgen.evaluate.classifier import build_classifier

    return _count_forward_gflops(lambda: build_classifier(json.loads(model_items)),
                                 lambda: ((torch.zeros(1, 1, side, side),), {}))


def evaluator_gflops(cfg: dict) -> float:
    return _densenet_gflops(_freeze(cfg["evaluator"]["model"]), min(cfg["ingest"]["resolutions"]))


def transformer_gflops(width: int, layers, tokens: int) -> float:
    """2 x parameters x tokens of a transformer tower (12 width^2 parameters per layer); a ResNet tower given as stage
    depths is counted as that many layers at its token grid."""
    depth = sum(layers) if isinstance(layers, list) else int(layers)
    return 2 * 12 * width**2 * depth * tokens / 1e9


def clip_gflops(section: dict, image_side: int) -> float:
    """Image + text tower forward of one pair."""
    patch = int(section["vision"].get("patch_size", 16))
    vision = transformer_gflops(int(section["vision"]["width"]), section["vision"]["layers"],
                                (image_side // patch) ** 2 + 1)
    text = transformer_gflops(int(section["text"]["width"]), section["text"]["layers"], 77)
    return vision + text


def _split_images(cfg: dict, split: str) -> int:
    fractions = cfg["unify"]["splits"]
    total = DATA_SIZES["machex_train_images"] / (1 - fractions["val_fraction"] - fractions["test_fraction"])
    return int(total * fractions[f"{split}_fraction"])


def _train_studies(cfg: dict) -> int:
    """MIMIC-CXR studies in the train split (the pool of train twins and probe prompts)."""
    return int(DATA_SIZES["mimic_studies"] * (1 - sum(cfg["unify"]["splits"].values())))


def probe_images(cfg: dict) -> int:
    """Images of the re-identification probe set (``reid_probe``, sampled without SR) generate samples per variant:
    prompts x seeds while ``reid.enabled``."""
    gen = cfg["generate"]
    if not (cfg["reid"]["enabled"] and "reid_probe" in gen["sets"]):
        return 0
    return min(_train_studies(cfg), int(gen["reid_probe"]["n"])) * int(gen["reid_probe"]["seeds"])


def generated_images(cfg: dict, variant: str) -> tuple[int, str]:
    """Images generate samples for one variant, from the config and DATA_SIZES (the probe set included)."""
    gen = cfg["generate"]
    counts = {"class_balanced": N_FINDINGS * int(gen["n_per_finding"]),
              "test_reports": int(DATA_SIZES["mimic_studies"] * cfg["unify"]["splits"]["test_fraction"])}
    if gen["max_reports"] is not None:
        counts["test_reports"] = min(counts["test_reports"], int(gen["max_reports"]))
    if variant == cfg["downstream"]["variant"]:
        twins = _train_studies(cfg)
        counts["train_twins"] = min(twins, int(gen["train_twins"]["n"] or twins))
    counts = {k: v for k, v in counts.items() if k in gen["sets"]}
    if probe := probe_images(cfg):
        counts["reid_probe"] = probe
    return sum(counts.values()), ", ".join(f"{k} {v:,}" for k, v in counts.items())


def _train(items: float, gflops: float, what: str, passes: float = TRAIN_PASSES) -> Estimate:
    return Estimate(_gpu_hours(items * passes * gflops), f"{what}: {items:,.0f} items x {passes:g} x {gflops:,.1f} GF")


def estimate_job(rule: str, wildcards: dict, cfg: dict) -> Estimate:
    """GPU-hours of one job of ``rule`` (its ``wildcards``) under the validated full config ``cfg``. Raises KeyError
    for a rule without a cost model (tests require one for every GPU rule)."""
    return _RULES[rule](wildcards, cfg)


def _variant_conditioning(cfg: dict, ldm_variant: str) -> str:
    from cxrgen.config import ldm_name

    return next((f["conditioning"] for f in cfg["variants"].values() if ldm_name(f) == ldm_variant), "text")


def _sampling_gflops(cfg: dict, steps: int, guidance: float, conditioning: str) -> float:
    passes = 2 if conditioning == "text" and guidance != 1.0 else 1
    return steps * passes * ldm_gflops(cfg, conditioning) + autoencoder_gflops(cfg) / 2


def _generate(w: dict, cfg: dict) -> Estimate:
    flags = cfg["variants"][w["variant"]]
    gen = cfg["generate"]
    n, sets = generated_images(cfg, w["variant"])
    ldm = (_sampling_gflops(cfg, int(gen["steps"]), float(gen["guidance_scale"]), flags["conditioning"])
           * (1.5 if flags["dkim"] else 1.0))
    per = ldm + int(gen["sr_steps"]) * sr_gflops(cfg)
    probe = probe_images(cfg)  # sampled without SR
    return Estimate(_gpu_hours((n - probe) * per + probe * ldm),
                    f"{n:,} images ({sets}) x {per / 1e3:,.1f} TF (LDM {gen['steps']} + SR {gen['sr_steps']} DDIM "
                    f"steps; reid_probe without SR: {ldm / 1e3:,.1f} TF)")


def _inpaint(cfg: dict) -> Estimate:
    from cxrgen.models.inpainting import model_calls

    inp = cfg["inpainting"]
    samples = sum(int(edit.get("seeds", 1)) for edit in inp["edits"])
    calls = model_calls(int(inp["steps"]), int(inp["jump_length"]), int(inp["jump_n_sample"]))
    passes = 2 if float(inp["guidance_scale"]) != 1.0 else 1
    per = calls * passes * ldm_gflops(cfg) + autoencoder_gflops(cfg)
    return Estimate(_gpu_hours(samples * per), f"{samples} edited samples x {calls} denoiser calls (RePaint jumps)")


def _grid(w: dict, cfg: dict, section: str, factor: float = 1.0) -> Estimate:
    grid = cfg[section]["sample_grid"]
    n = N_FINDINGS * int(grid["columns"])
    cond = _variant_conditioning(cfg, w["ldm_variant"])
    per = _sampling_gflops(cfg, int(grid["steps"]), float(grid.get("guidance_scale", 1.0)), cond) * factor
    return Estimate(_gpu_hours(n * per), f"{n} samples x {grid['steps']} DDIM steps")


def _features(n: int, cfg: dict, what: str) -> Estimate:
    per = evaluator_gflops(cfg) + FEATURE_BACKBONE_GFLOPS
    return Estimate(_gpu_hours(n * per), f"{what}: {n:,} images x 3 backbones ({per:.1f} GF)")


def _reconstruction(cfg: dict) -> Estimate:
    rec = cfg["evaluation"]["reconstruction"]
    n = int(rec["n"] or _split_images(cfg, "test"))
    per = autoencoder_gflops(cfg) + int(rec["sr_steps"]) * sr_gflops(cfg)
    return Estimate(_gpu_hours(n * per), f"{n:,} test images x (AE + {rec['sr_steps']} SR DDIM steps)")


def _downstream_steps(cfg: dict, section: dict) -> int:
    return int(section["max_steps"] or cfg["evaluator"]["max_steps"])


def _medcodi_unet_gflops(cfg: dict) -> float:
    channels, side = _latent_shape(cfg)
    return _unet_gflops(_freeze(cfg["medcodi"]["ldm"]["unet"]), channels, side,
                        int(cfg["medcodi"]["prompt_encoders"]["embed_dim"]), 3)


def _medcodi_steps(cfg: dict, section: dict, epochs: int = 100) -> int:
    """max_steps, or the paper's epochs of the training studies (null = epochs x steps per epoch)."""
    steps = section.get("max_steps")
    return int(steps) if steps else math.ceil(epochs * DATA_SIZES["medcodi_train_studies"] / section["batch_size"])


def _prompt_encoder_gflops(cfg: dict) -> float:
    enc = cfg["medcodi"]["prompt_encoders"]
    side = min(cfg["ingest"]["resolutions"])
    return 2 * clip_gflops(enc, side) - transformer_gflops(int(enc["text"]["width"]), enc["text"]["layers"], 77)


def _text_vae_gflops(cfg: dict) -> float:
    """Bidirectional GRU encoder + GRU decoder over max_tokens (2 x parameters per token); with ``pretrained`` set,
    the released Optimus' BERT-base encoder + GPT-2 small decoder (12 layers of width 768 each) and GPT-2's output
    layer over its 50,260 tokens (the checkpoint itself is not read at planning time)."""
    vae = cfg["medcodi"]["text_vae"]
    if vae.get("pretrained") is not None:
        tokens = int(vae["max_tokens"])
        return 2 * transformer_gflops(768, 12, tokens) + 2 * 768 * 50260 * tokens / 1e9
    m = vae["model"]
    h, e = int(m["hidden_dim"]), int(m["embed_dim"])
    params = 3 * (e + h) * h * (2 * int(m["encoder_layers"]) + int(m["decoder_layers"]))
    return 2 * params * int(vae["max_tokens"]) / 1e9


def _report_denoiser_gflops(cfg: dict) -> float:
    m = cfg["medcodi"]["report_diffusion"]["model"]
    return 2 * 2 * int(m["blocks"]) * int(m["hidden_dim"]) ** 2 / 1e9


def _icu_unet_gflops(cfg: dict) -> float:
    channels, side = _latent_shape(cfg)
    icu = cfg["icu"]["ldm"]
    return _unet_gflops(_freeze(icu["unet"]), channels, side, int(icu["ehr_encoder"]["d_model"]),
                        int(cfg["icu"]["cohort"]["series_hours"]))


def _icu_predictor_gflops(cfg: dict) -> float:
    pred = cfg["icu"]["predictor"]
    return transformer_gflops(int(pred["ehr_encoder"]["d_model"]), 2, int(cfg["icu"]["cohort"]["series_hours"]) + 16)


def _medcodi_image_sampling(cfg: dict, steps: int) -> float:
    return steps * 2 * _medcodi_unet_gflops(cfg) + autoencoder_gflops(cfg) / 2


def _test_studies(cfg: dict) -> int:
    return int(DATA_SIZES["medcodi_train_studies"] * cfg["unify"]["splits"]["test_fraction"]
               / (1 - cfg["unify"]["splits"]["val_fraction"] - cfg["unify"]["splits"]["test_fraction"]))


_RULES = {
    "train_clip": lambda w, c: _train(c["clip"]["batch_size"] * c["clip"]["max_steps"],
                                      clip_gflops(c["clip"], min(c["ingest"]["resolutions"])), "pairs"),
    "train_clip_avatls": lambda w, c: _train(
        c["clip"]["batch_size"] * c["clip"]["squeeze"]["max_steps"],
        clip_gflops(c["clip"], min(c["ingest"]["resolutions"])), "pairs",
        TRAIN_PASSES if c["clip"]["squeeze"]["train_towers"] else 1.0),
    "train_autoencoder": lambda w, c: _train(c["autoencoder"]["batch_size"] * c["autoencoder"]["max_steps"],
                                             autoencoder_gflops(c) * (1.3 if c["autoencoder"]["gan"]["enabled"] else 1),
                                             "images (+30 % patch-GAN)" if c["autoencoder"]["gan"]["enabled"]
                                             else "images"),
    "cache_latents": lambda w, c: _train(DATA_SIZES["machex_train_images"] / 0.9, autoencoder_gflops(c) / 2,
                                         "images (all splits) encoded", 1.0),
    "train_ldm": lambda w, c: _train(c["ldm"]["batch_size"] * c["ldm"]["max_steps"],
                                     ldm_gflops(c, _variant_conditioning(c, w["ldm_variant"])), "latents"),
    "train_dkim": lambda w, c: _train(c["dkim"]["batch_size"] * c["dkim"]["max_steps"], ldm_gflops(c),
                                      "latents (frozen UNet + ControlNet half trained)", 1.0 + 0.5 * TRAIN_PASSES),
    "sample_ldm_grid": lambda w, c: _grid(w, c, "ldm"),
    "sample_dkim_grid": lambda w, c: _grid(w, c, "dkim", 1.5),
    "train_sr": lambda w, c: _train(c["sr"]["batch_size"] * c["sr"]["base"]["max_steps"], sr_gflops(c, True),
                                    "image pairs"),
    "finetune_sr": lambda w, c: _train(c["sr"]["batch_size"] * c["sr"]["finetune"]["max_steps"], sr_gflops(c, True),
                                       "image pairs"),
    "generate": _generate,
    "inpaint_images": lambda w, c: _inpaint(c),
    "train_evaluator": lambda w, c: _train(c["evaluator"]["batch_size"] * c["evaluator"]["max_steps"],
                                           evaluator_gflops(c), "images"),
    "run_downstream": lambda w, c: _train(DATA_SIZES["downstream_arms"] * c["evaluator"]["batch_size"]
                                          * _downstream_steps(c, c["downstream"]), evaluator_gflops(c),
                                          f"{DATA_SIZES['downstream_arms']} arms x images"),
    "extract_real_features": lambda w, c: _features(3 * int(c["evaluation"]["n"]), c, "real train/val/test sets"),
    "extract_generated_features": lambda w, c: _features(min(int(c["evaluation"]["n"]),
                                                             generated_images(c, w["variant"])[0] - probe_images(c)),
                                                         c, "generated"),
    "evaluate_reconstruction": lambda w, c: _reconstruction(c),
    # MedCoDi-M / XGeM
    "train_prompt_encoders": lambda w, c: _train(
        c["medcodi"]["prompt_encoders"]["batch_size"] * _medcodi_steps(c, c["medcodi"]["prompt_encoders"], 30),
        _prompt_encoder_gflops(c), "studies (frontal + lateral + report towers, 30 epochs)"),
    "embed_prompts": lambda w, c: _train(DATA_SIZES["medcodi_train_studies"] / 0.9, _prompt_encoder_gflops(c),
                                         "studies", 1.0),
    "train_medcodi_ldm": lambda w, c: _train(c["medcodi"]["ldm"]["batch_size"]
                                             * _medcodi_steps(c, c["medcodi"]["ldm"]), _medcodi_unet_gflops(c),
                                             "latents"),
    "train_text_vae": lambda w, c: _train(c["medcodi"]["text_vae"]["batch_size"]
                                          * c["medcodi"]["text_vae"]["max_steps"], _text_vae_gflops(c), "reports"),
    "train_report_diffusion": lambda w, c: _train(c["medcodi"]["report_diffusion"]["batch_size"]
                                                  * c["medcodi"]["report_diffusion"]["max_steps"],
                                                  _report_denoiser_gflops(c), "report latents"),
    "generate_medcodi_reports": lambda w, c: _train(
        _test_studies(c), c["medcodi"]["report_generation"]["sample"]["steps"] * 2 * _report_denoiser_gflops(c)
        + _text_vae_gflops(c), "test studies sampled", 1.0),
    "generate_medcodi_images": lambda w, c: _train(
        _test_studies(c), _medcodi_image_sampling(c, int(c["medcodi"]["generation"]["steps"])),
        "test studies sampled", 1.0),
    "evaluate_medcodi_images": lambda w, c: _features(_test_studies(c), c, "generated + real"),
    "train_joint_alignment": lambda w, c: _train(
        c["medcodi"]["joint"]["batch_size"] * _medcodi_steps(c, c["medcodi"]["joint"]),
        2 * _medcodi_unet_gflops(c) + _report_denoiser_gflops(c), "studies (2 frozen image UNets + report flow)",
        1.0 + 0.1 * TRAIN_PASSES),
    "evaluate_joint_generation": lambda w, c: _train(
        3 * 2 * _test_studies(c), _medcodi_image_sampling(c, int(c["medcodi"]["joint"]["sampling"]["steps"])),
        "3 directions x joint/independent samples", 1.0),
    "generate_medcodi_twins": lambda w, c: _train(
        int(c["medcodi"]["utility"]["twins"]["n"] or DATA_SIZES["medcodi_train_studies"]),
        _medcodi_image_sampling(c, int(c["medcodi"]["utility"]["twins"]["steps"])), "twins sampled", 1.0),
    "run_view_downstream": lambda w, c: _train(DATA_SIZES["downstream_arms"] * c["evaluator"]["batch_size"]
                                               * _downstream_steps(c, c["medcodi"]["utility"]), evaluator_gflops(c),
                                               f"{DATA_SIZES['downstream_arms']} arms x images"),
    # DDL-CXR
    "train_ddl_ldm": lambda w, c: _train(c["icu"]["ldm"]["batch_size"] * c["icu"]["ldm"]["max_steps"],
                                         _icu_unet_gflops(c), "latent pairs"),
    "generate_ddl_latents": lambda w, c: _train(
        DATA_SIZES["ddl_predictor_stays"] / 0.7, int(c["icu"]["generation"]["steps"]) * _icu_unet_gflops(c),
        "stays (all splits) sampled", 1.0),
    "train_icu_predictor": lambda w, c: _train(c["icu"]["predictor"]["batch_size"] * c["icu"]["predictor"]["max_steps"],
                                               _icu_predictor_gflops(c) + (0 if w.get("icu_arm") == "ehr" else
                                                                           transformer_gflops(512, 2, 256)),
                                               "stays"),
    "evaluate_ddl_images": lambda w, c: _train(
        int(c["icu"]["evaluation_images"]["max_pairs"] or DATA_SIZES["ddl_ldm_pairs"] * 0.3)
        * int(c["icu"]["evaluation_images"]["samples_per_pair"]),
        int(c["icu"]["generation"]["steps"]) * _icu_unet_gflops(c) + autoencoder_gflops(c) / 2,
        "test pairs x samples", 1.0),
}
GPU_RULES_WITH_COST = frozenset(_RULES)


@dataclass(frozen=True)
class RuleRow:
    rule: str
    jobs: int
    gpus: int
    gpu_hours_per_job: float
    gpu_hours: float
    basis: str


def gpu_hours_table(jobs: list[tuple[str, dict, int]], cfg: dict) -> list[RuleRow]:
    """One row per rule of the planned ``jobs`` (rule, wildcards, GPUs requested; GPU-less jobs are skipped), in plan
    order. GPU-hours are the work's, whatever the GPU count (data parallel splits the same work)."""
    per_rule: dict[str, list[tuple[Estimate, int]]] = {}
    for rule, wildcards, gpus in jobs:
        if gpus > 0:
            per_rule.setdefault(rule, []).append((estimate_job(rule, wildcards, cfg), gpus))
    rows = []
    for rule, estimates in per_rule.items():
        total = sum(e.gpu_hours for e, _ in estimates)
        rows.append(RuleRow(rule, len(estimates), max(g for _, g in estimates), total / len(estimates), total,
                            estimates[0][0].basis))
    return rows


def parse_dry_run(text: str) -> list[tuple[str, dict, int]]:
    """(rule, wildcards, GPUs requested) of every job a ``snakemake -n`` output lists (the SLURM profile's ``gpu``
    resource; 0 when the job asks for none)."""
    jobs: list[tuple[str, dict, int]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if line.startswith(("rule ", "localrule ")) and line.rstrip().endswith(":"):
            jobs.append((line.split()[1].rstrip(":"), {}, 0))
        elif jobs and stripped.startswith("wildcards:"):
            jobs[-1][1].update(item.split("=", 1) for item in stripped.split(":", 1)[1].strip().split(", "))
        elif jobs and stripped.startswith("resources:"):
            resources = dict(item.split("=", 1) for item in stripped.split(":", 1)[1].strip().split(", ") if "=" in item)
            gpus = int(resources.get("gpu", 0) or 0)
            jobs[-1] = (jobs[-1][0], jobs[-1][1], gpus)
    return jobs


def measure_cpu_gflops_per_s(cfg: dict, batch_size: int = 8, repeats: int = 3) -> float:
    """Achieved GFLOP/s of this machine on training steps of the LDM UNet of ``cfg`` (use the demo's: small), as the
    counted training FLOPs of a step over its best wall time: relates the table's assumed GPU throughput to a measured
    CPU one (``ASSUMED_TFLOPS * 1e3 / this`` = the implied CPU -> GPU factor)."""
    import time

    import torch

    from cxrgen.models.diffusion import build_unet

    channels, side = _latent_shape(cfg)
    context = int(cfg["clip"]["text"]["width"])
    unet = build_unet(cfg["ldm"]["unet"], latent_channels=channels, sample_size=side, cross_attention_dim=context)
    x, tokens = torch.randn(batch_size, channels, side, side), torch.randn(batch_size, 77, context)
    t = torch.randint(0, 1000, (batch_size,))
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        unet(x, t, encoder_hidden_states=tokens).sample.square().mean().backward()
        best = min(best, time.perf_counter() - started)
    return batch_size * TRAIN_PASSES * ldm_gflops(cfg) / best


def format_table(rows: list[RuleRow]) -> str:
    lines = [f"{'rule':<28} {'jobs':>4} {'GPUs':>4} {'GPU-h/job':>10} {'GPU-h':>10}  basis (first job)"]
    for r in rows:
        lines.append(f"{r.rule:<28} {r.jobs:>4} {r.gpus:>4} {r.gpu_hours_per_job:>10,.1f} {r.gpu_hours:>10,.1f}  "
                     f"{r.basis}")
    lines.append(f"{'total':<28} {sum(r.jobs for r in rows):>4} {'':>4} {'':>10} "
                 f"{sum(r.gpu_hours for r in rows):>10,.1f}")
    lines.append(f"assumes {ASSUMED_TFLOPS:g} TFLOP/s sustained per GPU (~40 % of A100 TF32 dense peak), forward "
                 f"FLOPs counted on the meta device, training = {TRAIN_PASSES:g} forward passes; no I/O, validation "
                 f"or scaling losses: a lower bound within ~2x (cxrgen.compute)")
    return "\n".join(lines)
