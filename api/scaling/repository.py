"""Scaling group queries (flush only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, bindparam, delete, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from api.db import after_key, utcnow
from api.models import (
    Host,
    ScalingActivity,
    ScalingGroup,
    ScalingMember,
    Server,
    ServerEvent,
)

GROUPS: Table = ScalingGroup.__table__  # type: ignore[assignment]
# The reconciler runs these for every group every pass: built once (bound parameters), so a
# call neither builds nor hashes the expression again, and Core UPDATEs rather than the ORM's
# bulk-update machinery, which costs more CPU than the statement itself.
_GROUP_BY_ID = select(ScalingGroup).where(ScalingGroup.id == bindparam("group_id"))
# The details of the server's latest event named :stop_event (its domain stopped unexpectedly),
# None when it has none: read with the members, so the health check stays one statement.
_LAST_STOP = (
    select(ServerEvent.details)
    .where(ServerEvent.server_id == Server.id, ServerEvent.action == bindparam("stop_event"))
    .order_by(ServerEvent.created_at.desc()).limit(1)
    .correlate(Server).scalar_subquery())
_LIVE_WITH_HOSTS = (
    select(ScalingMember, Server, Host, _LAST_STOP)
    .join(Server, Server.id == ScalingMember.server_id)
    .outerjoin(Host, Host.id == Server.host_id)
    .where(ScalingMember.group_id == bindparam("group_id"), ScalingMember.released_at.is_(None))
    .order_by(ScalingMember.seq))
_BUMPS: dict[tuple[str, ...], Any] = {}


def _bump_statement(keys: tuple[str, ...]) -> Any:
    """``UPDATE scaling_groups SET <keys> WHERE id = :id AND generation = :seen``, one per set
    of columns written (a handful in all)."""
    statement = _BUMPS.get(keys)
    if statement is None:
        statement = _BUMPS[keys] = (
            update(GROUPS)
            .where(GROUPS.c.id == bindparam("b_id"), GROUPS.c.generation == bindparam("b_seen"))
            .values({key: bindparam(f"v_{key}") for key in keys}))
    return statement


def get_group(session: Session, group_id: str, project_id: str | None) -> ScalingGroup | None:
    """A group by id, within a project (None: any project)."""
    if project_id is None:
        return session.scalar(_GROUP_BY_ID, {"group_id": group_id})
    return session.scalar(select(ScalingGroup).where(ScalingGroup.id == group_id,
                                                     ScalingGroup.project_id == project_id))


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
    moved on. ``group`` then holds the written values (the row is ours until the commit, so
    what it wrote is what a re-read would return: no SELECT)."""
    session.flush()
    written = {"generation": group.generation + 1, "updated_at": utcnow(), **values}
    result = session.execute(_bump_statement(tuple(written)),
                             {"b_id": group.id, "b_seen": group.generation,
                              **{f"v_{key}": value for key, value in written.items()}})
    if getattr(result, "rowcount", 0) != 1:
        return False
    for key, value in written.items():
        set_committed_value(group, key, value)
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


def live_members_with_hosts(
        session: Session, group_id: str, stop_event: str,
) -> list[tuple[ScalingMember, Server, Host | None, dict[str, Any] | None]]:
    """The group's members not yet released, with their servers, the servers' hosts (None
    when not placed) and the details of each server's latest ``stop_event`` event (None: it
    has none), by sequence number: one statement for the reconciler's health check."""
    rows = session.execute(_LIVE_WITH_HOSTS, {"group_id": group_id,
                                              "stop_event": stop_event}).all()
    return [(member, server, host, stop) for member, server, host, stop in rows]


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
