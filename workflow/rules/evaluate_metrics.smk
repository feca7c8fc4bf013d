# Metric harness: features once per image set, then distribution (FID/KID + real floor), conditional fidelity and
# memorisation/diversity per generated variant, reconstruction (Cheff Table 2) once, and results/summary.md.
# Every number carries its protocol (backbone, n, resolution, reference split, CI) in its json, table and fragment.

EVAL_VARIANT = "|".join(eval_variants())
# the project's CLIP scores image-text alignment during feature extraction (evaluation.alignment.enabled)
ALIGNMENT_CLIP = ["results/models/clip"] if config["evaluation"]["alignment"]["enabled"] else []


rule extract_real_features:
    input:
        index="results/store/index.parquet",
        evaluator="results/models/evaluator",
        clip=ALIGNMENT_CLIP,
        tracking=ancient("results/tracking/run.json"),
    output:
        features=directory("results/eval/real/features"),
    params:
        store_root=store_root_of_index,
        cfg=rule_section(config, "extract_real_features"),
        resolution=eval_resolution(),
        seed=config["seed"],
    log:
        "results/logs/extract_real_features/extract_real_features.log",
    threads: 2
    script:
        "../scripts/evaluate/extract_features.py"


rule extract_generated_features:
    input:
        store="results/synthetic/{variant}/store",
        evaluator="results/models/evaluator",
        clip=ALIGNMENT_CLIP,
        tracking=ancient("results/tracking/run.json"),
    output:
        features=directory("results/eval/{variant}/features"),
    params:
        cfg=rule_section(config, "extract_generated_features"),
        resolution=eval_resolution(),
    wildcard_constraints:
        variant=EVAL_VARIANT,
    log:
        "results/logs/extract_generated_features/{variant}.log",
    threads: 2
    script:
        "../scripts/evaluate/extract_features.py"


rule evaluate_distribution:
    input:
        real="results/eval/real/features",
        generated="results/eval/{variant}/features",
        tracking=ancient("results/tracking/run.json"),
    output:
        json="results/eval/{variant}/distribution.json",
        table=report(
            "results/eval/{variant}/distribution.html",
            caption="../report/eval_distribution.rst",
            category="3. Evaluation",
            subcategory="Distribution (FID / KID)",
            labels={"variant": "{variant}", "content": "table"},
        ),
        figure=report(
            "results/eval/{variant}/distribution.png",
            caption="../report/eval_distribution.rst",
            category="3. Evaluation",
            subcategory="Distribution (FID / KID)",
            labels={"variant": "{variant}", "content": "figure"},
        ),
        markdown="results/reports/eval/distribution_{variant}.md",
    params:
        cfg=rule_section(config, "evaluate_distribution"),
        seed=config["seed"],
    wildcard_constraints:
        variant=EVAL_VARIANT,
    log:
        "results/logs/evaluate_distribution/{variant}.log",
    threads: 1
    script:
        "../scripts/evaluate/evaluate_distribution.py"


rule evaluate_fidelity:
    input:
        real="results/eval/real/features",
        generated="results/eval/{variant}/features",
        tracking=ancient("results/tracking/run.json"),
    output:
        json="results/eval/{variant}/fidelity.json",
        table=report(
            "results/eval/{variant}/fidelity.html",
            caption="../report/eval_fidelity.rst",
            category="3. Evaluation",
            subcategory="Conditional fidelity",
            labels={"variant": "{variant}", "content": "table"},
        ),
        figure=report(
            "results/eval/{variant}/fidelity.png",
            caption="../report/eval_fidelity.rst",
            category="3. Evaluation",
            subcategory="Conditional fidelity",
            labels={"variant": "{variant}", "content": "AUROC per finding"},
        ),
        grid=report(
            "results/eval/{variant}/real_vs_generated.png",
            caption="../report/eval_real_vs_generated.rst",
            category="2. Generation",
            subcategory="Real vs generated per finding",
            labels={"variant": "{variant}", "content": "sample grid"},
        ),
        markdown="results/reports/eval/fidelity_{variant}.md",
    params:
        cfg=rule_section(config, "evaluate_fidelity"),
        seed=config["seed"],
    wildcard_constraints:
        variant=EVAL_VARIANT,
    log:
        "results/logs/evaluate_fidelity/{variant}.log",
    threads: 1
    script:
        "../scripts/evaluate/evaluate_fidelity.py"


rule evaluate_memorisation:
    input:
        real="results/eval/real/features",
        generated="results/eval/{variant}/features",
        tracking=ancient("results/tracking/run.json"),
    output:
        json="results/eval/{variant}/memorisation.json",
        table=report(
            "results/eval/{variant}/memorisation.html",
            caption="../report/eval_memorisation.rst",
            category="3. Evaluation",
            subcategory="Memorisation and diversity",
            labels={"variant": "{variant}", "content": "table"},
        ),
        histogram=report(
            "results/eval/{variant}/memorisation_distances.png",
            caption="../report/eval_memorisation.rst",
            category="3. Evaluation",
            subcategory="Memorisation and diversity",
            labels={"variant": "{variant}", "content": "distance histogram"},
        ),
        pairs=report(
            "results/eval/{variant}/memorisation_pairs.png",
            caption="../report/eval_memorisation_pairs.rst",
            category="3. Evaluation",
            subcategory="Memorisation and diversity",
            labels={"variant": "{variant}", "content": "closest pairs"},
        ),
        markdown="results/reports/eval/memorisation_{variant}.md",
    params:
        cfg=rule_section(config, "evaluate_memorisation"),
        seed=config["seed"],
    wildcard_constraints:
        variant=EVAL_VARIANT,
    log:
        "results/logs/evaluate_memorisation/{variant}.log",
    threads: 1
    script:
        "../scripts/evaluate/evaluate_memorisation.py"


rule evaluate_reconstruction:
    input:
        index="results/store/index.parquet",
        autoencoder="results/models/autoencoder",
        sr_base="results/models/sr_base",
        sr="results/models/sr",
        tracking=ancient("results/tracking/run.json"),
    output:
        json="results/eval/reconstruction/reconstruction.json",
        table=report(
            "results/eval/reconstruction/reconstruction.html",
            caption="../report/eval_reconstruction.rst",
            category="3. Evaluation",
            subcategory="Reconstruction",
            labels={"content": "table"},
        ),
        figure=report(
            "results/eval/reconstruction/reconstruction.png",
            caption="../report/eval_reconstruction.rst",
            category="3. Evaluation",
            subcategory="Reconstruction",
            labels={"content": "examples"},
        ),
        markdown="results/reports/eval/reconstruction.md",
    params:
        store_root=store_root_of_index,
        cfg=rule_section(config, "evaluate_reconstruction"),
        seed=config["seed"],
        low_res=LOW_RES,
        high_res=HIGH_RES,
    log:
        "results/logs/evaluate_reconstruction/evaluate_reconstruction.log",
    threads: 2
    script:
        "../scripts/evaluate/evaluate_reconstruction.py"


rule write_summary:
    input:
        fragments=summary_fragments,
    output:
        summary="results/summary.md",
    params:
        demo=all(is_demo(s) for s in SOURCES),
        config=rule_section(config, "write_summary", "config"),
    log:
        "results/logs/write_summary/write_summary.log",
    threads: 1
    script:
        "../scripts/evaluate/write_summary.py"


# Re-identification audit (reid.enabled): the Siamese patient verifier (Packhäuser et al. 2022) on the real train
# split, then every generated variant scored against the training images of its prompts.
rule train_reid:
    input:
        index="results/store/index.parquet",
        tracking=ancient("results/tracking/run.json"),
    output:
        model=protected(directory("results/models/reid")),
    params:
        store_root=store_root_of_index,
        resolution=LOW_RES,
        cfg=rule_section(config, "train_reid"),
        seed=config["seed"],
        state_dir="results/state/train_reid",
    log:
        "results/logs/train_reid/train_reid.log",
    threads: 2
    script:
        "../scripts/evaluate/train_reid.py"


rule evaluate_reidentification:
    input:
        index="results/store/index.parquet",
        generated="results/synthetic/{variant}/store",
        model="results/models/reid",
        tracking=ancient("results/tracking/run.json"),
    output:
        json="results/eval/{variant}/reidentification.json",
        table="results/eval/{variant}/reidentification.parquet",
        html=report(
            "results/eval/{variant}/reidentification.html",
            caption="../report/eval_reidentification.rst",
            category="3. Evaluation",
            subcategory="Re-identification",
            labels={"variant": "{variant}", "content": "table"},
        ),
        histogram=report(
            "results/eval/{variant}/reidentification.png",
            caption="../report/eval_reidentification.rst",
            category="3. Evaluation",
            subcategory="Re-identification",
            labels={"variant": "{variant}", "content": "histogram"},
        ),
        markdown="results/reports/eval/reidentification_{variant}.md",
    params:
        store_root=store_root_of_index,
        cfg=rule_section(config, "evaluate_reidentification"),
        seed=config["seed"],
    wildcard_constraints:
        variant=EVAL_VARIANT,
    log:
        "results/logs/evaluate_reidentification/{variant}.log",
    threads: 1
    script:
        "../scripts/evaluate/evaluate_reidentification.py"
