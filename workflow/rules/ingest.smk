# Ingestion: adapter manifest per source (no pixels), then a fixed number of shards per source.


rule index_source:
    input:
        demo_source_dir,
    output:
        manifest="results/ingest/{source}/manifest.parquet",
    params:
        root=source_root_param,
        shards=shard_count_param,
        options=adapter_options_param,
        salt_env=config["privacy"]["salt_env"],
        demo_only=is_demo_param,
    log:
        "results/logs/index_source/{source}.log",
    threads: 1
    script:
        "../scripts/ingest/index_source.py"


rule ingest_shard:
    input:
        manifest="results/ingest/{source}/manifest.parquet",
    output:
        index="results/ingest/{source}/shard-{shard}.index.parquet",
        rejections="results/ingest/{source}/shard-{shard}.rejections.parquet",
        stats="results/ingest/{source}/shard-{shard}.stats.json",
        blobs=expand("results/store/{res}px/{{source}}/shard-{{shard}}.bin", res=RESOLUTIONS),
    params:
        root=source_root_param,
        store_root=store_root_of_blobs,
        resolutions=RESOLUTIONS,
        geometry=config["ingest"]["geometry"],
        canvas_mm=config["ingest"]["canvas_mm"],
        intensity=config["ingest"]["intensity"],
        reduced_decode=config["ingest"]["reduced_decode"],
        target_spacing_mm=target_spacing_param,
    log:
        "results/logs/ingest_shard/{source}-{shard}.log",
    threads: 1  # >1 (profile `set-threads`) decodes in that many processes, same bytes
    script:
        "../scripts/ingest/ingest_shard.py"
