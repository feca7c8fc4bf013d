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
#: Shortest secret salt accepted for real data: a short key can be brute-forced offline against the keyed hashes of
#: guessable ids (MIMIC subject ids are 8 digits), which would undo the pseudonymisation.
MIN_SALT_LENGTH = 32


def resolve_salt(salt_env: str, demo_only: bool) -> bytes:
    """The pseudonymisation key. Real data require the env var, holding at least :data:`MIN_SALT_LENGTH`
    characters; the demo falls back to a public salt."""
    value = os.environ.get(salt_env, "")
    if demo_only:
        if not value:
            log.warning("%s is unset: using the public demo salt (fine for the embedded demo corpus only)", salt_env)
        return (value or DEMO_SALT).encode()
    if not value:
        raise RuntimeError(
            f"environment variable {salt_env} is not set: it holds the secret salt for pseudonymising patient ids of "
            f"real data (config key privacy.salt_env names the variable). Set it to a random string of at least "
            f"{MIN_SALT_LENGTH} characters, e.g. export {salt_env}=\"$(openssl rand -hex 32)\", and keep it out of "
            f"results/.")
    if len(value) < MIN_SALT_LENGTH:
        raise RuntimeError(
            f"environment variable {salt_env} holds {len(value)} characters: pseudonymising real data needs a secret "
            f"salt of at least {MIN_SALT_LENGTH} characters (config key privacy.salt_env names the variable), e.g. "
            f"export {salt_env}=\"$(openssl rand -hex 32)\". A changed salt changes every pseudonymised id.")
    return value.encode()


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
