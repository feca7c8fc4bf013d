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


rule report_training:
    input:
        models=trained_model_dirs,
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
    log:
        "results/logs/report_training/report_training.log",
    threads: 1
    script:
        "../scripts/report/report_training.py"
