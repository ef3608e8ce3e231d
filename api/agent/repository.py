"""Agent-side queries (flush only)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    String,
    Table,
    any_,
    bindparam,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from api.models import (
    AgentObservation,
    Allocation,
    EnrollmentToken,
    Host,
    Image,
    Server,
    UsageServer,
)
from api.servers.states import DELETED


def consume_enrollment_token(session: Session, token_digest: str, now: datetime) -> bool:
    """Mark an unexpired, unused token used; False when another request got there first.

    ``UPDATE enrollment_tokens SET used_at = :now
       WHERE digest = :d AND used_at IS NULL AND expires_at > :now`` -- the row lock (or
    SQLite's write lock) makes exactly one of two concurrent enrollments see rowcount 1.
    """
    result = session.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.digest == token_digest, EnrollmentToken.used_at.is_(None),
               EnrollmentToken.expires_at > now)
        .values(used_at=now)
    )
    return getattr(result, "rowcount", 0) == 1


def set_token_host(session: Session, token_digest: str, host_id: str) -> None:
    """Record which host a token enrolled."""
    session.execute(
        update(EnrollmentToken).where(EnrollmentToken.digest == token_digest)
        .values(host_id=host_id)
    )


def host_by_name(session: Session, name: str) -> Host | None:
    """A host by name."""
    return session.scalar(select(Host).where(Host.name == name))


def cursor_parts(session: Session | Connection,
                 host_id: str) -> tuple[int, int, int] | None:
    """(desired_generation, live server count, sum of their generations); None: no host.

    On a session or a bare connection (the fast path's one statement, api.agent.fastpath)."""
    row = session.execute(_CURSOR, {"host": host_id}).one_or_none()
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]))


# Every long-poll reads it twice (before and after its wait): one statement, built once.
_LIVE = (Server.host_id == bindparam("host"), Server.status != DELETED)
_CURSOR = select(
    Host.desired_generation,
    select(func.count()).where(*_LIVE).scalar_subquery(),
    select(func.coalesce(func.sum(Server.generation), 0)).where(*_LIVE).scalar_subquery(),
).where(Host.id == bindparam("host"))


def cursor_parts_of(conn: Connection,
                    host_ids: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """``cursor_parts`` of several hosts in one statement (the fast path's long-polls ending
    in the same tick, api.agent.fastpath); a host that no longer exists is absent."""
    # PostgreSQL: one array parameter, so the driver prepares the statement once instead of
    # parsing a new one for every count of hosts.
    statement = _CURSORS_ANY if conn.dialect.name == "postgresql" else _CURSORS
    rows = conn.execute(statement, {"hosts": list(host_ids)})
    return {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}


_LIVE_OF_ROW = (Server.host_id == Host.id, Server.status != DELETED)
_CURSORS_OF = select(
    Host.id,
    Host.desired_generation,
    select(func.count()).where(*_LIVE_OF_ROW).correlate(Host).scalar_subquery(),
    select(func.coalesce(func.sum(Server.generation), 0)).where(*_LIVE_OF_ROW)
    .correlate(Host).scalar_subquery(),
)
_CURSORS = _CURSORS_OF.where(Host.id.in_(bindparam("hosts", expanding=True)))
_CURSORS_ANY = _CURSORS_OF.where(Host.id == any_(bindparam("hosts", type_=ARRAY(String))))


def live_servers_with_images(session: Session, host_id: str) -> Sequence[tuple[Server, Image]]:
    """The host's servers that are not DELETED, with their images, oldest first."""
    rows = session.execute(
        select(Server, Image).join(Image, Image.id == Server.image_id)
        .where(Server.host_id == host_id, Server.status != DELETED)
        .order_by(Server.created_at, Server.id)
    )
    return [(s, i) for s, i in rows]


def lock_server(session: Session, server_id: str, host_id: str | None) -> Server | None:
    """Lock a live server row (of ``host_id`` when given) and read it fresh; None if absent.

    The no-op UPDATE comes first on purpose: it takes PostgreSQL's row lock and SQLite's
    write lock before the read, so two observations of one server apply one after the other.
    """
    cond = [Server.id == server_id, Server.status != DELETED]
    if host_id is not None:
        cond.append(Server.host_id == host_id)
    result = session.execute(
        update(Server).where(*cond)
        .values(generation=Server.generation, updated_at=Server.updated_at)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        return None
    return session.scalar(
        select(Server).where(Server.id == server_id).execution_options(populate_existing=True)
    )


def observation_by_key(session: Session, host_id: str, key: str) -> AgentObservation | None:
    """An already processed observation of this host with this idempotency key."""
    return session.scalar(
        select(AgentObservation).where(AgentObservation.host_id == host_id,
                                       AgentObservation.idempotency_key == key)
    )


def last_seen_at(session: Session, server_id: str) -> datetime | None:
    """When the newest recorded observation of the server was seen."""
    return session.scalar(
        select(func.max(AgentObservation.seen_at)).where(AgentObservation.server_id == server_id)
    )


def delete_allocations(session: Session, server_id: str) -> None:
    """Free everything the server holds."""
    session.execute(delete(Allocation).where(Allocation.server_id == server_id))


def lock_host(session: Session, host_id: str) -> None:
    """Take the host row's lock (a no-op UPDATE) before touching any of its servers.

    Lock order, everywhere: host row first, then server rows. Heartbeats, observations, user
    actions, deletes and claims all follow it, so PostgreSQL never sees two transactions wait
    on each other's rows (a deadlock would surface as a 500).
    """
    session.execute(
        update(Host).where(Host.id == host_id)
        .values(desired_generation=Host.desired_generation)
        .execution_options(synchronize_session=False)
    )


def bump_desired_generation(session: Session, host_id: str) -> None:
    """``UPDATE hosts SET desired_generation = desired_generation + 1 WHERE id = :host``.

    Call it through ``lifecycle.notify_host``, which also wakes the host's waiting long-poll.
    """
    session.execute(_BUMP_DESIRED, {"host_id": host_id})


# Built once, on the Core table (no ORM statement layer): every create and action runs it.
_HOSTS = cast(Table, Host.__table__)
_BUMP_DESIRED = (update(_HOSTS).where(_HOSTS.c.id == bindparam("host_id"))
                 .values(desired_generation=_HOSTS.c.desired_generation + 1))


def notify(session: Session, channel: str, payload: str) -> None:
    """``SELECT pg_notify(:channel, :payload)`` (PostgreSQL): delivered at commit, if any."""
    session.execute(select(func.pg_notify(channel, payload)))


def record_heartbeats(session: Session, seen: Mapping[str, Any]) -> None:
    """Every host's newest heartbeat time (and loop progress, when its agent reported one)
    in at most three statements on SQLite (executemany), each of the form

    ``UPDATE hosts SET last_heartbeat_at = :at [, loop_progress = :p [, loop_progress_at =
    :pat]] WHERE id = :host AND credential_digest = :digest
    AND (last_heartbeat_at IS NULL OR last_heartbeat_at < :at)`` -- a newer time written
    meanwhile by a heartbeat's own unit of work stays, and a heartbeat whose credential was
    rotated or revoked since writes nothing.

    ``seen`` maps host ids to ``api.agent.liveness.Pending``. On PostgreSQL all of it is one
    statement over arrays (``_RECORD_HEARTBEATS_PG``): one execution instead of one per host.
    """
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        rows = list(seen.items())
        conn.execute(_RECORD_HEARTBEATS_PG, {
            "hosts": [h for h, _ in rows], "digests": [p.digest for _, p in rows],
            "ats": [p.at for _, p in rows],
            "ps": [None if p.progress is None else json.dumps(p.progress) for _, p in rows],
            "pats": [p.progress_at for _, p in rows]})
        return
    hosts = cast(Table, Host.__table__)
    newer = (hosts.c.id == bindparam("host"), hosts.c.credential_digest == bindparam("digest"),
             or_(hosts.c.last_heartbeat_at.is_(None),
                 hosts.c.last_heartbeat_at < bindparam("at")))
    plain = [{"host": h, "digest": p.digest, "at": p.at} for h, p in seen.items()
             if p.progress is None]
    same = [{"host": h, "digest": p.digest, "at": p.at, "p": p.progress}
            for h, p in seen.items() if p.progress is not None and p.progress_at is None]
    moved = [{"host": h, "digest": p.digest, "at": p.at, "p": p.progress, "pat": p.progress_at}
             for h, p in seen.items() if p.progress is not None and p.progress_at is not None]
    if plain:
        conn.execute(update(hosts).where(*newer).values(last_heartbeat_at=bindparam("at")),
                     plain)
    if same:
        conn.execute(update(hosts).where(*newer).values(
            last_heartbeat_at=bindparam("at"), loop_progress=bindparam("p")), same)
    if moved:
        conn.execute(update(hosts).where(*newer).values(
            last_heartbeat_at=bindparam("at"), loop_progress=bindparam("p"),
            loop_progress_at=bindparam("pat")), moved)


# The three forms of ``record_heartbeats`` in one: a NULL progress (or progress time) keeps
# the stored one. A constant text, so psycopg prepares it once per connection.
_RECORD_HEARTBEATS_PG = text("""
UPDATE hosts SET last_heartbeat_at = v.at,
    loop_progress = COALESCE(CAST(v.p AS json), hosts.loop_progress),
    loop_progress_at = COALESCE(v.pat, hosts.loop_progress_at)
FROM unnest(CAST(:hosts AS varchar[]), CAST(:digests AS varchar[]),
            CAST(:ats AS timestamptz[]), CAST(:ps AS text[]), CAST(:pats AS timestamptz[]))
    AS v(host, digest, at, p, pat)
WHERE hosts.id = v.host AND hosts.credential_digest = v.digest
    AND (hosts.last_heartbeat_at IS NULL OR hosts.last_heartbeat_at < v.at)""")


def observed_servers(
    session: Session, host_id: str
) -> dict[str, tuple[Server, datetime | None, UsageServer | None]]:
    """The host's live servers with their newest recorded observation time and their usage
    summary, in one query.

    The billing subscriber hears every confirming observation and reads the server's summary
    by primary key (``api.usage.hooks``): while the caller holds the summaries (the session's
    identity map only keeps weak references), the session answers those reads without a
    query per server.
    """
    rows = session.execute(_OBSERVED, {"host": host_id})
    return {s.id: (s, seen, summary) for s, seen, summary in rows}


_OBSERVED = (
    select(Server,
           select(func.max(AgentObservation.seen_at))
           .where(AgentObservation.server_id == Server.id).scalar_subquery(),
           UsageServer)
    .outerjoin(UsageServer, UsageServer.server_id == Server.id)
    .where(Server.host_id == bindparam("host"), Server.status != DELETED)
)


def confirmation_rows(conn: Connection, host_id: str) -> dict[str, ConfirmationRow]:
    """What decides whether a heartbeat's observations only confirm the stored state, for
    every live server of the host, in one Core statement (no ORM objects, no lock): server id
    -> (status, task_state, power_state, newest recorded observation time, billing summary
    state, summary's last second; both None without a summary)."""
    return {row[0]: cast(ConfirmationRow, tuple(row[1:]))
            for row in conn.execute(_CONFIRMATION, {"host": host_id})}


ConfirmationRow = tuple[str, str | None, str | None, datetime | None, str | None, int | None]

_SERVERS = cast(Table, Server.__table__)
_OBSERVATIONS = cast(Table, AgentObservation.__table__)
_SUMMARIES = cast(Table, UsageServer.__table__)
_CONFIRMATION = (
    select(_SERVERS.c.id, _SERVERS.c.status, _SERVERS.c.task_state, _SERVERS.c.power_state,
           select(func.max(_OBSERVATIONS.c.seen_at))
           .where(_OBSERVATIONS.c.server_id == _SERVERS.c.id).scalar_subquery(),
           _SUMMARIES.c.state, _SUMMARIES.c.last_s)
    .select_from(_SERVERS.outerjoin(_SUMMARIES, _SUMMARIES.c.server_id == _SERVERS.c.id))
    .where(_SERVERS.c.host_id == bindparam("host"), _SERVERS.c.status != DELETED)
)
