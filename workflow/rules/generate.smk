# Synthetic generation: prompt sets (test-split reports; class-balanced templates), DDIM + SR cascade, sample grids.


rule build_prompts:
    input:
        index="results/store/index.parquet",
    output:
        prompts="results/synthetic/prompts.parquet",
    params:
        cfg=rule_section(config, "build_prompts"),
    log:
        "results/logs/build_prompts/build_prompts.log",
    script:
        "../scripts/generate/build_prompts.py"


rule generate:
    input:
        unpack(generate_inputs),
    output:
        store=directory("results/synthetic/{variant}/store"),
        grid=report(
            "results/synthetic/{variant}/sample_grid.png",
            caption="../report/sample_grid_generated.rst",
            category="2. Generation",
            subcategory="{variant}",
        ),
    params:
        cfg=generate_cfg,
    log:
        "results/logs/generate/{variant}.log",
    priority: 10  # the Diff-CXR chain, the DAG's longest path (see train_clip)
    threads: 2
    script:
        "../scripts/generate/generate.py"
