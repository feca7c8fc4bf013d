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


# MedCoDi-M joint generation (paper §2.3 cross-modal latent alignment; Table 6, Fig. 7): environment encoders and
# cross-flow attention trained over the frozen multi-prompt generators, then joint vs independent sampling.
if MEDCODI_ENABLED:

    rule train_joint_alignment:
        input:
            studies=MEDCODI_STUDIES,
            embeddings=MEDCODI_EMBEDDINGS,
            latents="results/latents",
            autoencoder="results/models/autoencoder",
            frontal="results/medcodi/ldm/frontal-multi",
            lateral="results/medcodi/ldm/lateral-multi",
            report="results/medcodi/report_diffusion/multi",
            vae=MEDCODI_TEXT_VAE,
            tracking=ancient("results/tracking/run.json"),
        output:
            model=protected(directory("results/medcodi/joint")),
        params:
            cfg=rule_section(config, "train_joint_alignment"),
            seed=config["seed"],
            state_dir="results/state/train_joint_alignment",
        log:
            "results/logs/train_joint_alignment/train_joint_alignment.log",
        threads: 1
        script:
            "../scripts/medcodi/train_joint_alignment.py"

    rule evaluate_joint_generation:
        input:
            studies=MEDCODI_STUDIES,
            embeddings=MEDCODI_EMBEDDINGS,
            frontal="results/medcodi/ldm/frontal-multi",
            lateral="results/medcodi/ldm/lateral-multi",
            report="results/medcodi/report_diffusion/multi",
            vae=MEDCODI_TEXT_VAE,
            joint="results/medcodi/joint",
            autoencoder="results/models/autoencoder",
            encoders=MEDCODI_PROMPT_ENCODERS,
            evaluator="results/models/evaluator",
            tracking=ancient("results/tracking/run.json"),
        output:
            similarity="results/medcodi/eval/joint.json",
            hamming="results/medcodi/eval/hamming.png",
        params:
            cfg=rule_section(config, "evaluate_joint_generation"),
            seed=config["seed"],
        log:
            "results/logs/evaluate_joint_generation/evaluate_joint_generation.log",
        threads: 1
        script:
            "../scripts/medcodi/evaluate_joint_generation.py"
