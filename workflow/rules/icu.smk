# DDL-CXR ICU branch (arXiv 2410.17918): the MIMIC-IV + MIMIC-CXR cohort (prediction stays, image pairs, hourly EHR).

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

