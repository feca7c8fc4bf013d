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
    # demo UNet (1.7M parameters on 3x16x16): one thread measured 78 s CPU for 300 steps, two threads 263 s CPU
    # (small kernels do not scale); one thread lets two of the four models train side by side on 2 cores
    threads: 1
    script:
        "../scripts/medcodi/train_medcodi_ldm.py"
