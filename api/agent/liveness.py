"""Coalesced heartbeats: a heartbeat that changes nothing but the host's clock writes nothing.

A heartbeat of a host that is up, whose observations all confirm what the database already
holds, would otherwise be one write transaction per host per interval: on SQLite each queues
for the single writer beside the creates. Instead its time is kept here, in the process, and
:func:`run` writes every kept time in one statement (``executemany`` on SQLite, a single
execution over arrays on PostgreSQL: ``repository.record_heartbeats``) per flush period
(``heartbeat_flush_seconds``, default 1 s). The database's ``last_heartbeat_at`` then lags the
agent by at most that period, far inside ``host_down_after_seconds``; a heartbeat that changes
anything else, or that follows a long silence, is written in its own unit of work as before.

Each kept time carries the digest of the credential the heartbeat presented, and the flush
writes it only while the host still has that credential: a heartbeat accepted just before a
rotation or revocation (in this process or another) never keeps the host alive after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi.concurrency import run_in_threadpool

from api.agent import repository
from api.db import SessionFactory, session_scope

log = logging.getLogger("minicloud.agent.liveness")


@dataclass(frozen=True)
class Pending:
    """What a host's coalesced heartbeats leave to write: the digest of the credential the
    newest one presented, the newest heartbeat time, the newest loop progress the agent
    reported (None: none reported) and when its pass count last moved (None: it did not move
    since the stored one)."""

    digest: str
    at: datetime
    progress: dict[str, Any] | None = None
    progress_at: datetime | None = None


class HeartbeatBuffer:
    """Host id -> what its heartbeats not yet written carried (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, Pending] = {}

    def record(self, host_id: str, digest: str, at: datetime,
               progress: dict[str, Any] | None = None,
               progress_at: datetime | None = None) -> None:
        """Keep a heartbeat for the next flush (the newest time, credential and progress
        win; a moved pass count is kept until written)."""
        with self._lock:
            old = self._pending.get(host_id)
            if old is not None and old.at > at:
                return
            if old is not None and progress_at is None:
                progress_at = old.progress_at
            if old is not None and progress is None:
                progress = old.progress
            self._pending[host_id] = Pending(digest, at, progress, progress_at)

    def forget(self, host_id: str) -> None:
        """Drop a kept time (its unit of work writes a newer one itself)."""
        with self._lock:
            self._pending.pop(host_id, None)

    def take(self) -> dict[str, Pending]:
        """Everything kept, emptying the buffer."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending


HEARTBEATS = HeartbeatBuffer()
"""The buffer of this process."""


def flush(maker: SessionFactory, buffer: HeartbeatBuffer = HEARTBEATS) -> int:
    """Write every kept heartbeat time in one statement; returns how many hosts.

    On failure the times go back into the buffer (unless newer ones arrived) and the error
    propagates.
    """
    pending = buffer.take()
    if not pending:
        return 0
    try:
        for session in session_scope(maker):
            repository.record_heartbeats(session, pending)
    except Exception:
        for host_id, kept in pending.items():
            buffer.record(host_id, kept.digest, kept.at, kept.progress, kept.progress_at)
        raise
    return len(pending)


async def run(maker: SessionFactory, period: float, stop: asyncio.Event,
              buffer: HeartbeatBuffer = HEARTBEATS) -> None:
    """Flush every ``period`` seconds until ``stop`` is set, then once more."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period)
        try:
            await run_in_threadpool(flush, maker, buffer)
        except Exception:  # the database is busy or away: the next period tries again
            log.warning("could not write the coalesced heartbeats", exc_info=True)


__all__ = ["HEARTBEATS", "HeartbeatBuffer", "Pending", "flush", "run"]
