"""Migration queries (flush only).

A migration record's ``status``:

* ``queued``: waiting for its turn (a drain moves a few servers at a time);
* ``preparing``: cold, the source stops the guest and sends its disk and seed to the API's
  relay; live, the destination makes the empty files the incoming guest's disk is copied to;
* ``migrating``: cold, the destination fetches them and defines the server; live, the
  source's libvirtd copies memory and disk to the destination while the guest runs;
* ``completed``: the server is on the destination, the source's allocations are released;
* ``reverted``: a step failed and the server is back on its source (``fault_*`` say why);
* ``failed``: the move could not even start (no valid host; the fault says why);
* ``aborted``: the server was deleted while it moved.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session

from api.db import utcnow
from api.models import Allocation, Host, Image, Migration, Server
from api.servers.states import MIGRATING as MIGRATING_STATUS

QUEUED, PREPARING, MIGRATING, COMPLETED = "queued", "preparing", "migrating", "completed"
REVERTED, FAILED, ABORTED = "reverted", "failed", "aborted"
OPEN = (QUEUED, PREPARING, MIGRATING)
ENDED = (COMPLETED, REVERTED, FAILED, ABORTED)
# The steps in which the destination's agent lists the server: a cold move's import; the
# whole of a live move (it must never take the incoming domain for an unknown one).
AT_DESTINATION = or_(Migration.status == MIGRATING,
                     and_(Migration.kind == "live", Migration.status == PREPARING))


def open_migration(session: Session, server_id: str) -> Migration | None:
    """The server's migration in flight, if any."""
    return session.scalar(
        select(Migration).where(Migration.server_id == server_id,
                                Migration.status.in_((PREPARING, MIGRATING)))
        .order_by(Migration.created_at.desc()).limit(1))


def hosts_of_open(session: Session, server_id: str) -> set[str]:
    """Both hosts of the server's migration in flight (empty when none)."""
    migration = open_migration(session, server_id)
    if migration is None:
        return set()
    return {h for h in (migration.source_host_id, migration.dest_host_id) if h is not None}


def is_incoming(session: Session, host_id: str, server_id: str) -> bool:
    """True when ``host_id`` is the destination of the server's migration at its host step."""
    return session.scalar(
        select(Migration.id).join(Server, Server.id == Migration.server_id)
        .where(Migration.server_id == server_id, Migration.dest_host_id == host_id,
               AT_DESTINATION, Server.status == MIGRATING_STATUS)
        .limit(1)) is not None


def incoming_with_images(session: Session, host_id: str) -> Sequence[tuple[Server, Image]]:
    """Servers moving to ``host_id`` that its agent must act on now, with their images."""
    rows = session.execute(
        select(Server, Image).join(Image, Image.id == Server.image_id)
        .join(Migration, Migration.server_id == Server.id)
        .where(Migration.dest_host_id == host_id, AT_DESTINATION,
               Server.status == MIGRATING_STATUS)  # another owner (an evacuation) took it
        .order_by(Server.created_at, Server.id))
    return [(s, i) for s, i in rows]


def release(session: Session, server_id: str, host_id: str) -> int:
    """Delete the server's allocations on one host; returns how many rows went."""
    result = session.execute(
        delete(Allocation).where(Allocation.server_id == server_id,
                                 Allocation.host_id == host_id)
        .execution_options(synchronize_session=False))
    return int(getattr(result, "rowcount", 0) or 0)


def abort_open(session: Session, server_id: str, message: str) -> list[str]:
    """End the server's open migrations as ``aborted``; returns their destinations' ids."""
    rows = session.scalars(select(Migration).where(Migration.server_id == server_id,
                                                   Migration.status.in_(OPEN))).all()
    now = utcnow()
    for m in rows:
        m.status, m.finished_at = ABORTED, now
        m.fault_code, m.fault_message = "server_deleted", message
    session.flush()
    return [m.dest_host_id for m in rows if m.dest_host_id is not None]


def server_migrations(session: Session, server_id: str, limit: int = 100) -> Sequence[Migration]:
    """The server's migrations, newest first."""
    return session.scalars(select(Migration).where(Migration.server_id == server_id)
                           .order_by(Migration.created_at.desc(), Migration.id)
                           .limit(limit)).all()


def get(session: Session, migration_id: str) -> Migration | None:
    """One migration by id."""
    return session.get(Migration, migration_id)


def touch(session: Session, migration: Migration, **values: object) -> None:
    """Update a migration record's fields and its ``updated_at``."""
    session.execute(update(Migration).where(Migration.id == migration.id)
                    .values(updated_at=utcnow(), **values)
                    .execution_options(synchronize_session=False))
    session.refresh(migration)


def stale_open(session: Session, cutoff: datetime) -> Sequence[Migration]:
    """Migrations in flight whose record has not moved since ``cutoff``."""
    return session.scalars(select(Migration).where(Migration.status.in_((PREPARING, MIGRATING)),
                                                   Migration.updated_at < cutoff)
                           .order_by(Migration.updated_at)).all()


def hosts_without_endpoint(session: Session) -> list[str]:
    """Ids of the hosts whose agent registered no live-migration endpoint."""
    return list(session.scalars(select(Host.id).where(Host.migration_endpoint.is_(None))))


def any_host_with_endpoint(session: Session, *, exclude: str) -> bool:
    """True when a host other than ``exclude`` registered a live-migration endpoint."""
    return session.scalar(select(Host.id).where(Host.migration_endpoint.is_not(None),
                                                Host.id != exclude).limit(1)) is not None
