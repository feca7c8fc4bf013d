import pytest

from cxrgen.privacy import DEMO_SALT, age_bucket, pseudonym, resolve_salt


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
    monkeypatch.setenv("CXRGEN_TEST_SALT", "s3cret")
    assert resolve_salt("CXRGEN_TEST_SALT", demo_only=False) == b"s3cret"


@pytest.mark.parametrize(("age", "bucket"), [(0, "0-17"), (17.9, "0-17"), (18, "18-39"), (64, "60-79"),
                                              (95, "80+"), (float("nan"), "unknown"), (-1, "unknown")])
def test_age_bucket(age, bucket):
    assert age_bucket(age) == bucket
