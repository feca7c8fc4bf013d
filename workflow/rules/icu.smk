# DDL-CXR ICU branch (arXiv 2410.17918): the MIMIC-IV + MIMIC-CXR cohort (prediction stays, image pairs, hourly EHR)
# -> the EHR-conditioned LDM on the cohort's image pairs -> a generated latent at prediction time for every stay ->
# fusion predictors per arm x seed -> AUROC/AUPRC tables.

if ICU_ENABLED:

    rule build_icu_cohort:
        input:
            unpack(icu_cohort_inputs),
        output:
            stays=ICU_COHORT["stays.parquet"],
            pairs=ICU_COHORT["pairs.parquet"],
            ehr=ICU_COHORT["ehr.npz"],
            normalisation=ICU_COHORT["normalisation.json"],
            cohort=ICU_COHORT["cohort.json"],
        params:
            cfg=rule_section(config, "build_icu_cohort"),
            mimic_iv_root=mimic_iv_root(),
            mimic_cxr_root=source_root("mimic"),
            salt_env=config["privacy"]["salt_env"],
            demo_only=icu_demo_only(),
        log:
            "results/logs/build_icu_cohort/build_icu_cohort.log",
        threads: 1
        script:
            "../scripts/icu/build_icu_cohort.py"

    rule train_ddl_ldm:
        input:
            unpack(icu_cohort_files),
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
            unpack(icu_cohort_files),
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
            seed=icu_predictor_seed,
            state_dir=icu_predictor_state_dir,
        log:
            "results/logs/train_icu_predictor/{icu_arm}-seed{icu_seed}.log",
        threads: 1
        script:
            "../scripts/icu/train_icu_predictor.py"


    rule evaluate_icu:
        input:
            predictors=icu_predictor_dirs(),
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


    rule evaluate_ddl_images:
        input:
            unpack(icu_cohort_files),
            latents="results/latents",
            autoencoder="results/models/autoencoder",
            model="results/icu/models/ldm",
            evaluator="results/models/evaluator",
            index="results/store/index.parquet",
            tracking=ancient("results/tracking/run.json"),
        output:
            results=directory("results/icu/evaluation_images"),
        params:
            cfg=rule_section(config, "evaluate_ddl_images"),
            backbones_cfg=rule_section(config, "evaluate_ddl_images", "backbones_cfg"),
            seed=config["seed"],
        log:
            "results/logs/evaluate_ddl_images/evaluate_ddl_images.log",
        threads: 2
        script:
            "../scripts/icu/evaluate_ddl_images.py"


    rule report_icu:
        input:
            cohort=ICU_COHORT["cohort.json"],
            evaluation="results/icu/evaluation",
            quality="results/icu/evaluation_images",
        output:
            markdown=report(
                "results/reports/icu/icu.md",
                caption="../report/icu_report.rst",
                category="6. DDL-CXR",
                labels={"content": "report"},
            ),
            figure=report(
                "results/reports/icu/icu.png",
                caption="../report/icu_outcomes.rst",
                category="6. DDL-CXR",
                labels={"content": "outcomes by hours since the last CXR"},
            ),
            grid=report(
                "results/reports/icu/image_pairs.png",
                caption="../report/icu_image_pairs.rst",
                category="6. DDL-CXR",
                labels={"content": "prior | generated | real later"},
            ),
        log:
            "results/logs/report_icu/report_icu.log",
        threads: 1
        script:
            "../scripts/report/report_icu.py"
