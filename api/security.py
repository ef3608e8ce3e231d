"""Secrets: slow hashes for passwords, fast digests for high-entropy tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()

# A random token carries 256 bits of entropy, so a plain SHA-256 digest cannot be brute-forced
# and lets every request find its credential with one indexed lookup.
TOKEN_PREFIX = "mct_"
APP_CREDENTIAL_PREFIX = "mcac_"
HOST_CREDENTIAL_PREFIX = "mch_"
ENROLLMENT_PREFIX = "mce_"


def hash_password(password: str) -> str:
    """Argon2id hash of a password."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches ``password_hash``."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_secret(prefix: str) -> str:
    """A fresh random secret, prefixed so a leaked one is recognisable."""
    return prefix + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """The SHA-256 hex digest stored in place of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(a, b)
