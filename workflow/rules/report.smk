# Data report: counts, rejections, label prevalence per split, view mix, sample grids per source.


rule report_data:
    input:
        index="results/store/index.parquet",
        rejections="results/store/rejections.parquet",
        summary="results/store/summary.json",
    output:
        html=report(
            "results/reports/data/data_report.html",
            caption="../report/data_report.rst",
            category="1. Data",
        ),
        grid=report(
            "results/reports/data/sample_grid.png",
            caption="../report/sample_grid.rst",
            category="1. Data",
        ),
        markdown="results/reports/data/data_report.md",
    params:
        store_root=store_root_of_index,
        resolution=max(RESOLUTIONS),
        seed=config["seed"],
    log:
        "results/logs/report_data/report_data.log",
    threads: 1
    script:
        "../scripts/report/report_data.py"


# The diffusion models' sample grids, drawn from the saved models (not by the trainers: changing ldm.sample_grid or
# dkim.sample_grid redraws a picture without retraining).


rule sample_ldm_grid:
    input:
        unpack(sample_ldm_grid_inputs),
    output:
        grid="results/reports/training/grids/ldm/{ldm_variant}.png",
        meta="results/reports/training/grids/ldm/{ldm_variant}.json",
    params:
        cfg=rule_section(config, "sample_ldm_grid"),
        seed=config["seed"],
    log:
        "results/logs/sample_ldm_grid/{ldm_variant}.log",
    threads: 2
    script:
        "../scripts/report/sample_ldm_grid.py"


rule sample_dkim_grid:
    input:
        unpack(sample_dkim_grid_inputs),
    output:
        grid="results/reports/training/grids/dkim/{ldm_variant}.png",
        meta="results/reports/training/grids/dkim/{ldm_variant}.json",
    params:
        cfg=rule_section(config, "sample_dkim_grid"),
        seed=config["seed"],
    log:
        "results/logs/sample_dkim_grid/{ldm_variant}.log",
    threads: 2
    script:
        "../scripts/report/sample_dkim_grid.py"


rule report_training:
    input:
        models=trained_model_dirs,
        grids=sample_grid_files,
    output:
        curves=report(
            "results/reports/training/curves.png",
            caption="../report/training_curves.rst",
            category="2. Generation",
            subcategory="Training",
        ),
        samples=report(
            "results/reports/training/sample_grids.png",
            caption="../report/training_samples.rst",
            category="2. Generation",
            subcategory="Training",
        ),
    params:
        names=trained_model_names,
        grid_names=sample_grid_names,
    log:
        "results/logs/report_training/report_training.log",
    threads: 1
    script:
        "../scripts/report/report_training.py"


# Model cards: each trainer writes MODEL_CARD.md next to its weights; this completes every card with the evaluation
# results that concern its model, once they exist, and indexes them for the summary (cheap: reads JSON only).


rule write_model_cards:
    input:
        models=trained_model_dirs,
        evaluations=model_card_evaluation_files,
    output:
        cards=model_card_files(),
        index=report(
            f"{MODEL_CARD_DIR}/index.md",
            caption="../report/model_cards.rst",
            category="8. Model cards",
        ),
    params:
        names=trained_model_names,
        evaluations=model_card_evaluations,
        demo=all(is_demo(s) for s in SOURCES),
    log:
        "results/logs/write_model_cards/write_model_cards.log",
    threads: 1
    script:
        "../scripts/report/write_model_cards.py"
