"""The host monitor: servers of a host that stopped heartbeating stop accruing compute.

A host is down once ``settings.host_down_after_seconds`` pass without a heartbeat. Each of its
servers the ledger still bills as running gets a ``host_down`` entry at the last sign of life
that saw it running: the host's last heartbeat, or the server's own last ledger entry when an
agent report arrived after that heartbeat. When the host comes back and its agent reports the
server running again, the observation hook records a new ``running`` (billing resumes).

Every API process runs :func:`run` in its lifespan. Several processes sweeping at once are
safe: the idempotency key ``host_down:<server>:<time>`` lets one entry in, the others change
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from api.config import Settings
from api.db import session_scope, utcnow
from api.hosts.service import is_up
from api.usage import ledger, repository
from api.usage.rules import from_epoch

log = logging.getLogger("minicloud.host_monitor")


def sweep(session: Session, settings: Settings, now: datetime | None = None) -> int:
    """Record ``host_down`` for the running servers of every down host; return how many.

    ``now`` decides which hosts are down (default: the API clock; tests pass a later one).
    Only flushes.
    """
    now = now or utcnow()
    recorded = 0
    for host in repository.hosts_with_heartbeat(session):
        if host.last_heartbeat_at is None or is_up(host, settings, now):
            continue
        for server, summary in repository.running_servers_on(session, host.id):
            at = max(host.last_heartbeat_at, from_epoch(summary.last_s))
            entry = ledger.record(
                session, kind="host_down", project_id=server.project_id, server_id=server.id,
                vcpus=server.vcpus, ram_mb=server.ram_mb, disk_gb=server.disk_gb, at=at,
                idempotency_key=f"host_down:{server.id}:{at.isoformat()}", source="api",
                reason=f"host {host.name} missed its heartbeats", flavor_id=server.flavor_id)
            if entry is not None:
                recorded += 1
                log.info("host %s down: compute of server %s stops at %s",
                         host.name, server.id, at.isoformat())
    return recorded


def sweep_once(factory: sessionmaker[Session], settings: Settings) -> int:
    """One sweep in its own unit of work (committed); returns the entries recorded."""
    recorded = 0
    for session in session_scope(factory):
        recorded = sweep(session, settings)
    return recorded


async def run(factory: sessionmaker[Session], settings: Settings, stop: asyncio.Event) -> None:
    """Sweep every ``heartbeat_interval_seconds`` until ``stop`` is set.

    A sweep runs in a worker thread (the database calls block); a failed sweep is logged and
    the next one retries. Setting ``stop`` ends the loop after any sweep in flight, so the
    engine is never disposed under a running sweep.
    """
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.heartbeat_interval_seconds)
        if stop.is_set():
            break
        try:
            await asyncio.to_thread(sweep_once, factory, settings)
        except Exception:  # a database hiccup must not end the monitor
            log.exception("host monitor sweep failed")
