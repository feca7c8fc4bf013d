# Diff-CXR conditioning mechanisms (arXiv 2410.20165 §3): the AVA-TLS retrieval fragment (the squeezed CLIP itself is
# rule train_clip_avatls in train.smk) and DKIM, the disease-knowledge adapter trained on a frozen LDM (stage 2).


rule report_avatls:
    input:
        baseline="results/models/clip",
        avatls="results/models/clip_avatls",
    output:
        report="results/reports/diffcxr/avatls.md",
    log:
        "results/logs/report_avatls/report_avatls.log",
    threads: 1
    script:
        "../scripts/report/report_avatls.py"


rule train_dkim:
    input:
        unpack(train_dkim_inputs),
    output:
        model=protected(directory("results/models/dkim/{ldm_variant}")),
    params:
        cfg=rule_section(config, "train_dkim"),
        ldm_cfg=rule_section(config, "train_dkim", "ldm_cfg"),
        seed=config["seed"],
        state_dir=dkim_state_dir,
    log:
        "results/logs/train_dkim/{ldm_variant}.log",
    priority: 10  # the Diff-CXR chain, the DAG's longest path (see train_clip)
    threads: 2
    script:
        "../scripts/train/train_dkim.py"
