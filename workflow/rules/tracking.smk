# MLflow: experiment + parent run created once, before any tracked job starts (also creates the DB schema). Its
# params are the experiment name only: a config change must not replace the parent run (and its rerun would hold
# back the planning of every job that opens a child run).


localrules:
    init_tracking,


rule init_tracking:
    output:
        "results/tracking/run.json",
    params:
        experiment=config["tracking"]["experiment"],
        results_dir=results_dir_of_tracking,
    log:
        "results/logs/init_tracking/init_tracking.log",
    script:
        "../scripts/tracking/init_tracking.py"
