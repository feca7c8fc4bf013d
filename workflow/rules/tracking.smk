# MLflow: experiment + parent run created once, before any tracked job starts (also creates the DB schema).


localrules:
    init_tracking,


rule init_tracking:
    output:
        "results/tracking/run.json",
    params:
        experiment=config["tracking"]["experiment"],
        config=rule_section(config, "init_tracking", "config"),
        results_dir=results_dir_of_tracking,
    log:
        "results/logs/init_tracking/init_tracking.log",
    script:
        "../scripts/tracking/init_tracking.py"
