# Embedded demo corpus: each source written in its native on-disk layout from real shipped metadata.


rule build_demo_sources:
    output:
        root=directory("results/sources/{source}"),
        meta="results/sources/_meta/{source}.json",
        noise="results/sources/_meta/{source}.noise.parquet",  # ground truth of the injected noisy films (LNFS)
    params:
        n_images=demo_image_count,
        seed=config["seed"],
        downscale=config["demo"]["downscale"],
        bad_fraction=config["demo"]["bad_fraction"],
        noise_fraction=config["demo"]["noise_fraction"],
        icu_stays=demo_icu_stays,
    log:
        "results/logs/build_demo_sources/{source}.log",
    threads: 1
    script:
        "../scripts/demo/build_demo_sources.py"


# MIMIC-IV v2.2 hosp/ and icu/ tables of the demo ICU patients whose films are in the MIMIC-CXR demo corpus.
rule build_demo_mimic_iv:
    output:
        root=directory("results/sources/mimic-iv"),
    params:
        icu_stays=config["demo"]["icu_stays"],
        seed=config["seed"],
    log:
        "results/logs/build_demo_mimic_iv/build_demo_mimic_iv.log",
    threads: 1
    script:
        "../scripts/demo/build_demo_mimic_iv.py"
