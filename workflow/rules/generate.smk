# Synthetic generation: prompt sets (test-split reports; class-balanced templates), DDIM + SR cascade, sample grids.


rule build_prompts:
    input:
        index="results/store/index.parquet",
    output:
        prompts="results/synthetic/prompts.parquet",
    params:
        cfg=config["generate"],
        seed=config["seed"],
    log:
        "results/logs/build_prompts/build_prompts.log",
    script:
        "../scripts/generate/build_prompts.py"


rule generate:
    input:
        prompts="results/synthetic/prompts.parquet",
        ldm="results/models/ldm",
        autoencoder="results/models/autoencoder",
        clip="results/models/clip",
        sr="results/models/sr",
        tracking=ancient("results/tracking/run.json"),
    output:
        store=directory("results/synthetic/store"),
        grid=report(
            "results/synthetic/sample_grid.png",
            caption="../report/sample_grid_generated.rst",
            category="2. Generation",
        ),
    params:
        cfg=config["generate"],
    log:
        "results/logs/generate/generate.log",
    threads: 2
    script:
        "../scripts/generate/generate.py"
