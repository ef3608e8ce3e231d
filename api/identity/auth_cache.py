"""A short per-process cache of whom a bearer secret authenticates, so most requests cost no
authentication query.

Bounds (also in docs/security.md):

* In the process that made the change, a revocation (logout, token or application credential
  deleted, password change, user disabled or deleted, role changed or removed, project
  deleted) takes effect at once: the change marks its unit of work (:func:`changed`) and
  every cache of the process is emptied when it commits. A lookup that read the database
  before that commit cannot store its (stale) answer afterwards: stores carry the
  invalidation epoch they started in and are dropped when it moved.
* In other API processes an entry lives at most ``auth_cache_seconds`` (default 5 s), so a
  revoked credential is refused everywhere within that time. 0 turns the cache off.
* Only answers are cached, never "unknown secret", so a new credential works at once
  everywhere; the credential's own expiry is checked on every hit.

One cache per engine (:func:`attach`, by ``api.main.create_app``): two apps on two
databases in one process never share an entry.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

T = TypeVar("T")

_CHANGED = "auth_changed"
_lock = threading.Lock()
_epoch = 0
_caches: weakref.WeakSet[AuthCache[Any]] = weakref.WeakSet()
_by_engine: weakref.WeakKeyDictionary[Engine, AuthCache[Any]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class Entry(Generic[T]):
    """A cached answer: who the secret is, until when the credential is valid."""

    value: T
    expires_at: datetime | None
    stored_at: float


class AuthCache(Generic[T]):
    """Secret digest -> answer, each for at most ``ttl`` seconds, at most ``size`` entries."""

    def __init__(self, ttl: float, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: dict[str, Entry[T]] = {}
        with _lock:
            _caches.add(self)

    def get(self, key: str) -> Entry[T] | None:
        """The fresh entry for ``key``, if any."""
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry.stored_at >= self.ttl:
            return None
        return entry

    def put(self, key: str, value: T, expires_at: datetime | None, epoch: int) -> None:
        """Remember ``value`` unless an invalidation happened since ``epoch`` (the lookup may
        have read what was revoked meanwhile)."""
        if self.ttl <= 0:
            return
        with _lock:
            if epoch != _epoch:
                return
            if len(self._entries) >= self.size and key not in self._entries:
                self._entries.pop(next(iter(self._entries)))  # the oldest
            self._entries[key] = Entry(value, expires_at, time.monotonic())

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()


def epoch() -> int:
    """The current invalidation epoch: read it before a lookup, pass it to ``put``."""
    return _epoch


def invalidate() -> None:
    """Empty every cache of this process and make lookups in flight unable to store."""
    global _epoch
    with _lock:
        _epoch += 1
        for cache in list(_caches):
            cache.clear()


def attach(engine: Engine, ttl: float) -> AuthCache[Any]:
    """Give ``engine`` its cache (one per engine)."""
    cache: AuthCache[Any] = AuthCache(ttl)
    _by_engine[engine] = cache
    return cache


def for_session(session: Session) -> AuthCache[Any] | None:
    """The cache of the session's engine (None: no app attached one, nothing is cached)."""
    bind = session.bind
    return _by_engine.get(bind) if isinstance(bind, Engine) else None


def changed(session: Session) -> None:
    """Mark the unit of work as changing who a credential authenticates: every cache of the
    process is emptied now and again when it commits."""
    session.info[_CHANGED] = True
    invalidate()


# After the outermost commit only (SQLAlchemy does not fire it for savepoints). A flag left by
# a rolled-back unit of work costs one more emptying at most.
@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(_CHANGED, False):
        invalidate()

