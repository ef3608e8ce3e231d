"""Evacuation queries (flush only)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from api.models import Evacuation, Server

REBUILDING, REFUSED, DELETED = "rebuilding", "refused", "deleted"


def add(session: Session, evacuation: Evacuation) -> None:
    """Insert one evacuation row."""
    session.add(evacuation)
    session.flush()


def fence_orders(session: Session, host_id: str) -> Sequence[Evacuation]:
    """The host's servers rebuilt elsewhere whose old copy its agent has not removed yet."""
    return session.scalars(
        select(Evacuation).where(Evacuation.host_id == host_id,
                                 Evacuation.result == REBUILDING,
                                 Evacuation.fenced_at.is_(None))
        .order_by(Evacuation.server_id, Evacuation.created_at)).all()


def fencing_pending(session: Session, host_id: str) -> bool:
    """Whether the host has a fence order open (one indexed probe)."""
    return session.scalar(
        select(Evacuation.id).where(Evacuation.host_id == host_id,
                                    Evacuation.fenced_at.is_(None),
                                    Evacuation.result == REBUILDING).limit(1)) is not None


def mark_fenced(session: Session, host_id: str, server_ids: Collection[str],
                at: datetime) -> int:
    """Close the host's fence orders of ``server_ids``; returns how many closed."""
    if not server_ids:
        return 0
    result = session.execute(
        update(Evacuation).where(Evacuation.host_id == host_id,
                                 Evacuation.server_id.in_(list(server_ids)),
                                 Evacuation.result == REBUILDING,
                                 Evacuation.fenced_at.is_(None))
        .values(fenced_at=at).execution_options(synchronize_session=False))
    return int(getattr(result, "rowcount", 0))


def latest_batches(session: Session, host_ids: Sequence[str]
                   ) -> dict[str, list[tuple[Evacuation, Server]]]:
    """Per host, the rows of its newest evacuation request with their servers."""
    if not host_ids:
        return {}
    newest = (select(Evacuation.host_id, func.max(Evacuation.created_at).label("at"))
              .where(Evacuation.host_id.in_(host_ids)).group_by(Evacuation.host_id)
              .subquery())
    batch_ids = set(session.scalars(
        select(Evacuation.batch_id).join(
            newest, (Evacuation.host_id == newest.c.host_id)
            & (Evacuation.created_at == newest.c.at))))
    out: dict[str, list[tuple[Evacuation, Server]]] = {}
    if not batch_ids:
        return out
    rows = session.execute(
        select(Evacuation, Server).join(Server, Server.id == Evacuation.server_id)
        .where(Evacuation.batch_id.in_(batch_ids))
        .order_by(Evacuation.created_at, Evacuation.id))
    for evacuation, server in rows:
        out.setdefault(evacuation.host_id, []).append((evacuation, server))
    return out


def open_fence_counts(session: Session, host_ids: Sequence[str]) -> dict[str, int]:
    """Open fence orders per host."""
    if not host_ids:
        return {}
    rows = session.execute(
        select(Evacuation.host_id, func.count())
        .where(Evacuation.host_id.in_(host_ids), Evacuation.result == REBUILDING,
               Evacuation.fenced_at.is_(None))
        .group_by(Evacuation.host_id))
    return {h: int(n) for h, n in rows}


def evacuated_since(session: Session, host_id: str, since: datetime) -> bool:
    """Whether an evacuation of the host was requested after ``since``."""
    return session.scalar(
        select(Evacuation.id).where(Evacuation.host_id == host_id,
                                    Evacuation.created_at > since).limit(1)) is not None
