"""Secrets: slow hashes for passwords, fast digests for high-entropy tokens."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()

# Argon2 is deliberately slow and memory hungry. Every hash runs in this small pool, never in
# the server's shared request threads, so a flood of logins queues here while every other
# route keeps its threads (each hash is ~64 MiB, so the pool also bounds memory).
HASH_WORKERS = 2
_hash_pool = ThreadPoolExecutor(max_workers=HASH_WORKERS, thread_name_prefix="argon2")

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


def hash_password_bounded(password: str) -> str:
    """``hash_password`` in the bounded hashing pool (blocks the calling thread)."""
    return _hash_pool.submit(hash_password, password).result()


def verify_password_bounded(password_hash: str, password: str) -> bool:
    """``verify_password`` in the bounded hashing pool (blocks the calling thread)."""
    return _hash_pool.submit(verify_password, password_hash, password).result()


async def verify_password_async(password_hash: str, password: str) -> bool:
    """``verify_password`` in the bounded hashing pool, awaited without holding a thread."""
    return await asyncio.wrap_future(_hash_pool.submit(verify_password, password_hash, password))


def new_secret(prefix: str) -> str:
    """A fresh random secret, prefixed so a leaked one is recognisable."""
    return prefix + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """The SHA-256 hex digest stored in place of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(a, b)
