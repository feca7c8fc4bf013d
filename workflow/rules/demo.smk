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
    log:
        "results/logs/build_demo_sources/{source}.log",
    threads: 1
    script:
        "../scripts/demo/build_demo_sources.py"
