# MedCoDi-M / XGeM (issue 12) image LDMs: one per view, multi-prompt (paper §2.2) or single-prompt (report only, the
# paper's MedCoDi ablation). Draft: not included in the Snakefile yet; needs build_study_table and embed_prompts
# (results/medcodi/studies.parquet, results/medcodi/embeddings.npz) and a config_sections.yaml entry
#   train_medcodi_ldm: {section: medcodi, include: [ldm]}
# (its state-dir function medcodi_ldm_state_dir is in common.smk)


rule train_medcodi_ldm:
    input:
        studies="results/medcodi/studies.parquet",
        embeddings="results/medcodi/embeddings.npz",
        latents="results/latents",
        autoencoder="results/models/autoencoder",
        tracking=ancient("results/tracking/run.json"),
    output:
        model=protected(directory("results/medcodi/ldm/{view}-{prompting}")),
    params:
        cfg=rule_section(config, "train_medcodi_ldm"),
        seed=config["seed"],
        state_dir=medcodi_ldm_state_dir,
    wildcard_constraints:
        view="frontal|lateral",
        prompting="multi|single",
    log:
        "results/logs/train_medcodi_ldm/{view}-{prompting}.log",
    threads: 2
    script:
        "../scripts/medcodi/train_medcodi_ldm.py"
