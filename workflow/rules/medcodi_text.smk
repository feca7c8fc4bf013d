# MedCoDi-M / XGeM report generation (issue 12): the report VAE and the report diffusion model per prompting mode.
# DRAFT, not yet included by the Snakefile: the merger wires it next to the study table (rule build_study_table) and
# the prompt embeddings (rule embed_prompts), and adds to workflow/config_sections.yaml:
#   train_text_vae: {section: medcodi, include: [text_vae]}
#   train_report_diffusion: {section: medcodi, include: [report_diffusion]}
# and "prompting": ["multi", "single"] to the wildcard values of tests/workflow/test_config_narrowing.py.


wildcard_constraints:
    prompting="multi|single",


# (merger: move next to ldm_state_dir in common.smk; snakemake --lint flags functions mixed with rules)
def report_diffusion_state_dir(wildcards):
    return f"results/state/train_report_diffusion/{wildcards.prompting}"


rule train_text_vae:
    input:
        studies="results/medcodi/studies.parquet",
        tracking=ancient("results/tracking/run.json"),
    output:
        model=protected(directory("results/medcodi/text_vae")),
    params:
        cfg=rule_section(config, "train_text_vae"),
        seed=config["seed"],
        state_dir="results/state/train_text_vae",
    log:
        "results/logs/train_text_vae/train_text_vae.log",
    # one thread: a GRU step is many small ops; two threads on a shared 2-core box ran 3-10x slower than one
    threads: 1
    script:
        "../scripts/medcodi/train_text_vae.py"


rule train_report_diffusion:
    input:
        studies="results/medcodi/studies.parquet",
        embeddings="results/medcodi/embeddings.npz",
        vae="results/medcodi/text_vae",
        tracking=ancient("results/tracking/run.json"),
    output:
        model=protected(directory("results/medcodi/report_diffusion/{prompting}")),
    params:
        cfg=rule_section(config, "train_report_diffusion"),
        seed=config["seed"],
        state_dir=report_diffusion_state_dir,
    log:
        "results/logs/train_report_diffusion/{prompting}.log",
    threads: 1
    script:
        "../scripts/medcodi/train_report_diffusion.py"
