"""The host monitor: servers of a host that stopped heartbeating stop accruing compute.

A host is down once ``settings.host_down_after_seconds`` pass without a heartbeat. The monitor
hands each down host to ``lifecycle.host_down``, which publishes ``host_down`` for its servers;
billing (a lifecycle subscriber) records a ``host_down`` entry for each server it still bills as
running, at the last sign of life that saw it running. When the host comes back and its agent
reports the server running again, billing records a new ``running`` (billing resumes).

The same task ends transitions stuck beyond their limits (``api.servers.timeouts``) and
evacuates hosts down beyond their grace when automatic evacuation is on for them
(``api.evacuation.service.auto_sweep``).

Every API process runs :func:`run` in its lifespan. Several processes sweeping at once are
safe: the idempotency key ``host_down:<server>:<time>`` lets one entry in, the others change
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from api.config import Settings
from api.db import session_scope, utcnow
from api.evacuation import service as evacuation
from api.hosts.service import is_up
from api.mobility import service as mobility
from api.servers import lifecycle, timeouts
from api.usage import repository

log = logging.getLogger("minicloud.host_monitor")


def sweep(session: Session, settings: Settings, now: datetime | None = None) -> int:
    """Tell the lifecycle about every down host (``lifecycle.host_down``); return how many
    entries its subscribers recorded (billing: ``host_down`` for servers billed as running).

    ``now`` decides which hosts are down (default: the API clock; tests pass a later one).
    Only flushes.
    """
    now = now or utcnow()
    recorded = 0
    for host in repository.hosts_silent_since(session, _cutoff(settings, now)):
        if host.last_heartbeat_at is not None and not is_up(host, settings, now):
            recorded += lifecycle.host_down(session, host)
    return recorded


def _cutoff(settings: Settings, now: datetime) -> datetime:
    """Hosts without a heartbeat since this are down (``hosts.service.is_up``)."""
    return now - timedelta(seconds=settings.host_down_after_seconds)


def sweep_once(factory: sessionmaker[Session], settings: Settings) -> int:
    """One sweep in its own unit of work (committed), then the stuck-transition sweep
    (``api.servers.timeouts``) in another; returns the entries recorded."""
    recorded = 0
    for session in session_scope(factory):
        recorded = sweep(session, settings)
    for session in session_scope(factory):
        timeouts.sweep(session, settings)
    for session in session_scope(factory):
        mobility.sweep_stuck(session, settings)
        # Automatic evacuation of hosts down beyond their grace (off unless configured).
        # Only a down host is evacuated: the others are not even loaded.
        evacuation.auto_sweep(session, settings, list(
            repository.hosts_silent_since(session, _cutoff(settings, utcnow()))))
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
        except PoolTimeout:  # overload, not a fault: the next sweep retries
            log.warning("host monitor sweep skipped: no database connection free")
        except Exception:  # a database hiccup must not end the monitor
            log.exception("host monitor sweep failed")
