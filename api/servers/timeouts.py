"""Stuck transitions: a server whose transition makes no progress within its limit ends.

BUILD (``build_timeout_seconds``), DELETING (``delete_timeout_seconds``) and REBOOT, resizing,
pausing and unpausing (``operation_timeout_seconds``) count from the server's ``updated_at``,
which every transition and every applied observation moves. :func:`sweep` finds the stuck
servers with one indexed query and hands each to ``lifecycle.timed_out``, which owns what
"ending" means (ERROR with a fault, or a finished delete when the host is down) and publishes
it to the subscribers (billing).

The host monitor's task runs the sweep in every API process. Several processes sweeping at once
are safe: each server is locked (host row first) and re-checked before it changes, and the
lifecycle's compare-and-swap turns a lost race into a skipped server.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from api.agent import repository as agent_repository
from api.config import Settings
from api.db import utcnow
from api.errors import Conflict
from api.hosts.service import is_up
from api.models import Host, Server
from api.servers import lifecycle, repository, states

log = logging.getLogger("minicloud.timeouts")

# status or task state -> (the step named in the fault, the setting holding its limit)
_BY_STATUS = {states.BUILD: ("build", "build_timeout_seconds"),
              states.DELETING: ("delete", "delete_timeout_seconds"),
              states.REBOOT: ("reboot", "operation_timeout_seconds")}
_BY_TASK = {states.RESIZING: ("resize", "operation_timeout_seconds"),
            states.PAUSING: ("pause", "operation_timeout_seconds"),
            states.UNPAUSING: ("unpause", "operation_timeout_seconds"),
            states.REBUILDING: ("rebuild", "build_timeout_seconds")}


def _step(server: Server) -> tuple[str, str] | None:
    return _BY_STATUS.get(server.status) or _BY_TASK.get(server.task_state or "")


def sweep(session: Session, settings: Settings, now: datetime | None = None) -> int:
    """End every transition older than its limit; return how many servers were ended.

    ``now`` decides what is stuck (default: the API clock; tests pass a later one). Only
    flushes.
    """
    now = now or utcnow()

    def cutoff(setting: str) -> datetime:
        return now - timedelta(seconds=int(getattr(settings, setting)))

    candidates = repository.stuck_servers(
        session, {st: cutoff(lim) for st, (_, lim) in _BY_STATUS.items()},
        {ts: cutoff(lim) for ts, (_, lim) in _BY_TASK.items()})
    ended = 0
    for candidate in candidates:
        host_id = candidate.host_id
        if host_id is not None:
            agent_repository.lock_host(session, host_id)  # lock order: host, then server
        server = agent_repository.lock_server(session, candidate.id, host_id)
        step = _step(server) if server is not None else None
        if server is None or step is None or server.updated_at >= cutoff(step[1]):
            continue  # it moved on since the query (an agent report, another sweeper)
        host = session.get(Host, host_id) if host_id is not None else None
        limit = int(getattr(settings, step[1]))
        try:
            done = lifecycle.timed_out(session, settings, server, step[0], limit,
                                       host_up=host is not None and is_up(host, settings, now))
        except Conflict:
            continue
        log.warning("server %s: %s timed out after %d s (%s)", server.id, step[0], limit, done)
        ended += 1
    return ended
