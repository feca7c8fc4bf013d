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

    # ---- report generation from the films and its evaluation (paper Tables 4-5; directions F->T, L->T, F+L->T)

    rule generate_medcodi_reports:
        input:
            studies=MEDCODI_STUDIES,
            embeddings=MEDCODI_EMBEDDINGS,
            model="results/medcodi/report_diffusion/{prompting}",
            vae=MEDCODI_TEXT_VAE,
            tracking=ancient("results/tracking/run.json"),
        output:
            reports="results/medcodi/generated/reports-{prompting}.parquet",
        params:
            cfg=rule_section(config, "generate_medcodi_reports"),
            seed=config["seed"],
        log:
            "results/logs/generate_medcodi_reports/{prompting}.log",
        threads: 1
        script:
            "../scripts/medcodi/generate_medcodi_reports.py"

    rule evaluate_medcodi_reports:
        input:
            reports="results/medcodi/generated/reports-{prompting}.parquet",
            studies=MEDCODI_STUDIES,
            index="results/store/index.parquet",
            tracking=ancient("results/tracking/run.json"),
        output:
            json="results/medcodi/eval/reports/{prompting}.json",
        params:
            cfg=rule_section(config, "evaluate_medcodi_reports"),
        log:
            "results/logs/evaluate_medcodi_reports/{prompting}.log",
        threads: 1
        script:
            "../scripts/medcodi/evaluate_medcodi_reports.py"

    # --- report (issue 12): the tables of every evaluation rule of the branch ---
    rule report_medcodi:
        input:
            image_evals=expand("results/medcodi/eval/images/{view}-{prompting}.json", view=("frontal", "lateral"),
                               prompting=MEDCODI_PROMPTING),
            report_evals=expand("results/medcodi/eval/reports/{prompting}.json", prompting=MEDCODI_PROMPTING),
            joint="results/medcodi/eval/joint.json",
            utility=expand("results/medcodi/eval/utility/{view}.md", view=("frontal", "lateral"))
            if config["medcodi"]["utility"]["enabled"] else [],
            studies="results/medcodi/studies.json",
            encoders=MEDCODI_PROMPT_ENCODERS,
            text_vae=MEDCODI_TEXT_VAE,
            report_models=expand("results/medcodi/report_diffusion/{prompting}", prompting=MEDCODI_PROMPTING),
            view_models=expand("results/medcodi/ldm/{view}-{prompting}", view=("frontal", "lateral"),
                               prompting=MEDCODI_PROMPTING),
        output:
            markdown=report(
                "results/reports/medcodi/medcodi.md",
                caption="../report/medcodi_report.rst",
                category="7. MedCoDi-M (XGeM)",
                labels={"content": "report"},
            ),
            summary="results/reports/medcodi/summary.md",
            tables="results/reports/medcodi/medcodi.json",
            fid=report(
                "results/reports/medcodi/fid.png",
                caption="../report/medcodi_fid.rst",
                category="7. MedCoDi-M (XGeM)",
                labels={"content": "FID per image direction (Table 2)"},
            ),
            hamming=report(
                "results/reports/medcodi/hamming.png",
                caption="../report/medcodi_hamming.rst",
                category="7. MedCoDi-M (XGeM)",
                labels={"content": "Hamming distances (Fig. 7)"},
            ),
            grids=report(
                expand("results/reports/medcodi/grids/{view}-{prompting}.png", view=("frontal", "lateral"),
                       prompting=MEDCODI_PROMPTING),
                caption="../report/medcodi_grid.rst",
                category="7. MedCoDi-M (XGeM)",
            ),
        log:
            "results/logs/report_medcodi/report_medcodi.log",
        threads: 1
        script:
            "../scripts/report/report_medcodi.py"

    # any-to-any image generation (paper §4.1, Tables 2-3): every test study's image of the view from the real inputs
    # of each direction, then FID/KID per direction against the real test images of the view and (frontal) the
    # evaluator's AUROC/F1 against the prompt study's labels
    rule generate_medcodi_images:
        input:
            model="results/medcodi/ldm/{view}-{prompting}",
            autoencoder="results/models/autoencoder",  # the LDM manifest's decoder
            studies=MEDCODI_STUDIES,
            embeddings=MEDCODI_EMBEDDINGS,
            tracking=ancient("results/tracking/run.json"),
        output:
            images="results/medcodi/generated/{view}-{prompting}.npz",
        params:
            cfg=rule_section(config, "generate_medcodi_images"),
            seed=config["seed"],
        log:
            "results/logs/generate_medcodi_images/{view}-{prompting}.log",
        threads: 1
        script:
            "../scripts/medcodi/generate_medcodi_images.py"

    rule evaluate_medcodi_images:
        input:
            images="results/medcodi/generated/{view}-{prompting}.npz",
            studies=MEDCODI_STUDIES,
            index="results/store/index.parquet",
            evaluator="results/models/evaluator",
            tracking=ancient("results/tracking/run.json"),
        output:
            results="results/medcodi/eval/images/{view}-{prompting}.json",
            grid="results/medcodi/eval/images/{view}-{prompting}.png",
        params:
            cfg=rule_section(config, "evaluate_medcodi_images"),
            seed=config["seed"],
        log:
            "results/logs/evaluate_medcodi_images/{view}-{prompting}.log",
        threads: 1
        script:
            "../scripts/medcodi/evaluate_medcodi_images.py"

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

    # ---- utility experiments per view (MedCoDi-M §4.5; issue 12 "Also"): the downstream harness' experiments run
    # separately for frontal and lateral films, the synthetic pool = T->F / T->L twins of the multi-prompt view LDM.
    if config["medcodi"]["utility"]["enabled"]:

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
