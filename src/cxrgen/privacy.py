"""Pseudonymisation. Raw identifiers are replaced by keyed hashes (HMAC-SHA256) as early as the manifest is built;
the salt comes from an environment variable and is never written next to the data."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os

log = logging.getLogger(__name__)

#: Used only when every source is the embedded demo corpus (no real patient data involved).
DEMO_SALT = "cxrgen-demo-corpus-public-salt"


def resolve_salt(salt_env: str, demo_only: bool) -> bytes:
    """The pseudonymisation key. Real data require the env var; the demo falls back to a public salt."""
    value = os.environ.get(salt_env, "")
    if value:
        return value.encode()
    if demo_only:
        log.warning("%s is unset: using the public demo salt (fine for the embedded demo corpus only)", salt_env)
        return DEMO_SALT.encode()
    raise RuntimeError(
        f"environment variable {salt_env} is not set: it holds the secret salt for pseudonymising patient ids of "
        f"real data (config key privacy.salt_env). Set it to a long random string and keep it out of results/."
    )


def pseudonym(salt: bytes, namespace: str, raw_id: str, length: int = 16) -> str:
    """Stable keyed hash of ``raw_id`` within ``namespace`` (e.g. 'mimic/patient')."""
    digest = hmac.new(salt, f"{namespace}\x00{raw_id}".encode(), hashlib.sha256).hexdigest()
    return digest[:length]


AGE_BUCKETS = ((0, 18, "0-17"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 80, "60-79"), (80, 200, "80+"))


def age_bucket(age: float) -> str:
    """Coarse age band (exact ages never leave ingestion)."""
    if age is None or age != age or age < 0:
        return "unknown"
    for low, high, name in AGE_BUCKETS:
        if low <= age < high:
            return name
    return "unknown"
