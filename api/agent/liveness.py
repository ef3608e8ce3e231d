"""Coalesced heartbeats: a heartbeat that changes nothing but the host's clock writes nothing.

A heartbeat of a host that is up, whose observations all confirm what the database already
holds, would otherwise be one write transaction per host per interval: on SQLite each queues
for the single writer beside the creates. Instead its time is kept here, in the process, and
:func:`run` writes every kept time in one statement (``executemany``) per flush period
(``heartbeat_flush_seconds``, default 1 s). The database's ``last_heartbeat_at`` then lags the
agent by at most that period, far inside ``host_down_after_seconds``; a heartbeat that changes
anything else, or that follows a long silence, is written in its own unit of work as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from datetime import datetime

from fastapi.concurrency import run_in_threadpool

from api.agent import repository
from api.db import SessionFactory, session_scope

log = logging.getLogger("minicloud.agent.liveness")


class HeartbeatBuffer:
    """Host id -> the newest heartbeat time not yet written (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, datetime] = {}

    def record(self, host_id: str, at: datetime) -> None:
        """Keep ``at`` for the next flush (the newest time wins)."""
        with self._lock:
            if self._pending.get(host_id, at) <= at:
                self._pending[host_id] = at

    def forget(self, host_id: str) -> None:
        """Drop a kept time (its unit of work writes a newer one itself)."""
        with self._lock:
            self._pending.pop(host_id, None)

    def take(self) -> dict[str, datetime]:
        """Every kept time, emptying the buffer."""
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
        for host_id, at in pending.items():
            buffer.record(host_id, at)
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


__all__ = ["HEARTBEATS", "HeartbeatBuffer", "flush", "run"]
