import pytest

from cxrgen.privacy import DEMO_SALT, MIN_SALT_LENGTH, age_bucket, pseudonym, resolve_salt


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
