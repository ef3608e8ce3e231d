"""The one query behind the host gauges of ``/metrics``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.models import Host


def host_counts(session: Session, up_since: datetime) -> dict[tuple[bool, bool], int]:
    """(enabled, up) -> number of hosts; up means a heartbeat at or after ``up_since``.

    SELECT enabled, last_heartbeat_at >= :up_since, count(*) FROM hosts GROUP BY 1, 2
    """
    up = func.coalesce(Host.last_heartbeat_at >= up_since, False)
    rows = session.execute(select(Host.enabled, up, func.count()).group_by(Host.enabled, up))
    counts: dict[tuple[bool, bool], int] = {}
    for enabled, is_up, n in rows:
        key = (bool(enabled), bool(is_up))
        counts[key] = counts.get(key, 0) + int(n)
    return counts
