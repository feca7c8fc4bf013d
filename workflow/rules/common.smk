# Config validation (JSON schema with defaults; errors name the key and the allowed values) and path helpers.
from pathlib import Path

from cxrgen.config import enabled_sources, ldm_name, load_rule_sections, section_for, validate_config
from cxrgen.train.model_card import card_file_name

config.update(validate_config(config))
RULE_SECTIONS = load_rule_sections(workflow.source_path("../config_sections.yaml"))


def rule_section(config, rule, param="cfg"):
    """The config keys that param ``param`` of ``rule`` carries (workflow/config_sections.yaml)."""
    return section_for(config, RULE_SECTIONS, rule if param == "cfg" else f"{rule}.{param}")

SOURCES = enabled_sources(config)
RESOLUTIONS = config["ingest"]["resolutions"]
LOW_RES, HIGH_RES = min(RESOLUTIONS), max(RESOLUTIONS)  # Cheff: LDM/AE at x_LR (256), SR x_LR -> x_HR (1024)


# Generated variants (config key `variants`: name -> lnfs/avatls/dkim flags) and the LDMs they sample. An LDM is
# defined by (lnfs, avatls) and named by cxrgen.config.ldm_name (cheff, diffcxr-lnfs, diffcxr-avatls, diffcxr);
# DKIM is an adapter trained on an LDM (results/models/dkim/<ldm_variant>) and used when a dkim variant samples it.
# A variant with conditioning none samples cheff-uncond, Cheff's unconditional LDM; enabled false drops a variant.
VARIANTS = [v for v, flags in config["variants"].items() if flags["enabled"]]


def ldm_variant_of(variant):
    return ldm_name(config["variants"][variant])


LDM_FLAGS = {ldm_variant_of(v): {k: config["variants"][v][k] for k in ("lnfs", "avatls", "conditioning")}
             for v in VARIANTS}
LDM_VARIANTS = sorted(LDM_FLAGS)
DKIM_LDM_VARIANTS = sorted({ldm_variant_of(v) for v in VARIANTS if config["variants"][v]["dkim"]})


wildcard_constraints:
    source="|".join(SOURCES),
    icu_arm="ehr|ehr_last_cxr|ddl_cxr",
    icu_seed=r"\d+",
    prompting="multi|single",
    view="frontal|lateral",
    shard=r"\d{4}",
    variant="|".join(VARIANTS),
    ldm_variant="|".join(LDM_VARIANTS),


def is_demo(source):
    return config["sources"][source]["root"] is None


def source_root(source):
    root = config["sources"][source]["root"]
    return f"results/sources/{source}" if root is None else root


def shard_ids(source):
    return [f"{i:04d}" for i in range(config["sources"][source]["shards"])]


def demo_source_dir(wildcards):
    """The demo corpus of a source (rule build_demo_sources); real sources are read from their configured root."""
    return [f"results/sources/{wildcards.source}"] if is_demo(wildcards.source) else []


def shard_index_parts(wildcards=None):
    return [f"results/ingest/{s}/shard-{i}.index.parquet" for s in SOURCES for i in shard_ids(s)]


def shard_rejection_parts(wildcards=None):
    return [f"results/ingest/{s}/shard-{i}.rejections.parquet" for s in SOURCES for i in shard_ids(s)]


def final_targets():
    return [
        "results/store/index.parquet",
        "results/store/summary.json",
        "results/reports/data/data_report.html",
        *[f"results/synthetic/{v}/sample_grid.png" for v in VARIANTS],
        "results/reports/diffcxr/avatls.md",  # AVA-TLS retrieval with / without the squeeze (rule report_avatls)
        "results/lnfs/filtered_index.parquet",  # Diff-CXR LNFS (rule filter_noise)
        "results/reports/labeler/labeler.md",  # report labeler measurement (rule evaluate_labeler)
        "results/models/evaluator",  # in-domain DenseNet classifier (rule train_evaluator)
        "results/reports/downstream/downstream.md",  # downstream experiments table (rule report_downstream)
        "results/reports/downstream/downstream.png",
        *eval_targets(),  # metric harness per variant + reconstruction (workflow/rules/evaluate_metrics.smk)
        *icu_targets(),  # DDL-CXR ICU branch when icu.enabled (workflow/rules/icu.smk)
        *medcodi_targets(),  # MedCoDi-M / XGeM branch when medcodi.enabled (workflow/rules/medcodi.smk)
        "results/summary.md",  # headline tables for terminal readers (rule write_summary)
        "results/reports/training/curves.png",  # every model's loss curve and sample grid (rule report_training)
        *(["results/reports/inpainting/inpainting.png"] if INPAINT_ENABLED else []),  # rule inpaint_images
        *(["results/reports/generation/sample_sheet.png"] if config["generate"]["sample_sheet"]["enabled"] else []),
    ]


def sample_sheet_variants():
    """Rows of the sample sheet, top to bottom: generate.sample_sheet.variants, or every variant."""
    return config["generate"]["sample_sheet"]["variants"] or VARIANTS


# --- params functions (named, so rules stay declarative) ---
def demo_image_count(wildcards):
    return config["demo"]["images"].get(wildcards.source, 0)


def demo_icu_stays(wildcards):
    """The demo ICU patients' films live in the MIMIC corpus only (rule build_demo_mimic_iv writes their tables)."""
    return config["demo"]["icu_stays"] if wildcards.source == "mimic" and config["icu"]["enabled"] else 0


def source_root_param(wildcards):
    return source_root(wildcards.source)


def shard_count_param(wildcards):
    return config["sources"][wildcards.source]["shards"]


def adapter_options_param(wildcards):
    return config["sources"][wildcards.source]["options"]


def is_demo_param(wildcards):
    return is_demo(wildcards.source)


def target_spacing_param(wildcards):
    return config["sources"][wildcards.source]["target_spacing_mm"]


def autoencoder_inputs(wildcards):
    inputs = {"index": "results/store/index.parquet", "tracking": ancient("results/tracking/run.json")}
    if config["autoencoder"].get("perceptual") == "clip":
        inputs["clip"] = "results/models/clip"
    return inputs


def filter_noise_inputs(wildcards):
    """Latents and store for LNFS, plus the demo sources' noise ground truth and ingestion manifests (the truth's
    rel_path -> image_id join) for measuring precision/recall; real sources have no truth."""
    demo = [s for s in SOURCES if is_demo(s)]
    return {
        "latents": "results/latents",
        "index": "results/store/index.parquet",
        "truth": [f"results/sources/_meta/{s}.noise.parquet" for s in demo],
        "manifests": [f"results/ingest/{s}/manifest.parquet" for s in demo],
    }


def store_root_of_index(wildcards, input):
    return str(Path(input.index).parent)


def store_root_of_blobs(wildcards, output):
    return str(Path(output.blobs[0]).parents[2])  # results/store/<res>px/<source>/shard-NNNN.bin


def results_dir_of_tracking(wildcards, output):
    return str(Path(output[0]).parents[1])  # results/tracking/run.json


def clip_dir_of(ldm_variant):
    """The text encoder an LDM was trained with: the AVA-TLS squeezed CLIP (rule train_clip_avatls) or the baseline
    (the DKIM templates and the prompts are embedded by the same one)."""
    return "results/models/clip_avatls" if LDM_FLAGS[ldm_variant]["avatls"] else "results/models/clip"


def clip_input_of(ldm_variant):
    """{"clip": text encoder} of a text-conditioned LDM; nothing for the unconditional one (cheff-uncond)."""
    return {"clip": clip_dir_of(ldm_variant)} if LDM_FLAGS[ldm_variant]["conditioning"] == "text" else {}


def train_ldm_cfg(wildcards):
    """Section ldm for one LDM: its conditioning comes from its variants (none = Cheff's unconditional SDM)."""
    return {**rule_section(config, "train_ldm"), "conditioning": LDM_FLAGS[wildcards.ldm_variant]["conditioning"]}


def lnfs_input_of(ldm_variant):
    """The LNFS-filtered index an LDM (and its DKIM adapter) trains on, if it uses LNFS."""
    return {"lnfs": "results/lnfs/filtered_index.parquet"} if LDM_FLAGS[ldm_variant]["lnfs"] else {}


def dkim_state_dir(wildcards):
    return f"results/state/train_dkim/{wildcards.ldm_variant}"


# --- metric harness (workflow/rules/evaluate_metrics.smk) ---
def eval_variants():
    """Generated variants the metric harness evaluates (config key variants)."""
    return VARIANTS


def eval_resolution():
    """Store resolution images are evaluated at: evaluation.resolution, or x_HR (the generators' final output)."""
    return config["evaluation"]["resolution"] or HIGH_RES


def eval_targets():
    """Every report-registered output of the metric harness (so `snakemake --report` finds them)."""
    per_variant = ["distribution.html", "distribution.png", "fidelity.html", "fidelity.png", "real_vs_generated.png",
                   "memorisation.html", "memorisation_distances.png", "memorisation_pairs.png"]
    if REID_ENABLED:  # re-identification audit (rules train_reid, evaluate_reidentification)
        per_variant += ["reidentification.html", "reidentification.png"]
    return [f"results/eval/{v}/{name}" for v in eval_variants() for name in per_variant] + [
        "results/eval/reconstruction/reconstruction.html", "results/eval/reconstruction/reconstruction.png"]


REID_ENABLED = config["reid"]["enabled"]
# the metric harness' per-variant evaluations (results/eval/<variant>/<kind>.json, summary fragments, model cards)
VARIANT_EVAL_KINDS = ("distribution", "fidelity", "memorisation", *(["reidentification"] if REID_ENABLED else []))


def summary_fragments(wildcards=None):
    """Markdown fragments concatenated (in this order) into results/summary.md by rule write_summary. Stages that
    write a fragment for terminal readers add its path here."""
    return [
        "results/reports/data/data_report.md",
        "results/reports/eval/reconstruction.md",
        *[f"results/reports/eval/{kind}_{v}.md" for v in eval_variants()
          for kind in VARIANT_EVAL_KINDS],
        "results/reports/downstream/downstream.md",
        "results/reports/lnfs/lnfs.md",
        "results/reports/diffcxr/avatls.md",
        "results/reports/labeler/labeler.md",
        *(["results/reports/icu/icu.md"] if ICU_ENABLED else []),  # DDL-CXR (rule report_icu)
        *(["results/reports/medcodi/summary.md"] if MEDCODI_ENABLED else []),  # MedCoDi-M (rule report_medcodi)
        *(["results/reports/inpainting/inpainting.md"] if INPAINT_ENABLED else []),  # rule inpaint_images
        f"{MODEL_CARD_DIR}/index.md",  # every trained model's card with its evaluations (rule write_model_cards)
    ]


# --- evaluator and downstream experiments (workflow/rules/evaluate.smk) ---
def downstream_synthetic_store(wildcards):
    """The generated store whose train twins form the synthetic pool (downstream.variant)."""
    return f"results/synthetic/{config['downstream']['variant']}/store"


def downstream_cfg(wildcards):
    """Section downstream for one job: the shared keys (workflow/config_sections.yaml) and its own experiment's."""
    return {**rule_section(config, "run_downstream"),
            wildcards.experiment: config["downstream"][wildcards.experiment]}


def downstream_state_dir(wildcards):
    return f"results/state/run_downstream/{wildcards.experiment}/{wildcards.seed}"


def downstream_metrics_files(wildcards=None):
    return [f"results/downstream/{e}/{s}/metrics.json" for e in config["downstream"]["experiments"]
            for s in config["downstream"]["seeds"]]


# --- generative core (workflow/rules/train.smk, generate.smk) ---
def train_ldm_inputs(wildcards):
    return {"latents": "results/latents", "autoencoder": "results/models/autoencoder",
            **clip_input_of(wildcards.ldm_variant), "tracking": ancient("results/tracking/run.json"),
            **lnfs_input_of(wildcards.ldm_variant)}


def ldm_state_dir(wildcards):
    return f"results/state/train_ldm/{wildcards.ldm_variant}"


def generate_inputs(wildcards):
    ldm_variant = ldm_variant_of(wildcards.variant)
    inputs = {"prompts": "results/synthetic/prompts.parquet", "ldm": f"results/models/ldm/{ldm_variant}",
              "autoencoder": "results/models/autoencoder", "sr": "results/models/sr", **clip_input_of(ldm_variant),
              "tracking": ancient("results/tracking/run.json")}
    if config["variants"][wildcards.variant]["dkim"]:
        inputs["dkim"] = f"results/models/dkim/{ldm_variant}"
    return inputs


def generate_cfg(wildcards):
    """Section generate for one variant: the synthetic train twins (the downstream experiments' pool) are only
    generated for the variant the experiments use (downstream.variant), the re-identification probe set only while
    the audit runs (reid.enabled; every evaluated variant)."""
    cfg = rule_section(config, "generate")
    if wildcards.variant != config["downstream"]["variant"]:
        cfg["sets"] = [s for s in cfg["sets"] if s != "train_twins"]
    if not REID_ENABLED:
        cfg["sets"] = [s for s in cfg["sets"] if s != "reid_probe"]
    return cfg


def train_dkim_inputs(wildcards):
    return {"ldm": f"results/models/ldm/{wildcards.ldm_variant}", "latents": "results/latents",
            "clip": clip_dir_of(wildcards.ldm_variant), "tracking": ancient("results/tracking/run.json"),
            **lnfs_input_of(wildcards.ldm_variant)}


def _trained_models():
    models = {"clip": "results/models/clip", "autoencoder": "results/models/autoencoder",
              "sr_base": "results/models/sr_base", "sr": "results/models/sr", "evaluator": "results/models/evaluator"}
    if any(flags["avatls"] for flags in LDM_FLAGS.values()):
        models["clip_avatls"] = "results/models/clip_avatls"
    for ldm_variant in LDM_VARIANTS:
        models[f"ldm/{ldm_variant}"] = f"results/models/ldm/{ldm_variant}"
    for ldm_variant in DKIM_LDM_VARIANTS:
        models[f"dkim/{ldm_variant}"] = f"results/models/dkim/{ldm_variant}"
    if REID_ENABLED:
        models["reid"] = "results/models/reid"
    if ICU_ENABLED:  # DDL-CXR: the LDM and the first seed of each predictor arm
        models["ddl_cxr/ldm"] = "results/icu/models/ldm"
        models.update({f"ddl_cxr/{arm}": f"results/icu/predictors/{arm}/seed{ICU_SEEDS[0]}" for arm in ICU_ARMS})
    if MEDCODI_ENABLED:
        models.update({"medcodi/prompt_encoders": MEDCODI_PROMPT_ENCODERS, "medcodi/text_vae": MEDCODI_TEXT_VAE})
        for prompting in MEDCODI_PROMPTING:
            models[f"medcodi/report_{prompting}"] = f"results/medcodi/report_diffusion/{prompting}"
            models.update({f"medcodi/{view}_{prompting}": f"results/medcodi/ldm/{view}-{prompting}"
                           for view in ("frontal", "lateral")})
        models["medcodi/joint"] = "results/medcodi/joint"  # joint-generation layers (rule train_joint_alignment)
    return models


def trained_model_dirs(wildcards=None):
    return list(_trained_models().values())


def trained_model_names(wildcards=None):
    return list(_trained_models())


# --- model cards (rule write_model_cards) ---
MODEL_CARD_DIR = "results/reports/model_cards"


def model_card_files():
    """One completed card per trained model."""
    return [f"{MODEL_CARD_DIR}/{card_file_name(name)}" for name in _trained_models()]


def model_card_evaluations(wildcards=None):
    """Model name -> {label: evaluation json} of the metric harness results that measured that model: a variant's
    FID/KID, fidelity and memorisation concern the LDM it samples (and its DKIM adapter), the reconstruction chains
    the autoencoder and SR, MedCoDi-M's image / report / joint evaluations their generators. (DDL-CXR's evaluations
    are directories of per-arm tables, read by report_icu.)"""
    evaluations = {name: {} for name in _trained_models()}
    for variant in eval_variants():
        ldm_variant = ldm_variant_of(variant)
        files = {f"{kind} ({variant})": f"results/eval/{variant}/{kind}.json"
                 for kind in VARIANT_EVAL_KINDS}
        evaluations[f"ldm/{ldm_variant}"].update(files)
        if config["variants"][variant]["dkim"]:
            evaluations[f"dkim/{ldm_variant}"].update(files)
    for name in ("autoencoder", "sr"):
        evaluations[name]["reconstruction"] = "results/eval/reconstruction/reconstruction.json"
    if MEDCODI_ENABLED:
        for prompting in MEDCODI_PROMPTING:
            evaluations[f"medcodi/report_{prompting}"]["report generation"] = (
                f"results/medcodi/eval/reports/{prompting}.json")
            for view in ("frontal", "lateral"):
                evaluations[f"medcodi/{view}_{prompting}"]["image generation"] = (
                    f"results/medcodi/eval/images/{view}-{prompting}.json")
        evaluations["medcodi/joint"]["joint generation"] = "results/medcodi/eval/joint.json"
    return evaluations


def model_card_evaluation_files(wildcards=None):
    return sorted({path for labels in model_card_evaluations().values() for path in labels.values()})


def sample_ldm_grid_inputs(wildcards):
    return {"ldm": f"results/models/ldm/{wildcards.ldm_variant}", "autoencoder": "results/models/autoencoder",
            **clip_input_of(wildcards.ldm_variant), "tracking": ancient("results/tracking/run.json")}


# --- Cheff in/outpainting, workflow/rules/generate.smk (inpaint_images) edits with the report-conditioned baseline LDM
INPAINT_ENABLED = config["inpainting"]["enabled"]
INPAINT_LDM = "cheff" if "cheff" in LDM_VARIANTS else LDM_VARIANTS[0]


def inpaint_images_inputs(wildcards):
    inputs = {"index": "results/store/index.parquet", "ldm": f"results/models/ldm/{INPAINT_LDM}",
              "autoencoder": "results/models/autoencoder", "clip": clip_dir_of(INPAINT_LDM),
              "tracking": ancient("results/tracking/run.json")}
    if config["inpainting"]["evaluator_findings"]:
        inputs["evaluator"] = "results/models/evaluator"
    return inputs


def sample_dkim_grid_inputs(wildcards):
    return {**sample_ldm_grid_inputs(wildcards), "dkim": f"results/models/dkim/{wildcards.ldm_variant}"}


def _sample_grids():
    """The diffusion models' sample grids (rules sample_ldm_grid, sample_dkim_grid) by model name."""
    grids = {f"ldm/{v}": f"results/reports/training/grids/ldm/{v}.png" for v in LDM_VARIANTS}
    grids.update({f"dkim/{v}": f"results/reports/training/grids/dkim/{v}.png" for v in DKIM_LDM_VARIANTS})
    return grids


def sample_grid_files(wildcards=None):
    return list(_sample_grids().values())


def sample_grid_names(wildcards=None):
    return list(_sample_grids())


# --- MedCoDi-M / XGeM branch (workflow/rules/medcodi.smk) ---
MEDCODI_ENABLED = config["medcodi"]["enabled"]
MEDCODI_STUDIES = "results/medcodi/studies.parquet"
MEDCODI_PROMPT_ENCODERS = "results/medcodi/prompt_encoders"
MEDCODI_EMBEDDINGS = "results/medcodi/embeddings.npz"
MEDCODI_TEXT_VAE = "results/medcodi/text_vae"
MEDCODI_PROMPTING = ("multi", "single")  # MedCoDi-M multi-prompt training, and the single-prompt (MedCoDi) ablation


def medcodi_targets():
    if not MEDCODI_ENABLED:
        return []
    return [MEDCODI_STUDIES, MEDCODI_PROMPT_ENCODERS, MEDCODI_EMBEDDINGS, MEDCODI_TEXT_VAE,
            *[f"results/medcodi/report_diffusion/{p}" for p in MEDCODI_PROMPTING],
            *[f"results/medcodi/ldm/{view}-{p}" for view in ("frontal", "lateral") for p in MEDCODI_PROMPTING],
            *[f"results/medcodi/eval/reports/{p}.json" for p in MEDCODI_PROMPTING],  # paper Tables 4-5
            *[f"results/medcodi/eval/images/{view}-{p}.json" for view in ("frontal", "lateral")
              for p in MEDCODI_PROMPTING],  # paper Tables 2-3
            "results/medcodi/eval/joint.json", "results/medcodi/eval/hamming.png",  # joint generation (Table 6, Fig. 7)
            # per-view utility experiments (rule evaluate_medcodi_utility)
            *[f"results/medcodi/eval/utility/{view}.{ext}" for view in ("frontal", "lateral") for ext in ("json", "md")
              if config["medcodi"]["utility"]["enabled"]],
            "results/reports/medcodi/medcodi.md"]  # rule report_medcodi


def report_diffusion_state_dir(wildcards):
    return f"results/state/train_report_diffusion/{wildcards.prompting}"


# MedCoDi-M per-view utility experiments (rules generate_medcodi_twins, run_view_downstream, evaluate_medcodi_utility)
def medcodi_utility_experiment_cfg(wildcards):
    """The harness' settings of the job's own experiment (section downstream.<experiment>)."""
    return config["downstream"][wildcards.experiment]


def medcodi_utility_state_dir(wildcards):
    return f"results/state/run_view_downstream/{wildcards.view}/{wildcards.experiment}/{wildcards.seed}"


def medcodi_utility_metrics(wildcards):
    return [f"results/medcodi/utility/{wildcards.view}/{e}/{s}/metrics.json"
            for e in config["medcodi"]["utility"]["experiments"] for s in config["medcodi"]["utility"]["seeds"]]


# --- DDL-CXR ICU branch (workflow/rules/icu.smk) ---
ICU_ENABLED = config["icu"]["enabled"]
DEMO_MIMIC_IV = "results/sources/mimic-iv"  # rule build_demo_mimic_iv (workflow/rules/demo.smk)
ICU_COHORT = {name: f"results/icu/cohort/{name}" for name in
              ("stays.parquet", "pairs.parquet", "ehr.npz", "normalisation.json", "cohort.json")}


ICU_ARMS = config["icu"]["evaluation"]["arms"]
ICU_SEEDS = config["icu"]["evaluation"]["seeds"]


def icu_targets():
    if not ICU_ENABLED:
        return []
    return [*ICU_COHORT.values(), "results/icu/evaluation", "results/icu/evaluation_images",
            "results/reports/icu/icu.md", "results/reports/icu/icu.png", "results/reports/icu/image_pairs.png"]


def icu_cohort_files(wildcards):
    """The cohort files the models read (rule build_icu_cohort); adapters pass their directory."""
    return {name: ICU_COHORT[f"{name}.{ext}"] for name, ext in
            (("stays", "parquet"), ("pairs", "parquet"), ("ehr", "npz"), ("normalisation", "json"))}


def icu_predictor_inputs(wildcards):
    inputs = {**icu_cohort_files(wildcards), "tracking": ancient("results/tracking/run.json")}
    if wildcards.icu_arm != "ehr":
        inputs.update(latents="results/latents", autoencoder="results/models/autoencoder")
    if wildcards.icu_arm == "ddl_cxr":
        inputs["generated"] = "results/icu/generated/latents.npz"
    return inputs


def icu_predictor_seed(wildcards):
    return config["seed"] + int(wildcards.icu_seed)


def icu_predictor_state_dir(wildcards):
    return f"results/state/train_icu_predictor/{wildcards.icu_arm}/seed{wildcards.icu_seed}"


def icu_predictor_dirs():
    return [f"results/icu/predictors/{arm}/seed{seed}" for arm in ICU_ARMS for seed in ICU_SEEDS]


def mimic_iv_root():
    """The MIMIC-IV root: icu.mimic_iv_root, or the demo tables written for the demo MIMIC-CXR patients."""
    root = config["icu"]["mimic_iv_root"]
    return DEMO_MIMIC_IV if root is None else root


def icu_demo_only():
    """Only demo data in the ICU cohort (the public demo salt is acceptable; real data need the secret one)."""
    return config["icu"]["mimic_iv_root"] is None and is_demo("mimic")


def icu_cohort_inputs(wildcards):
    """The store index, and the demo MIMIC-IV tables and MIMIC-CXR corpus when they are the demo's (real roots are
    read in place, as params)."""
    inputs = {"index": "results/store/index.parquet"}
    if config["icu"]["mimic_iv_root"] is None:
        inputs["mimic_iv"] = DEMO_MIMIC_IV
    if is_demo("mimic"):
        inputs["mimic_cxr"] = "results/sources/mimic"
    return inputs


def medcodi_ldm_state_dir(wildcards):
    return f"results/state/train_medcodi_ldm/{wildcards.view}-{wildcards.prompting}"
