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


# Cheff §5 in- and outpainting with the report-conditioned LDM (config section inpainting; on when inpainting.enabled)
rule inpaint_images:
    input:
        unpack(inpaint_images_inputs),
    output:
        grid=report(
            "results/reports/inpainting/inpainting.png",
            caption="../report/inpainting.rst",
            category="2. Generation",
            subcategory="Inpainting",
        ),
        metrics="results/reports/inpainting/metrics.json",
        markdown="results/reports/inpainting/inpainting.md",
    params:
        cfg=rule_section(config, "inpaint_images"),
        seed=config["seed"],
    log:
        "results/logs/inpaint_images/inpaint_images.log",
    threads: 2
    script:
        "../scripts/generate/inpaint_images.py"


rule draw_sample_sheet:
    input:
        stores=expand("results/synthetic/{variant}/store", variant=sample_sheet_variants()),
    output:
        sheet=report(
            "results/reports/generation/sample_sheet.png",
            caption="../report/sample_sheet.rst",
            category="2. Generation",
        ),
        meta="results/reports/generation/sample_sheet.json",
    params:
        cfg=rule_section(config, "draw_sample_sheet"),
        variants=sample_sheet_variants(),
    log:
        "results/logs/draw_sample_sheet/draw_sample_sheet.log",
    script:
        "../scripts/generate/draw_sample_sheet.py"
