# In-domain evaluator (DenseNet from scratch on the real train split) and the downstream augmentation experiments
# (MedCoDi-M §4.5, Diff-CXR): one job per {experiment}/{seed} training every arm, then one aggregated table + figure.


rule train_evaluator:
    input:
        index="results/store/index.parquet",
        tracking=ancient("results/tracking/run.json"),
    output:
        model=protected(directory("results/models/evaluator")),
    params:
        store_root=store_root_of_index,
        resolution=LOW_RES,
        cfg=rule_section(config, "train_evaluator"),
        seed=config["seed"],
        state_dir="results/state/train_evaluator",
    log:
        "results/logs/train_evaluator/train_evaluator.log",
    threads: 2
    script:
        "../scripts/evaluate/train_evaluator.py"


rule run_downstream:
    input:
        index="results/store/index.parquet",
        synthetic=downstream_synthetic_store,
        tracking=ancient("results/tracking/run.json"),
    output:
        metrics="results/downstream/{experiment}/{seed}/metrics.json",
        curves="results/downstream/{experiment}/{seed}/curves.png",
    params:
        store_root=store_root_of_index,
        resolution=LOW_RES,
        cfg=downstream_cfg,
        evaluator_cfg=rule_section(config, "run_downstream", "evaluator_cfg"),
        base_seed=config["seed"],
        state_dir=downstream_state_dir,
    wildcard_constraints:
        experiment="|".join(config["downstream"]["experiments"]),
        seed=r"\d+",
    log:
        "results/logs/run_downstream/{experiment}/{seed}.log",
    threads: 1
    script:
        "../scripts/evaluate/run_downstream.py"


rule report_downstream:
    input:
        metrics=downstream_metrics_files,
    output:
        markdown="results/reports/downstream/downstream.md",
        table="results/reports/downstream/downstream.json",
        figure=report(
            "results/reports/downstream/downstream.png",
            caption="../report/downstream.rst",
            category="4. Downstream",
        ),
    params:
        demo=all(is_demo(s) for s in SOURCES),
    log:
        "results/logs/report_downstream/report_downstream.log",
    threads: 1
    script:
        "../scripts/evaluate/report_downstream.py"
