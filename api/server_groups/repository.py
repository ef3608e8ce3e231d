"""Server group queries (flush only)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db import after_key
from api.models import Server, ServerGroup


def get_group(session: Session, group_id: str, project_id: str | None) -> ServerGroup | None:
    """A group by id, within a project (None: any project)."""
    query = select(ServerGroup).where(ServerGroup.id == group_id)
    if project_id is not None:
        query = query.where(ServerGroup.project_id == project_id)
    return session.scalar(query)


def list_groups(session: Session, project_id: str | None, *,
                after: ServerGroup | None = None, limit: int | None = None,
                ) -> Sequence[ServerGroup]:
    """Groups of a project (None: all), oldest first, starting after the group ``after``."""
    query = select(ServerGroup)
    if project_id is not None:
        query = query.where(ServerGroup.project_id == project_id)
    if after is not None:
        query = query.where(after_key((ServerGroup.created_at, ServerGroup.id),
                                      (after.created_at, after.id)))
    return session.scalars(
        query.order_by(ServerGroup.created_at, ServerGroup.id).limit(limit)).all()


def members(session: Session, group_ids: Iterable[str]) -> dict[str, list[str]]:
    """group id -> ids of its non-deleted servers, oldest first."""
    ids = list(group_ids)
    found: dict[str, list[str]] = {i: [] for i in ids}
    if not ids:
        return found
    rows = session.execute(
        select(Server.server_group_id, Server.id)
        .where(Server.server_group_id.in_(ids), Server.deleted_at.is_(None))
        .order_by(Server.created_at, Server.id)
    ).all()
    for group_id, server_id in rows:
        if group_id is not None:
            found[group_id].append(server_id)
    return found
