"""Server and event queries (flush only)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from api.models import Allocation, Flavor, Host, Image, Server, ServerEvent


def get_server(session: Session, server_id: str, project_id: str | None,
               include_deleted: bool = False) -> Server | None:
    """A server by id, within a project (None: any project)."""
    query = select(Server).where(Server.id == server_id)
    if project_id is not None:
        query = query.where(Server.project_id == project_id)
    if not include_deleted:
        query = query.where(Server.deleted_at.is_(None))
    return session.scalar(query)


# A create writes its rows with Core statements built once: the ORM's unit-of-work flush
# costs more than the statements themselves on this path.
_SERVERS: Table = Server.__table__  # type: ignore[assignment]
_EVENTS: Table = ServerEvent.__table__  # type: ignore[assignment]
_INSERT_SERVER = insert(_SERVERS)
_INSERT_EVENTS = insert(_EVENTS)
_PLACED = (update(_SERVERS).where(_SERVERS.c.id == bindparam("p_id"))
           .values(host_id=bindparam("p_host_id"),
                   availability_zone=bindparam("p_availability_zone"),
                   task_state=bindparam("p_task_state"), generation=bindparam("p_generation"),
                   updated_at=bindparam("p_updated_at")))


def insert_server(session: Session, server: Server) -> None:
    """INSERT the row of ``server``, a new object that stays out of the session (every
    column is taken from it: set them all, defaults included)."""
    session.execute(_INSERT_SERVER, {column.key: getattr(server, column.key)
                                     for column in _SERVERS.columns})


def set_placed(session: Session, server: Server) -> None:
    """Write the placement fields of a server inserted by ``insert_server`` in this unit of
    work (a plain UPDATE: nobody else can see the row before it commits)."""
    session.execute(_PLACED, {"p_id": server.id, "p_host_id": server.host_id,
                              "p_availability_zone": server.availability_zone,
                              "p_task_state": server.task_state,
                              "p_generation": server.generation,
                              "p_updated_at": server.updated_at})


def insert_events(session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
    """INSERT event rows (every column given) in one statement."""
    session.execute(_INSERT_EVENTS, list(rows))


def host_id_by_name(session: Session, name: str) -> str | None:
    """The id of the host called ``name``."""
    return session.scalar(select(Host.id).where(Host.name == name))


def list_servers(session: Session, *, project_id: str | None, status: str | None,
                 name: str | None, host_id: str | None,
                 after: tuple[datetime, str] | None, limit: int) -> Sequence[Server]:
    """Non-deleted servers ordered by (created_at, id), starting after the ``after`` key."""
    query = select(Server).where(Server.deleted_at.is_(None))
    if project_id is not None:
        query = query.where(Server.project_id == project_id)
    if status is not None:
        query = query.where(Server.status == status)
    if name is not None:
        # Case-insensitive substring, the same on SQLite and PostgreSQL.
        query = query.where(func.lower(Server.name).contains(name.lower(), autoescape=True))
    if host_id is not None:
        query = query.where(Server.host_id == host_id)
    if after is not None:
        created, sid = after
        query = query.where(or_(Server.created_at > created,
                                and_(Server.created_at == created, Server.id > sid)))
    return session.scalars(query.order_by(Server.created_at, Server.id).limit(limit)).all()


_KNOWN_NAMES = "known_names"
NamedModel = type[Flavor] | type[Image] | type[Host]


def remember_name(session: Session, model: NamedModel, row_id: str, name: str) -> None:
    """Note the name of a row this unit of work already read (a create's flavor, image and
    host), so ``names_by_id`` answers it without a query."""
    session.info.setdefault(_KNOWN_NAMES, {})[(model.__tablename__, row_id)] = name


def names_by_id(session: Session, model: NamedModel,
                ids: Iterable[str | None]) -> dict[str, str]:
    """id -> name for the given rows of one table: the ones noted by ``remember_name`` from
    memory, the others in one query."""
    wanted = {i for i in ids if i is not None}
    known: dict[tuple[str, str], str] = session.info.get(_KNOWN_NAMES, {})
    names = {i: known[(model.__tablename__, i)] for i in wanted
             if (model.__tablename__, i) in known}
    wanted.difference_update(names)
    if wanted:
        rows = session.execute(select(model.id, model.name).where(model.id.in_(wanted))).all()
        names.update({row[0]: row[1] for row in rows})
    return names


def delete_allocations(session: Session, server_id: str) -> int:
    """Free everything the server holds on its host; returns how many rows went."""
    result = session.execute(delete(Allocation).where(Allocation.server_id == server_id)
                             .execution_options(synchronize_session=False))
    return int(getattr(result, "rowcount", 0))


def last_event_at(session: Session, server_id: str) -> datetime | None:
    """When the server's newest event was recorded."""
    return session.scalar(select(func.max(ServerEvent.created_at))
                          .where(ServerEvent.server_id == server_id))


def count_rejections(session: Session, server_id: str, since: datetime) -> int:
    """How many refused requests were recorded for the server since ``since``: the ``error``
    events a user caused (the agent's error observations carry no user)."""
    return int(session.scalar(
        select(func.count()).select_from(ServerEvent)
        .where(ServerEvent.server_id == server_id, ServerEvent.result == "error",
               ServerEvent.user_id.is_not(None), ServerEvent.created_at >= since)) or 0)


def events(session: Session, server_id: str, *, after: tuple[datetime, str] | None = None,
           limit: int | None = None) -> Sequence[ServerEvent]:
    """The server's events, oldest first, starting after the ``after`` key."""
    query = select(ServerEvent).where(ServerEvent.server_id == server_id)
    if after is not None:
        created, eid = after
        query = query.where(or_(ServerEvent.created_at > created,
                                and_(ServerEvent.created_at == created, ServerEvent.id > eid)))
    query = query.order_by(ServerEvent.created_at, ServerEvent.id)
    if limit is not None:
        query = query.limit(limit)
    return session.scalars(query).all()


def get_event(session: Session, server_id: str, event_id: str) -> ServerEvent | None:
    """One event of the server."""
    return session.scalar(select(ServerEvent).where(ServerEvent.server_id == server_id,
                                                    ServerEvent.id == event_id))


def live_servers_on(session: Session, host_id: str) -> Sequence[Server]:
    """The host's servers that are not deleted, in id order."""
    return session.scalars(
        select(Server).where(Server.host_id == host_id, Server.deleted_at.is_(None))
        .order_by(Server.id)).all()


def stuck_servers(session: Session, statuses: dict[str, datetime],
                  task_states: dict[str, datetime]) -> Sequence[Server]:
    """Live servers in one of ``statuses`` (or ``task_states``) not updated since its cutoff.

    One query over the ``(status, updated_at)`` and ``(task_state, updated_at)`` indexes: its
    cost grows with the stuck servers, not with all servers.
    """
    conds = [and_(Server.status == st, Server.updated_at < cutoff)
             for st, cutoff in statuses.items()]
    conds += [and_(Server.task_state == ts, Server.updated_at < cutoff)
              for ts, cutoff in task_states.items()]
    return session.scalars(
        select(Server).where(or_(*conds), Server.deleted_at.is_(None))
        .order_by(Server.id)).all()
