"""Scaling group queries (flush only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from api.db import after_key, utcnow
from api.models import Host, ScalingActivity, ScalingGroup, ScalingMember, Server


def get_group(session: Session, group_id: str, project_id: str | None) -> ScalingGroup | None:
    """A group by id, within a project (None: any project)."""
    query = select(ScalingGroup).where(ScalingGroup.id == group_id)
    if project_id is not None:
        query = query.where(ScalingGroup.project_id == project_id)
    return session.scalar(query)


def name_taken(session: Session, project_id: str, name: str) -> bool:
    """Whether the project already has a group of that name (also one being deleted)."""
    return session.scalar(select(func.count()).select_from(ScalingGroup).where(
        ScalingGroup.project_id == project_id, ScalingGroup.name == name)) != 0


def list_groups(session: Session, project_id: str | None, *, after: ScalingGroup | None = None,
                limit: int | None = None) -> Sequence[ScalingGroup]:
    """Groups of a project (None: all), oldest first, after the group ``after``."""
    query = select(ScalingGroup)
    if project_id is not None:
        query = query.where(ScalingGroup.project_id == project_id)
    if after is not None:
        query = query.where(after_key((ScalingGroup.created_at, ScalingGroup.id),
                                      (after.created_at, after.id)))
    return session.scalars(
        query.order_by(ScalingGroup.created_at, ScalingGroup.id).limit(limit)).all()


def group_ids(session: Session) -> Sequence[str]:
    """Every group's id (the reconciler's work list)."""
    return session.scalars(select(ScalingGroup.id).order_by(ScalingGroup.created_at)).all()


def bump(session: Session, group: ScalingGroup, **values: Any) -> bool:
    """Write ``values`` and bump the generation only if nobody changed the group since it was
    read (``UPDATE scaling_groups ... WHERE id = :id AND generation = :seen``); False when it
    moved on. ``group`` is re-read."""
    session.flush()
    result = session.execute(
        update(ScalingGroup)
        .where(ScalingGroup.id == group.id, ScalingGroup.generation == group.generation)
        .values(generation=group.generation + 1, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False))
    if getattr(result, "rowcount", 0) != 1:
        return False
    session.refresh(group)
    return True


def lock(session: Session, group: ScalingGroup) -> None:
    """Take the group's row lock (``UPDATE ... SET generation = generation + 1``) and re-read
    it: a user's change then waits for a reconciler transaction in flight instead of losing a
    compare-and-swap to it."""
    session.execute(
        update(ScalingGroup).where(ScalingGroup.id == group.id)
        .values(generation=ScalingGroup.generation + 1)
        .execution_options(synchronize_session=False))
    session.refresh(group)


def live_members(session: Session, group_ids: Sequence[str],
                 ) -> dict[str, list[tuple[ScalingMember, Server]]]:
    """group id -> its members not yet released, with their servers, by sequence number."""
    found: dict[str, list[tuple[ScalingMember, Server]]] = {g: [] for g in group_ids}
    if not group_ids:
        return found
    rows = session.execute(
        select(ScalingMember, Server).join(Server, Server.id == ScalingMember.server_id)
        .where(ScalingMember.group_id.in_(group_ids), ScalingMember.released_at.is_(None))
        .order_by(ScalingMember.group_id, ScalingMember.seq)).all()
    for member, server in rows:
        found[member.group_id].append((member, server))
    return found


def member(session: Session, group_id: str,
           server_id: str) -> tuple[ScalingMember, Server] | None:
    """A live member of the group by its server id, with the server."""
    row = session.execute(
        select(ScalingMember, Server).join(Server, Server.id == ScalingMember.server_id)
        .where(ScalingMember.group_id == group_id, ScalingMember.server_id == server_id,
               ScalingMember.released_at.is_(None))).first()
    return None if row is None else (row[0], row[1])


def servers_not_deleted(session: Session, group_id: str) -> int:
    """How many servers the group ever launched still exist (not DELETED)."""
    return int(session.scalar(
        select(func.count()).select_from(ScalingMember)
        .join(Server, Server.id == ScalingMember.server_id)
        .where(ScalingMember.group_id == group_id, Server.deleted_at.is_(None))) or 0)


def hosts(session: Session, host_ids: Sequence[str]) -> dict[str, Host]:
    """Hosts by id."""
    if not host_ids:
        return {}
    return {h.id: h for h in session.scalars(select(Host).where(Host.id.in_(host_ids)))}


def activities(session: Session, group_id: str, limit: int) -> Sequence[ScalingActivity]:
    """The group's latest activities, newest first."""
    return session.scalars(
        select(ScalingActivity).where(ScalingActivity.group_id == group_id)
        .order_by(ScalingActivity.created_at.desc(), ScalingActivity.id.desc())
        .limit(limit)).all()


def delete_group(session: Session, group: ScalingGroup) -> None:
    """Remove the group row (members and activities cascade)."""
    session.delete(group)
    session.flush()


def groups_of_servers(session: Session,
                      server_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """server id -> (group id, group name) of the scaling group that launched it (members
    released since included; groups deleted since are gone with their members)."""
    if not server_ids:
        return {}
    rows = session.execute(
        select(ScalingMember.server_id, ScalingGroup.id, ScalingGroup.name)
        .join(ScalingGroup, ScalingGroup.id == ScalingMember.group_id)
        .where(ScalingMember.server_id.in_(list(server_ids)))).all()
    return {sid: (gid, name) for sid, gid, name in rows}


def trim_activities(session: Session, group_id: str, keep: int) -> int:
    """Delete the group's activities older than its newest ``keep``; returns how many."""
    cutoff = session.scalar(
        select(ScalingActivity.created_at).where(ScalingActivity.group_id == group_id)
        .order_by(ScalingActivity.created_at.desc()).offset(keep - 1).limit(1))
    if cutoff is None:
        return 0
    result = session.execute(
        delete(ScalingActivity).where(ScalingActivity.group_id == group_id,
                                      ScalingActivity.created_at < cutoff)
        .execution_options(synchronize_session=False))
    return int(getattr(result, "rowcount", 0) or 0)
