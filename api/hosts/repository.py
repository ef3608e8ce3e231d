"""Host queries (flush only)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from api.db import after_key
from api.models import Allocation, Host, Inventory, Server
from api.servers.states import DELETED


def list_hosts(session: Session, *, after: tuple[str, str] | None = None,
               limit: int | None = None) -> Sequence[Host]:
    """Every host, by (name, id), starting after the ``after`` key."""
    query = select(Host)
    if after is not None:
        query = query.where(after_key((Host.name, Host.id), after))
    return session.scalars(query.order_by(Host.name, Host.id).limit(limit)).all()


def inventories(session: Session, host_ids: Sequence[str]) -> dict[str, dict[str, Inventory]]:
    """Inventories per host id, then per resource class."""
    out: dict[str, dict[str, Inventory]] = {h: {} for h in host_ids}
    for inv in session.scalars(select(Inventory).where(Inventory.host_id.in_(host_ids))):
        out[inv.host_id][inv.resource_class] = inv
    return out


def allocated(session: Session, host_ids: Sequence[str]) -> dict[tuple[str, str], int]:
    """Sum of allocations per (host id, resource class)."""
    rows = session.execute(
        select(Allocation.host_id, Allocation.resource_class, func.sum(Allocation.used))
        .where(Allocation.host_id.in_(host_ids))
        .group_by(Allocation.host_id, Allocation.resource_class)
    )
    return {(h, rc): int(total or 0) for h, rc, total in rows}


def server_counts(session: Session, host_ids: Sequence[str]) -> dict[str, int]:
    """Number of servers not yet DELETED per host id."""
    rows = session.execute(
        select(Server.host_id, func.count())
        .where(Server.host_id.in_(host_ids), Server.status != DELETED)
        .group_by(Server.host_id)
    )
    return {h: int(n) for h, n in rows if h is not None}


def detach_deleted_servers(session: Session, host_id: str) -> None:
    """Forget the host of its DELETED servers so the host row can go."""
    session.execute(
        update(Server).where(Server.host_id == host_id, Server.status == DELETED)
        .values(host_id=None)
    )


def bump_generation(session: Session, host_id: str) -> None:
    """Make concurrent claims on this host conflict (its capacity changed)."""
    session.execute(
        update(Host).where(Host.id == host_id).values(generation=Host.generation + 1)
    )


def claim_down_publication(session: Session, host_id: str, heartbeat: datetime) -> bool:
    """Mark the silence that began at ``heartbeat`` as published; False when it already was
    (by this or another API process: the second UPDATE waits for the first and matches no
    row). Only flushes.

    UPDATE hosts SET down_published_for = :heartbeat
     WHERE id = :host_id AND (down_published_for IS NULL OR down_published_for <> :heartbeat)
    """
    result = session.execute(
        update(Host)
        .where(Host.id == host_id, or_(Host.down_published_for.is_(None),
                                       Host.down_published_for != heartbeat))
        .values(down_published_for=heartbeat)
        .execution_options(synchronize_session=False))
    return bool(getattr(result, "rowcount", 0) == 1)

