import pandas as pd
import pytest

from cxrgen.privacy import DEMO_SALT, MIN_SALT_LENGTH, age_bucket, pseudonym, resolve_salt
from cxrgen.sources.base import get_adapter
from cxrgen.stages.build_demo_sources import build_demo_sources
from cxrgen.stages.index_source import index_source
from cxrgen.stages.ingest_shard import ingest_shard
from cxrgen.stages.report_data import report_data
from cxrgen.stages.unify_store import unify_store


def test_pseudonym_is_stable_keyed_and_namespaced():
    a = pseudonym(b"salt-1", "mimic/patient", "10000032")
    assert a == pseudonym(b"salt-1", "mimic/patient", "10000032")
    assert a != pseudonym(b"salt-2", "mimic/patient", "10000032")
    assert a != pseudonym(b"salt-1", "chexpert/patient", "10000032")
    assert "10000032" not in a and len(a) == 16


def test_salt_required_for_real_data(monkeypatch):
    monkeypatch.delenv("CXRGEN_TEST_SALT", raising=False)
    with pytest.raises(RuntimeError, match="CXRGEN_TEST_SALT"):
        resolve_salt("CXRGEN_TEST_SALT", demo_only=False)
    assert resolve_salt("CXRGEN_TEST_SALT", demo_only=True) == DEMO_SALT.encode()
    monkeypatch.setenv("CXRGEN_TEST_SALT", "s" * MIN_SALT_LENGTH)
    assert resolve_salt("CXRGEN_TEST_SALT", demo_only=False) == b"s" * MIN_SALT_LENGTH


def test_real_data_salt_needs_the_minimum_length(monkeypatch):
    assert MIN_SALT_LENGTH >= 32
    short = "s" * (MIN_SALT_LENGTH - 1)
    monkeypatch.setenv("CXRGEN_TEST_SALT", short)
    with pytest.raises(RuntimeError, match=rf"CXRGEN_TEST_SALT holds {len(short)} characters.*at least "
                                           rf"{MIN_SALT_LENGTH} characters.*privacy\.salt_env"):
        resolve_salt("CXRGEN_TEST_SALT", demo_only=False)
    assert resolve_salt("CXRGEN_TEST_SALT", demo_only=True) == short.encode()  # demo data: any salt
    monkeypatch.delenv("CXRGEN_TEST_SALT")
    assert len(DEMO_SALT) < MIN_SALT_LENGTH  # the public demo salt is for demo-only runs, never real data
    with pytest.raises(RuntimeError, match=f"at least {MIN_SALT_LENGTH} characters"):
        resolve_salt("CXRGEN_TEST_SALT", demo_only=False)


@pytest.mark.parametrize(("age", "bucket"), [(0, "0-17"), (17.9, "0-17"), (18, "18-39"), (64, "60-79"),
                                              (95, "80+"), (float("nan"), "unknown"), (-1, "unknown")])
def test_age_bucket(age, bucket):
    assert age_bucket(age) == bucket


# ---- the data stages, chained on a small demo corpus: no raw dataset identifier outside ingestion ---------------
CHAIN_SOURCES = ("mimic", "chexpert", "nih")  # their paths embed subject/study/patient ids


def _raw_identifiers(root, source) -> set[str]:
    """Raw ids as the source adapter reads them from the demo source's own metadata (patient/study ids, image keys,
    source-relative paths); ids under 6 characters (NIH's integer Patient ID) also occur as plain numbers."""
    manifest = get_adapter(source)(root, {})
    values = set()
    for column in ("patient_id", "study_id", "source_key", "rel_path"):
        values |= set(manifest[column].dropna().astype(str))
    return {v for v in values if len(v) >= 6}


@pytest.fixture(scope="module")
def data_chain(tmp_path_factory):
    out = tmp_path_factory.mktemp("chain")
    results = out / "results"
    store, private = results / "store", results / "ingest"
    identifiers, index_parts, rejection_parts = {}, [], []
    for source in CHAIN_SOURCES:
        root = results / "sources" / source
        build_demo_sources(source, root, results / "sources/_meta" / f"{source}.json", n_images=12, seed=3,
                           downscale=12, bad_fraction=0.25)
        identifiers[source] = _raw_identifiers(root, source)
        manifest = private / source / "manifest.parquet"
        index_source(source, root, 1, salt_env="CXRGEN_TEST_SALT_NEVER_SET", demo_only=True, options={},
                     manifest_path=manifest)
        index_parts.append(private / source / "shard-0000.index.parquet")
        rejection_parts.append(private / source / "shard-0000.rejections.parquet")
        ingest_shard(manifest, source=source, source_root=root, shard=0, store_root=store, resolutions=[32],
                     geometry="pad", intensity="voi", target_spacing_mm=None, canvas_mm=None,
                     index_path=index_parts[-1], rejections_path=rejection_parts[-1],
                     stats_path=private / source / "shard-0000.stats.json")
    unify_store(index_parts, rejection_parts, label_policy={"uncertain": "ones", "blank": "zeros"}, val_fraction=0.2,
                test_fraction=0.2, source_priority=list(CHAIN_SOURCES), seed=0, labeler_sources=[],
                index_path=store / "index.parquet", rejections_path=store / "rejections.parquet",
                rejection_manifest_path=private / "rejections.parquet", summary_path=store / "summary.json",
                splits_dir=store / "splits")
    reports = results / "reports/data"
    report_data(store / "index.parquet", store / "rejections.parquet", store / "summary.json", store_root=store,
                resolution=32, html_path=reports / "data_report.html", grid_path=reports / "sample_grid.png",
                markdown_path=reports / "data_report.md")
    return results, identifiers


def _text_of(path) -> str:
    if path.suffix == ".parquet":
        return pd.read_parquet(path).to_csv()
    if path.suffix in {".bin", ".png"}:
        return ""  # pixels written by our own encoder
    return path.read_text(errors="ignore")


def test_no_raw_source_identifier_leaves_ingestion(data_chain):
    results, identifiers = data_chain
    assert all(len(ids) > 10 for ids in identifiers.values())
    shareable = [p for d in ("store", "reports") for p in sorted((results / d).rglob("*")) if p.is_file()]
    assert {"index.parquet", "rejections.parquet", "summary.json", "test.txt", "data_report.md"} <= {
        p.name for p in shareable}
    for path in shareable:
        text = _text_of(path)
        for source, ids in identifiers.items():
            leaked = sorted(i for i in ids if i in text)
            assert not leaked, f"{path.relative_to(results)}: raw {source} identifiers {leaked[:3]}"
    # the search finds them where they belong: the ingestion-private manifests and rejection manifest
    manifest = pd.read_parquet(results / "ingest/rejections.parquet")
    assert len(manifest) == len(pd.read_parquet(results / "store/rejections.parquet")) > 0
    assert any(i in set(manifest["rel_path"]) for ids in identifiers.values() for i in ids)
    for source, ids in identifiers.items():
        assert any(i in _text_of(results / "ingest" / source / "manifest.parquet") for i in ids), source
