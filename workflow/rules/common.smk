# Config validation (JSON schema with defaults; errors name the key and the allowed values) and path helpers.
from pathlib import Path

from cxrgen.config import enabled_sources, validate_config

config.update(validate_config(config))

SOURCES = enabled_sources(config)
RESOLUTIONS = config["ingest"]["resolutions"]
LOW_RES, HIGH_RES = min(RESOLUTIONS), max(RESOLUTIONS)  # Cheff: LDM/AE at x_LR (256), SR x_LR -> x_HR (1024)


wildcard_constraints:
    source="|".join(SOURCES),
    shard=r"\d{4}",


def is_demo(source):
    return config["sources"][source]["root"] is None


def source_root(source):
    root = config["sources"][source]["root"]
    return f"results/sources/{source}" if root is None else root


def shard_ids(source):
    return [f"{i:04d}" for i in range(config["sources"][source]["shards"])]


def demo_marker(wildcards):
    return [f"results/sources/_meta/{wildcards.source}.json"] if is_demo(wildcards.source) else []


def shard_index_parts(wildcards=None):
    return [f"results/ingest/{s}/shard-{i}.index.parquet" for s in SOURCES for i in shard_ids(s)]


def shard_rejection_parts(wildcards=None):
    return [f"results/ingest/{s}/shard-{i}.rejections.parquet" for s in SOURCES for i in shard_ids(s)]


def final_targets():
    return [
        "results/store/index.parquet",
        "results/store/summary.json",
        "results/reports/data/data_report.html",
        "results/synthetic/sample_grid.png",
    ]


# --- params functions (named, so rules stay declarative) ---
def demo_out_root(wildcards):
    return f"results/sources/{wildcards.source}"


def demo_image_count(wildcards):
    return config["demo"]["images"].get(wildcards.source, 0)


def source_root_param(wildcards):
    return source_root(wildcards.source)


def shard_count_param(wildcards):
    return config["sources"][wildcards.source]["shards"]


def adapter_options_param(wildcards):
    return config["sources"][wildcards.source]["options"]


def is_demo_param(wildcards):
    return is_demo(wildcards.source)


def target_spacing_param(wildcards):
    return config["sources"][wildcards.source]["target_spacing_mm"]


def autoencoder_inputs(wildcards):
    inputs = {"index": "results/store/index.parquet", "tracking": ancient("results/tracking/run.json")}
    if config["autoencoder"].get("perceptual") == "clip":
        inputs["clip"] = "results/models/clip"
    return inputs


def store_root_of_index(wildcards, input):
    return str(Path(input.index).parent)


def store_root_of_blobs(wildcards, output):
    return str(Path(output.blobs[0]).parents[2])  # results/store/<res>px/<source>/shard-NNNN.bin


def results_dir_of_tracking(wildcards, output):
    return str(Path(output[0]).parents[1])  # results/tracking/run.json
