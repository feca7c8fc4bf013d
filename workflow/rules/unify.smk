# MaCheX unification: one index, patient-wise splits, label policy, duplicates, count reconciliation.


rule unify_store:
    input:
        index_parts=shard_index_parts,
        rejection_parts=shard_rejection_parts,
    output:
        index="results/store/index.parquet",
        rejections="results/store/rejections.parquet",  # shareable: pseudonymised id, source, shard, reason
        rejection_manifest="results/ingest/rejections.parquet",  # ingestion-private: source paths, decoder details
        summary="results/store/summary.json",
        splits=directory("results/store/splits"),
    params:
        label_policy=config["unify"]["label_policy"],
        val_fraction=config["unify"]["splits"]["val_fraction"],
        test_fraction=config["unify"]["splits"]["test_fraction"],
        source_priority=config["unify"]["source_priority"],
        labeler_sources=config["labeler"]["sources"],  # labels from the report labeler (label_source = labeler)
        seed=config["seed"],
    log:
        "results/logs/unify_store/unify_store.log",
    threads: 1
    script:
        "../scripts/unify/unify_store.py"
