# Generative core (Cheff): contrastive pretraining, autoencoder, cached latents, report-conditioned LDM, SR cascade.
# Only final weights are outputs (protected); resumable state lives in results/state/<rule> (params.state_dir).


rule train_clip:
    input:
        index="results/store/index.parquet",
        tracking=ancient("results/tracking/run.json"),
    output:
        model=protected(directory("results/models/clip")),
    params:
        store_root=store_root_of_index,
        resolution=LOW_RES,
        cfg=rule_section(config, "train_clip"),
        seed=config["seed"],
        state_dir="results/state/train_clip",
    log:
        "results/logs/train_clip/train_clip.log",
    # the Diff-CXR chain (CLIP -> AVA-TLS -> LDM -> DKIM -> generation) is the DAG's longest path: start it first
    priority: 10
    threads: 2
    script:
        "../scripts/train/train_clip.py"


rule train_clip_avatls:
    input:
        index="results/store/index.parquet",
        baseline="results/models/clip",
        tracking=ancient("results/tracking/run.json"),
    output:
        model=protected(directory("results/models/clip_avatls")),
    params:
        store_root=store_root_of_index,
        resolution=LOW_RES,
        cfg=rule_section(config, "train_clip_avatls"),
        seed=config["seed"],
        state_dir="results/state/train_clip_avatls",
    log:
        "results/logs/train_clip_avatls/train_clip_avatls.log",
    priority: 10  # the Diff-CXR chain, the DAG's longest path (see train_clip)
    threads: 2
    script:
        "../scripts/train/train_clip_avatls.py"


rule train_autoencoder:
    input:
        unpack(autoencoder_inputs),
    output:
        model=protected(directory("results/models/autoencoder")),
    params:
        store_root=store_root_of_index,
        resolution=LOW_RES,
        cfg=rule_section(config, "train_autoencoder"),
        seed=config["seed"],
        state_dir="results/state/train_autoencoder",
    log:
        "results/logs/train_autoencoder/train_autoencoder.log",
    threads: 2
    script:
        "../scripts/train/train_autoencoder.py"


rule cache_latents:
    input:
        index="results/store/index.parquet",
        autoencoder="results/models/autoencoder",
    output:
        latents=directory("results/latents"),
    params:
        store_root=store_root_of_index,
        resolution=LOW_RES,
    log:
        "results/logs/cache_latents/cache_latents.log",
    threads: 2
    script:
        "../scripts/train/cache_latents.py"


rule train_ldm:
    input:
        unpack(train_ldm_inputs),
    output:
        model=protected(directory("results/models/ldm/{ldm_variant}")),
    params:
        cfg=train_ldm_cfg,
        seed=config["seed"],
        state_dir=ldm_state_dir,
    log:
        "results/logs/train_ldm/{ldm_variant}.log",
    priority: 10  # the Diff-CXR chain, the DAG's longest path (see train_clip)
    threads: 2
    script:
        "../scripts/train/train_ldm.py"


rule train_sr:
    input:
        index="results/store/index.parquet",
        tracking=ancient("results/tracking/run.json"),
    output:
        model=protected(directory("results/models/sr_base")),
    params:
        store_root=store_root_of_index,
        low_res=LOW_RES,
        high_res=HIGH_RES,
        cfg=rule_section(config, "train_sr"),
        seed=config["seed"],
        state_dir="results/state/train_sr",
    log:
        "results/logs/train_sr/train_sr.log",
    threads: 2
    script:
        "../scripts/train/train_sr.py"


rule finetune_sr:
    input:
        index="results/store/index.parquet",
        base="results/models/sr_base",
        autoencoder="results/models/autoencoder",
        tracking=ancient("results/tracking/run.json"),
    output:
        model=protected(directory("results/models/sr")),
    params:
        store_root=store_root_of_index,
        low_res=LOW_RES,
        high_res=HIGH_RES,
        cfg=rule_section(config, "finetune_sr"),
        seed=config["seed"],
        state_dir="results/state/finetune_sr",
    log:
        "results/logs/finetune_sr/finetune_sr.log",
    threads: 2
    script:
        "../scripts/train/train_sr.py"
