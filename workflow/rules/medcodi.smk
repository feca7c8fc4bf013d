# MedCoDi-M / XGeM (arXiv 2501.04614) branch: the study table (frontal film, lateral film, report per study) -> the
# prompt encoders that align the three modalities in one space -> every study's embeddings (the generators' conditions)
# -> the image LDM per view and the report VAE + report diffusion model, each per prompting mode (multi-prompt, or the
# single-prompt MedCoDi ablation).

if MEDCODI_ENABLED:

    rule build_study_table:
        input:
            index="results/store/index.parquet",
        output:
            studies=MEDCODI_STUDIES,
            counts="results/medcodi/studies.json",
        params:
            sources=config["medcodi"]["sources"],
        log:
            "results/logs/build_study_table/build_study_table.log",
        threads: 1
        script:
            "../scripts/medcodi/build_study_table.py"

    rule train_prompt_encoders:
        input:
            studies=MEDCODI_STUDIES,
            index="results/store/index.parquet",
            tracking=ancient("results/tracking/run.json"),
        output:
            model=protected(directory(MEDCODI_PROMPT_ENCODERS)),
        params:
            store_root=store_root_of_index,
            resolution=LOW_RES,
            cfg=rule_section(config, "train_prompt_encoders"),
            seed=config["seed"],
            state_dir="results/state/train_prompt_encoders",
        log:
            "results/logs/train_prompt_encoders/train_prompt_encoders.log",
        threads: 2
        script:
            "../scripts/medcodi/train_prompt_encoders.py"

    rule embed_prompts:
        input:
            studies=MEDCODI_STUDIES,
            index="results/store/index.parquet",
            encoders=MEDCODI_PROMPT_ENCODERS,
        output:
            embeddings=MEDCODI_EMBEDDINGS,
        params:
            store_root=store_root_of_index,
        log:
            "results/logs/embed_prompts/embed_prompts.log",
        threads: 2
        script:
            "../scripts/medcodi/embed_prompts.py"

    rule train_text_vae:
        input:
            studies=MEDCODI_STUDIES,
            tracking=ancient("results/tracking/run.json"),
        output:
            model=protected(directory(MEDCODI_TEXT_VAE)),
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
            studies=MEDCODI_STUDIES,
            embeddings=MEDCODI_EMBEDDINGS,
            vae=MEDCODI_TEXT_VAE,
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

    rule train_medcodi_ldm:
        input:
            studies=MEDCODI_STUDIES,
            embeddings=MEDCODI_EMBEDDINGS,
            latents="results/latents",
            autoencoder="results/models/autoencoder",
            tracking=ancient("results/tracking/run.json"),
        output:
            model=protected(directory("results/medcodi/ldm/{view}-{prompting}")),
        params:
            cfg=rule_section(config, "train_medcodi_ldm"),
            seed=config["seed"],
            state_dir=medcodi_ldm_state_dir,
        log:
            "results/logs/train_medcodi_ldm/{view}-{prompting}.log",
        # demo UNet (1.7M parameters on 3x16x16): one thread measured 78 s CPU for 300 steps, two threads 263 s CPU
        # (small kernels do not scale); one thread lets two of the four models train side by side on 2 cores
        threads: 1
        script:
            "../scripts/medcodi/train_medcodi_ldm.py"

    # ---- utility experiments per view (MedCoDi-M §4.5; issue 12 "Also"): the downstream harness' experiments run
    # separately for frontal and lateral films, the synthetic pool = T->F / T->L twins of the multi-prompt view LDM.
    if config["medcodi"]["utility"]["enabled"]:

        def medcodi_utility_experiment_cfg(wildcards):
            """The harness' settings of the job's own experiment (section downstream.<experiment>)."""
            return config["downstream"][wildcards.experiment]

        def medcodi_utility_state_dir(wildcards):
            return f"results/state/run_view_downstream/{wildcards.view}/{wildcards.experiment}/{wildcards.seed}"

        def medcodi_utility_metrics(wildcards):
            return [f"results/medcodi/utility/{wildcards.view}/{e}/{s}/metrics.json"
                    for e in config["medcodi"]["utility"]["experiments"] for s in config["medcodi"]["utility"]["seeds"]]

        rule generate_medcodi_twins:
            input:
                studies=MEDCODI_STUDIES,
                embeddings=MEDCODI_EMBEDDINGS,
                index="results/store/index.parquet",
                ldm="results/medcodi/ldm/{view}-multi",
                autoencoder="results/models/autoencoder",
                tracking=ancient("results/tracking/run.json"),
            output:
                store=directory("results/medcodi/twins/{view}"),
            params:
                cfg=rule_section(config, "generate_medcodi_twins"),
                seed=config["seed"],
                resolution=LOW_RES,
            log:
                "results/logs/generate_medcodi_twins/{view}.log",
            threads: 1
            script:
                "../scripts/medcodi/generate_medcodi_twins.py"

        rule run_view_downstream:
            input:
                index="results/store/index.parquet",
                synthetic="results/medcodi/twins/{view}",
                tracking=ancient("results/tracking/run.json"),
            output:
                metrics="results/medcodi/utility/{view}/{experiment}/{seed}/metrics.json",
                curves="results/medcodi/utility/{view}/{experiment}/{seed}/curves.png",
            params:
                store_root=store_root_of_index,
                resolution=LOW_RES,
                cfg=rule_section(config, "run_view_downstream"),
                experiment_cfg=medcodi_utility_experiment_cfg,
                evaluator_cfg=rule_section(config, "run_view_downstream", "evaluator_cfg"),
                base_seed=config["seed"],
                state_dir=medcodi_utility_state_dir,
            wildcard_constraints:
                experiment="|".join(config["medcodi"]["utility"]["experiments"]),
                seed=r"\d+",
            log:
                "results/logs/run_view_downstream/{view}/{experiment}/{seed}.log",
            threads: 1
            script:
                "../scripts/medcodi/run_view_downstream.py"

        rule evaluate_medcodi_utility:
            input:
                metrics=medcodi_utility_metrics,
            output:
                table="results/medcodi/eval/utility/{view}.json",
                markdown="results/medcodi/eval/utility/{view}.md",
            params:
                demo=all(is_demo(s) for s in SOURCES),
            log:
                "results/logs/evaluate_medcodi_utility/{view}.log",
            threads: 1
            script:
                "../scripts/medcodi/evaluate_medcodi_utility.py"
