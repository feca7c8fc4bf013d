# Diff-CXR data-side methods: LNFS latent noise filtering (between cache_latents and train_ldm) and the evaluation of
# the rule-based report labeler that labels IU-Xray in unification.


rule filter_noise:
    input:
        unpack(filter_noise_inputs),
    output:
        index="results/lnfs/filtered_index.parquet",
        markdown="results/reports/lnfs/lnfs.md",
        figure=report(
            "results/reports/lnfs/lnfs.png",
            caption="../report/lnfs.rst",
            category="5. Diff-CXR",
        ),
    params:
        cfg=rule_section(config, "filter_noise"),
        seed=config["seed"],
        store_root=store_root_of_index,
        resolution=LOW_RES,
    log:
        "results/logs/filter_noise/filter_noise.log",
    threads: 1
    script:
        "../scripts/filter/filter_noise.py"


rule evaluate_labeler:
    input:
        index="results/store/index.parquet",
    output:
        markdown="results/reports/labeler/labeler.md",
        table=report(
            "results/reports/labeler/labeler.csv",
            caption="../report/labeler.rst",
            category="5. Diff-CXR",
        ),
    log:
        "results/logs/evaluate_labeler/evaluate_labeler.log",
    threads: 1
    script:
        "../scripts/filter/evaluate_labeler.py"
