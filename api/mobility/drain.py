"""Host drain: no new placements, every server moved off, then the host may be removed.

``start`` disables the host for the scheduler (``enabled`` false, ``disabled_reason``
"draining", ``maintenance`` "draining") and starts a migration of every server that can
move now (ACTIVE or SHUTOFF with no transition in flight), each placed by the placement
service like any migration (every filter, anti-affinity included, holds for the target):
live for an ACTIVE server when the host and some other host registered a migration endpoint
(cold when no such host can take it), cold otherwise.
A server that cannot move is recorded as a ``failed`` migration of the drain with the
scheduler's explained refusal (or the state that keeps it), so the drain's view lists it with
its reason. Asking again (``start`` on a draining host) retries the servers still there.
The drain is ``drained`` once no server is left on the host; then deleting the host
(decommission) removes it and its credential with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.config import Settings
from api.db import utcnow
from api.deps import Principal
from api.errors import DomainError
from api.hosts import repository as hosts_repository
from api.hosts import service as hosts_service
from api.mobility import repository, service
from api.models import Migration, Server
from api.servers import repository as servers_repository
from api.servers import states

DRAINING, DRAINED = "draining", "drained"


@dataclass
class Refusal:
    """A server the drain could not move, and why."""

    server_id: str
    code: str
    reason: str


@dataclass
class DrainView:
    """A drain's progress: servers still on the host, moving, moved, refused."""

    host_id: str
    state: str | None
    servers_left: int
    moving: list[str] = field(default_factory=list)
    completed: int = 0
    refused: list[Refusal] = field(default_factory=list)


def start(session: Session, settings: Settings, principal: Principal,
          host_id: str) -> DrainView:
    """Drain a host (admin; the caller checked the role); raises NotFound ``host_not_found``.

    Each server's move runs in a savepoint: one refusal never undoes the others.
    """
    host = hosts_service.get_host(session, host_id)
    host.enabled, host.disabled_reason, host.maintenance = False, "draining", DRAINING
    session.flush()
    hosts_repository.bump_generation(session, host.id)  # in-flight claims there re-read
    live = host.migration_endpoint is not None \
        and repository.any_host_with_endpoint(session, exclude=host.id)
    for server in servers_repository.live_servers_on(session, host.id):
        if repository.open_migration(session, server.id) is not None:
            continue
        if not states.action_allowed(server.status, server.task_state, "migrate"):
            _refused(session, server, host.id, "invalid_state",
                     f"A server in {server.status}"
                     f"{'/' + server.task_state if server.task_state else ''} cannot move; "
                     "drain again once it settled.")
            continue
        if live and server.status == states.ACTIVE:
            savepoint = session.begin_nested()
            try:
                service.live_migrate(session, settings, principal, server, None,
                                     drain_host_id=host.id)
            except DomainError:
                savepoint.rollback()  # no host with an endpoint takes it: move it cold
            else:
                savepoint.commit()
                continue
        savepoint = session.begin_nested()
        try:
            service.migrate(session, settings, principal, server, None, drain_host_id=host.id)
        except DomainError as exc:
            savepoint.rollback()
            _refused(session, server, host.id, exc.code, exc.detail)
        else:
            savepoint.commit()
    return view(session, host_id)


def _refused(session: Session, server: Server, host_id: str, code: str, reason: str) -> None:
    now = utcnow()
    session.add(Migration(
        server_id=server.id, project_id=server.project_id, kind="cold",
        status=repository.FAILED, source_host_id=host_id, dest_host_id=None,
        server_status=server.status, drain_host_id=host_id, progress=0, fault_code=code,
        fault_message=reason, created_at=now, updated_at=now, finished_at=now))
    session.flush()


def view(session: Session, host_id: str) -> DrainView:
    """The drain's progress on a host; raises NotFound ``host_not_found``."""
    host = hosts_service.get_host(session, host_id)
    left = hosts_repository.server_counts(session, [host.id]).get(host.id, 0)
    state = host.maintenance
    if state == DRAINING and left == 0:
        state = DRAINED
    out = DrainView(host_id=host.id, state=state, servers_left=left)
    # The newest record per server tells where it stands.
    rows = session.scalars(select(Migration).where(Migration.drain_host_id == host.id)
                           .order_by(Migration.created_at.desc(), Migration.id)).all()
    seen: set[str] = set()
    for m in rows:
        if m.server_id in seen:
            continue
        seen.add(m.server_id)
        if m.status in repository.OPEN:
            out.moving.append(m.server_id)
        elif m.status == repository.COMPLETED:
            out.completed += 1
        else:
            server = session.get(Server, m.server_id)
            if server is not None and server.host_id == host.id and server.deleted_at is None:
                out.refused.append(Refusal(m.server_id, m.fault_code or "",
                                           m.fault_message or ""))
    return out


def cancel(session: Session, host_id: str) -> DrainView:
    """End a drain: the host takes placements again (moves in flight go on)."""
    host = hosts_service.get_host(session, host_id)
    host.enabled, host.disabled_reason, host.maintenance = True, None, None
    session.flush()
    hosts_repository.bump_generation(session, host.id)
    return view(session, host_id)
