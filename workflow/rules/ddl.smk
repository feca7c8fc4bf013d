# DDL-CXR models (issue 13; arXiv 2410.17918): LDM on the cohort's image pairs -> generated latent at prediction time
# for every stay -> fusion predictors per arm x seed -> AUROC/AUPRC tables. DRAFT: not included in the Snakefile yet
# (the merger wires it after build_icu_cohort exists). It needs these workflow/config_sections.yaml entries:
#   train_ddl_ldm: {section: icu, include: [ldm]}
#   generate_ddl_latents: {section: icu, include: [generation]}
#   train_icu_predictor: {section: icu, include: [predictor]}
#   evaluate_icu: {section: icu, include: [evaluation]}
ICU_ARMS = config["icu"]["evaluation"]["arms"]
ICU_SEEDS = config["icu"]["evaluation"]["seeds"]
ICU_COHORT = "results/icu/cohort"


wildcard_constraints:
    icu_arm="|".join(["ehr", "ehr_last_cxr", "ddl_cxr"]),
    icu_seed=r"\d+",


def icu_predictor_inputs(wildcards):
    inputs = {"cohort": ICU_COHORT, "tracking": ancient("results/tracking/run.json")}
    if wildcards.icu_arm != "ehr":
        inputs.update(latents="results/latents", autoencoder="results/models/autoencoder")
    if wildcards.icu_arm == "ddl_cxr":
        inputs["generated"] = "results/icu/generated/latents.npz"
    return inputs


rule train_ddl_ldm:
    input:
        cohort=ICU_COHORT,
        latents="results/latents",
        autoencoder="results/models/autoencoder",
        tracking=ancient("results/tracking/run.json"),
    output:
        model=protected(directory("results/icu/models/ldm")),
    params:
        cfg=rule_section(config, "train_ddl_ldm"),
        seed=config["seed"],
        state_dir="results/state/train_ddl_ldm",
    log:
        "results/logs/train_ddl_ldm/train_ddl_ldm.log",
    threads: 2
    script:
        "../scripts/icu/train_ddl_ldm.py"


rule generate_ddl_latents:
    input:
        cohort=ICU_COHORT,
        latents="results/latents",
        autoencoder="results/models/autoencoder",
        model="results/icu/models/ldm",
        tracking=ancient("results/tracking/run.json"),
    output:
        latents="results/icu/generated/latents.npz",
    params:
        cfg=rule_section(config, "generate_ddl_latents"),
        seed=config["seed"],
    log:
        "results/logs/generate_ddl_latents/generate_ddl_latents.log",
    threads: 2
    script:
        "../scripts/icu/generate_ddl_latents.py"


rule train_icu_predictor:
    input:
        unpack(icu_predictor_inputs),
    output:
        model=directory("results/icu/predictors/{icu_arm}/seed{icu_seed}"),
    params:
        cfg=rule_section(config, "train_icu_predictor"),
        seed=lambda wildcards: config["seed"] + int(wildcards.icu_seed),
        state_dir=lambda wildcards: f"results/state/train_icu_predictor/{wildcards.icu_arm}/seed{wildcards.icu_seed}",
    log:
        "results/logs/train_icu_predictor/{icu_arm}-seed{icu_seed}.log",
    threads: 1
    script:
        "../scripts/icu/train_icu_predictor.py"


rule evaluate_icu:
    input:
        predictors=expand("results/icu/predictors/{icu_arm}/seed{icu_seed}", icu_arm=ICU_ARMS, icu_seed=ICU_SEEDS),
        tracking=ancient("results/tracking/run.json"),
    output:
        results=directory("results/icu/evaluation"),
    params:
        cfg=rule_section(config, "evaluate_icu"),
    log:
        "results/logs/evaluate_icu/evaluate_icu.log",
    threads: 1
    script:
        "../scripts/icu/evaluate_icu.py"
