import numpy as np
import pandas as pd
import pytest

from cxrgen.config import validate_config
from cxrgen.evaluate.experiments import (
    LeakageError,
    NotEnoughSynthetic,
    build_arms,
    check_no_leakage,
    most_frequent_findings,
    positives,
    real_rows,
    synthetic_pool,
)
from cxrgen.labels import CHEXPERT_LABELS, LABEL_COLUMNS, label_column


def downstream_cfg(**overrides) -> dict:
    return validate_config({"sources": {"nih": {}}, "downstream": overrides})["downstream"]


def fake_index(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A real index (no pixels needed: set construction never reads images)."""
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.3, 0.05, 0.2, 0.25, 0.05, 0.1, 0.04, 0.03, 0.15, 0.03, 0.18, 0.02, 0.02, 0.3])
    labels = (rng.random((n, 14)) < prevalence).astype(np.float32)
    labels[rng.random(labels.shape) < 0.15] = np.nan
    index = pd.DataFrame(labels, columns=list(LABEL_COLUMNS))
    index.insert(0, "image_id", [f"real-{i:04d}" for i in range(n)])
    index["split"] = np.array(["train"] * 8 + ["val", "test"])[np.arange(n) % 10]
    index["view"] = np.where(np.arange(n) % 7 == 0, "LATERAL", "PA")
    return index


def fake_synthetic(real: pd.DataFrame, n_balanced_per_finding: int = 60) -> pd.DataFrame:
    """train_twins of every real image (including val/test ones, which must be filtered out), test_reports twins of
    the test images, and class_balanced template images (one positive finding each)."""
    twins = real[real["view"] != "LATERAL"].copy()  # the generator makes frontal images
    twins["set"] = np.where(twins["split"] == "test", "test_reports", "train_twins")
    twins["source_image_id"] = twins["image_id"]
    twins["image_id"] = "syn-" + twins["image_id"]
    records = []
    for j in range(len(CHEXPERT_LABELS)):
        for k in range(n_balanced_per_finding):
            labels = dict.fromkeys(LABEL_COLUMNS, np.nan)
            labels[LABEL_COLUMNS[0]] = 0.0
            labels[LABEL_COLUMNS[j]] = 1.0
            records.append({"image_id": f"syn-tpl-{j:02d}-{k:04d}", "set": "class_balanced", "source_image_id": "",
                            **labels})
    synthetic = pd.concat([twins, pd.DataFrame.from_records(records)], ignore_index=True)
    synthetic["split"] = "synthetic"
    return synthetic


@pytest.fixture(scope="module")
def pools():
    index = fake_index()
    cfg = downstream_cfg()
    real = real_rows(index, "train", "results/store", views=cfg["views"])
    pool, excluded = synthetic_pool(fake_synthetic(index), index, "results/synthetic/cheff/store",
                                    cfg["pool_sets"])
    return index, real, pool, excluded


def test_pools_hold_only_train_material(pools):
    index, real, pool, excluded = pools
    assert set(real["split"]) == {"train"} and "LATERAL" not in set(real["view"])
    assert set(pool["set"]) == {"train_twins"} and len(pool) > 0
    split_of = dict(zip(index["image_id"], index["split"], strict=True))
    assert {split_of[s] for s in pool["source_image_id"]} == {"train"}
    assert excluded["prompt_from_held_out"] == ((index["split"] == "val") & (index["view"] != "LATERAL")).sum()  # test twins are another set
    check_no_leakage(pd.concat([real, pool]), index)


def test_leakage_check_catches_test_images_and_test_prompts(pools):
    index, real, pool, _ = pools
    test_row = real_rows(index, "test", "results/store").head(1)
    with pytest.raises(LeakageError, match="not train-split"):
        check_no_leakage(pd.concat([real, test_row]), index)
    sneaky = pool.head(1).copy()
    sneaky["source_image_id"] = test_row["image_id"].iloc[0]
    with pytest.raises(LeakageError, match="prompted from non-train"):
        check_no_leakage(pd.concat([real, sneaky]), index)
    unknown = fake_synthetic(index).head(3).assign(source_image_id="real-9999", set="train_twins")
    kept, excluded = synthetic_pool(unknown, index, "x", ["train_twins"])
    assert kept.empty and excluded["prompt_source_unknown"] == 3


def test_anonymisation_arms_have_equal_size_and_paired_sources(pools):
    index, real, pool, _ = pools
    arms = build_arms("anonymisation", real, pool, downstream_cfg()["anonymisation"], seed=0, real_index=index)
    by = {a.name: a for a in arms}
    n = min(len(real), len(pool))
    assert len(by["real"].rows) == len(by["synthetic"].rows) == n
    assert by["real"].n_synthetic == 0 and by["synthetic"].n_real == 0
    small = build_arms("anonymisation", real, pool, {"size": 50}, seed=0)
    real_ids = set(small[0].rows["image_id"])
    assert len(real_ids) == 50 and set(small[1].rows["source_image_id"]) == real_ids  # paired twins
    with pytest.raises(NotEnoughSynthetic, match="synthetic pool has"):
        build_arms("anonymisation", real, pool.head(10), {"size": 50}, seed=0)


def test_imbalance_balances_the_chosen_findings_exactly(pools):
    index, real, _, _ = pools
    cfg = downstream_cfg()
    pool, _ = synthetic_pool(fake_synthetic(index), index, "syn", cfg["imbalance"]["pool_sets"])
    arms = build_arms("imbalance", real, pool, cfg["imbalance"], seed=1, real_index=index)
    findings = cfg["imbalance"]["findings"]
    assert arms[0].task_findings == arms[1].task_findings == findings
    before, after = positives(arms[0].rows, findings), positives(arms[1].rows, findings)
    assert len(set(before.values())) > 1  # really imbalanced before
    assert set(after.values()) == {max(before.values())}  # every finding at the majority count
    added = arms[1].rows.iloc[len(arms[0].rows):]
    assert len(added) == arms[1].n_synthetic > 0 and list(arms[1].rows["image_id"].head(len(real))) == list(arms[0].rows["image_id"])
    top = most_frequent_findings(real, 5)
    assert "No Finding" not in top and len(top) == 5
    counts = positives(real, [f for f in CHEXPERT_LABELS if f != "No Finding"])
    assert min(counts[f] for f in top) >= max(c for f, c in counts.items() if f not in top)


def test_imbalance_shortfall_is_a_clear_error_or_reported_partial(pools):
    index, real, pool, _ = pools
    twins_only = downstream_cfg(imbalance={"pool_sets": ["train_twins"]})["imbalance"]
    with pytest.raises(NotEnoughSynthetic, match=r"positive for '(Consolidation|Edema|Atelectasis)'.*shortfall"):
        build_arms("imbalance", real, pool.head(40), twins_only, seed=0)
    partial = build_arms("imbalance", real, pool.head(40), {**twins_only, "shortfall": "partial"}, seed=0)
    after = positives(partial[1].rows, twins_only["findings"])
    assert partial[1].n_synthetic > 0 and max(after.values()) == max(positives(real, twins_only["findings"]).values())


@pytest.mark.parametrize("total", [100, 40, None])
def test_scarcity_fractions_are_exact_at_fixed_total(pools, total):
    index, real, pool, _ = pools
    cfg = downstream_cfg(scarcity={"total": total})["scarcity"]
    arms = build_arms("scarcity", real, pool, cfg, seed=2, real_index=index)
    sizes = {len(a.rows) for a in arms}
    assert len(sizes) == 1
    n = sizes.pop()
    assert n == (total or min(len(real), int(len(pool) / 0.95)))
    for arm, fraction in zip(arms, cfg["fractions"], strict=True):
        assert arm.n_synthetic == int(np.floor(fraction * n + 0.5))
        assert arm.rows["image_id"].is_unique
    if total == 100:
        assert [a.n_synthetic for a in arms] == [0, 25, 50, 75, 90, 95]
    smaller, larger = arms[2].rows, arms[3].rows  # nested: 75 % keeps the 50 % arm's synthetic images
    assert set(smaller.loc[smaller["origin"] == "synthetic", "image_id"]) < set(larger["image_id"])
    with pytest.raises(NotEnoughSynthetic, match="needs"):
        build_arms("scarcity", real, pool.head(20), {"fractions": [0.0, 0.5], "total": 100}, seed=0)


def test_low_data_arms(pools):
    index, real, pool, _ = pools
    cfg = downstream_cfg(low_data={"real_fraction": 0.1, "synthetic_images": 30})["low_data"]
    arms = {a.name: a for a in build_arms("low_data", real, pool, cfg, seed=3, real_index=index)}
    assert set(arms) == {"real_100pct", "real_10pct", "real_10pct+synthetic", "synthetic->real_10pct"}
    # pre-train on the mixing arm's synthetic images, fine-tune on the same small real set
    pretrained = arms["synthetic->real_10pct"]
    mix = arms["real_10pct+synthetic"]
    assert pretrained.rows["image_id"].tolist() == arms["real_10pct"].rows["image_id"].tolist()
    assert set(pretrained.pretrain["image_id"]) == set(mix.rows.loc[mix.rows["origin"] == "synthetic", "image_id"])
    assert (pretrained.n_real, pretrained.n_synthetic) == (mix.n_real, mix.n_synthetic)
    assert all(a.pretrain is None for name, a in arms.items() if name != "synthetic->real_10pct")
    without = build_arms("low_data", real, pool, {**cfg, "pretrain_finetune": False}, seed=3)
    assert [a.name for a in without] == ["real_100pct", "real_10pct", "real_10pct+synthetic"]
    assert len(arms["real_100pct"].rows) == len(real)
    n_small = int(np.floor(0.1 * len(real) + 0.5))
    assert arms["real_10pct"].n_real == arms["real_10pct+synthetic"].n_real == n_small
    assert arms["real_10pct+synthetic"].n_synthetic == 30
    assert set(arms["real_10pct"].rows["image_id"]) < set(arms["real_10pct+synthetic"].rows["image_id"])
    everything = build_arms("low_data", real, pool, downstream_cfg()["low_data"], seed=3)
    assert everything[2].n_synthetic == len(pool) and everything[1].n_real == max(1, round(0.01 * len(real)))
    with pytest.raises(NotEnoughSynthetic):
        build_arms("low_data", real, pool, {**cfg, "synthetic_images": len(pool) + 1}, seed=3)


@pytest.mark.parametrize("experiment", ["anonymisation", "imbalance", "scarcity", "low_data"])
def test_sets_are_deterministic_per_seed_and_order_free(pools, experiment):
    index, real, _, _ = pools
    cfg = downstream_cfg()
    pool, _ = synthetic_pool(fake_synthetic(index), index, "syn", ["train_twins", "class_balanced"])
    section = cfg[experiment]
    a = build_arms(experiment, real, pool, section, seed=5)
    b = build_arms(experiment, real.sample(frac=1, random_state=1), pool.sample(frac=1, random_state=2), section,
                   seed=5)
    c = build_arms(experiment, real, pool, section, seed=6)
    for x, y in zip(a, b, strict=True):
        assert x.name == y.name and list(x.rows["image_id"]) == list(y.rows["image_id"])
    if experiment != "imbalance":  # the imbalance real arm is the whole training set for every seed
        assert any(list(x.rows["image_id"]) != list(z.rows["image_id"]) for x, z in zip(a, c, strict=True))


def test_unknown_experiment_names_the_allowed_ones(pools):
    _, real, pool, _ = pools
    with pytest.raises(ValueError, match="allowed"):
        build_arms("pretraining", real, pool, {}, seed=0)
    assert label_column("Pleural Effusion") in real.columns


def test_the_reid_probe_set_never_enters_a_downstream_pool():
    """The re-identification probe (K seeds of labelled train-split prompts, low resolution only) is audit material:
    no pool setting can select it, and the pools of every experiment leave its rows out."""
    index = fake_index()
    synthetic = fake_synthetic(index)
    twins = synthetic[synthetic["set"] == "train_twins"].head(20)
    probe = pd.concat([twins.assign(set="reid_probe", seed=s, image_id="syn-probe-" + twins["source_image_id"]
                                    + f"-s{s}") for s in range(3)], ignore_index=True)
    synthetic = pd.concat([synthetic, probe], ignore_index=True)
    cfg = downstream_cfg()
    for sets in (cfg["pool_sets"], cfg["imbalance"]["pool_sets"], ["train_twins", "class_balanced"]):
        pool, _ = synthetic_pool(synthetic, index, "syn", sets)
        assert len(pool) and not (pool["set"] == "reid_probe").any()
        assert not pool["image_id"].str.startswith("syn-probe-").any()
    for key in ({"pool_sets": ["reid_probe"]}, {"imbalance": {"pool_sets": ["train_twins", "reid_probe"]}}):
        with pytest.raises(ValueError, match="reid_probe"):
            downstream_cfg(**key)
