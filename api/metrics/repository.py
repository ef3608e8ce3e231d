"""The one query behind the host gauges of ``/metrics``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.models import Host


def host_counts(session: Session, up_since: datetime,
                progress_since: datetime) -> dict[tuple[bool, str], int]:
    """(enabled, state) -> number of hosts; state ``up`` means a heartbeat at or after
    ``up_since``, ``degraded`` an up host whose loop last progressed before
    ``progress_since`` (``api.hosts.service.host_state``), else ``down``.

    SELECT enabled, last_heartbeat_at >= :up_since,
           loop_progress_at < :progress_since, count(*) FROM hosts GROUP BY 1, 2, 3
    """
    up = func.coalesce(Host.last_heartbeat_at >= up_since, False)
    stuck = func.coalesce(Host.loop_progress_at < progress_since, False)
    rows = session.execute(
        select(Host.enabled, up, stuck, func.count()).group_by(Host.enabled, up, stuck))
    counts: dict[tuple[bool, str], int] = {}
    for enabled, is_up, is_stuck, n in rows:
        state = "down" if not is_up else "degraded" if is_stuck else "up"
        key = (bool(enabled), state)
        counts[key] = counts.get(key, 0) + int(n)
    return counts
