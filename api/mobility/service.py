"""Cold migration: the rules of a move, step by step (docs/operations.md, "Migration").

1. ``migrate`` (the server's ``migrate`` action): the placement service picks a destination
   (the source excluded; an admin's named host is still checked by every filter) and claims
   the server's sizes there. The server holds allocations on both hosts from now on; the
   source's belong to the migration record. MIGRATING/``migrating-export``.
2. The source's agent stops the guest (the desired power is ``shutoff``), uploads the disk
   overlay and the seed to the relay (``api.mobility.relay``) and reports its
   ``migrate_export`` operation: MIGRATING/``migrating-import``, and the destination's agent
   now lists the server.
3. The destination's agent builds the server from the image, replaces the fresh overlay and
   seed with the relayed ones and reports ``migrate_import``: the server is on the
   destination (SHUTOFF, or SHUTOFF/``powering-on`` when it was ACTIVE), the source's
   allocations are released and its agent removes the domain and files it no longer lists.

A failure reported by either agent (an ``error`` observation) reverts: the destination's
allocations are released, the server returns to its source as it was (started again if it
was ACTIVE) with ``fault`` saying what failed, and the destination removes what it built.
Every change of the server goes through ``api.servers.lifecycle``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from api.agent import repository as agent_repository
from api.config import Settings
from api.db import utcnow
from api.deps import Principal
from api.errors import Conflict, Forbidden, NotFound, request_id_var
from api.mobility import relay, repository
from api.models import Flavor, Host, Image, Migration, Server, ServerGroup
from api.scheduler import placement
from api.servers import lifecycle, states
from api.servers.lifecycle import ACCEPTED, ERROR, SUCCESS

ABORTED_CODE = "migration_aborted"


def _host(session: Session, ref: str) -> Host:
    host = session.get(Host, ref) or agent_repository.host_by_name(session, ref)
    if host is None:
        raise NotFound(f"No host {ref!r}.", code="host_not_found")
    return host


def migrate(session: Session, settings: Settings, principal: Principal, server: Server,
            host_ref: str | None, *, drain_host_id: str | None = None) -> Migration:
    """Start a cold migration of an ACTIVE or SHUTOFF server (state already checked).

    Raises Forbidden ``admin_required`` (a named host from a non-admin), NotFound
    ``host_not_found``, Conflict ``migration_same_host`` (the named host is the server's),
    NoValidHost (409 ``no_valid_host``, with every host's refusal for an admin), Conflict
    ``state_changed``. Nothing is written when it raises.
    """
    source, forced = _check_start(session, principal, server, host_ref, "migrate")
    return _start(session, settings, principal, server, source, (source,), forced,
                  kind="cold", drain_host_id=drain_host_id, task_state=states.MIGRATING_EXPORT,
                  message="cold migration: the source stops the server and sends its disk",
                  notify_destination=False)


def live_migrate(session: Session, settings: Settings, principal: Principal, server: Server,
                 host_ref: str | None, *, drain_host_id: str | None = None) -> Migration:
    """Start a live migration of an ACTIVE server (the action's state already checked).

    The destination is a host whose agent registered a migration endpoint (the others are
    left out of placement); an admin's named host must have one. Raises what ``migrate``
    raises, and Conflict ``invalid_state`` (not ACTIVE), Conflict
    ``migration_endpoint_missing`` (the named host, or every other host, has no endpoint).
    Nothing is written when it raises.
    """
    if server.status != states.ACTIVE:
        raise Conflict(f"Only an ACTIVE server can be live-migrated, not a {server.status} one.",
                       code="invalid_state", server_status=server.status,
                       task_state=server.task_state, action="migrate")
    source, forced = _check_start(session, principal, server, host_ref, "migrate")
    without = set(repository.hosts_without_endpoint(session))
    if forced is not None and forced in without:
        raise Conflict("The named host registered no live-migration endpoint.",
                       code="migration_endpoint_missing")
    if forced is None and not repository.any_host_with_endpoint(session, exclude=source):
        raise Conflict("No other host registered a live-migration endpoint.",
                       code="migration_endpoint_missing")
    return _start(session, settings, principal, server, source, (source, *sorted(without)),
                  forced, kind="live", drain_host_id=drain_host_id,
                  task_state=states.LIVE_PREPARING,
                  message="live migration: the destination prepares the incoming guest's files",
                  notify_destination=True)


def _start(session: Session, settings: Settings, principal: Principal, server: Server,
           source: str, exclude: tuple[str, ...], forced: str | None, *, kind: str,
           drain_host_id: str | None, task_state: str, message: str,
           notify_destination: bool) -> Migration:
    """Lock the source, place the server, record the migration and move the server to
    MIGRATING/``task_state`` (waking the destination too when ``notify_destination``)."""
    agent_repository.lock_host(session, source)  # lock order: hosts, then the server
    placed = _place(session, settings, principal, server, exclude, forced)
    migration = Migration(
        server_id=server.id, project_id=server.project_id, kind=kind,
        status=repository.PREPARING, source_host_id=source, dest_host_id=placed.host_id,
        server_status=server.status, requested_by=principal.user_id, progress=0,
        drain_host_id=drain_host_id)
    session.add(migration)
    session.flush()
    lifecycle.migration_step(
        session, server, task_state, action="migrate", user_id=principal.user_id,
        result=ACCEPTED, message=message,
        details={"migration_id": migration.id, "kind": kind, "host_id": placed.host_id,
                 "host": placed.host_name, "decision": placed.decision},
        notify=(placed.host_id,) if notify_destination else ())
    return migration


def _check_start(session: Session, principal: Principal, server: Server,
                 host_ref: str | None, action: str) -> tuple[str, str | None]:
    """(source host id, named destination id or None) of a move about to start."""
    if host_ref is not None and not principal.is_admin:
        raise Forbidden("Naming the destination host needs the admin role.",
                        code="admin_required")
    source = server.host_id
    if source is None:  # ACTIVE and SHUTOFF servers are placed; guard the invariant anyway
        raise Conflict("The server holds no host.", code="invalid_state",
                       server_status=server.status, task_state=server.task_state,
                       action=action)
    forced = _host(session, host_ref).id if host_ref is not None else None
    if forced == source:
        raise Conflict("The server is already on that host.", code="migration_same_host")
    return source, forced


def _place(session: Session, settings: Settings, principal: Principal, server: Server,
           exclude: tuple[str, ...], forced: str | None) -> placement.PlacementResult:
    """Claim the server's sizes on a destination chosen with every filter."""
    flavor = session.get(Flavor, server.flavor_id)
    image = session.get(Image, server.image_id)
    group = (session.get(ServerGroup, server.server_group_id)
             if server.server_group_id is not None else None)
    spec = placement.request_spec(
        server_id=server.id, project_id=server.project_id, sizes=server, flavor=flavor,
        image=image, group=group, availability_zone=server.availability_zone,
        request_id=request_id_var.get())
    return placement.place(session, settings, spec, explain_hosts=principal.is_admin,
                           exclude_hosts=exclude, force_host=forced)


def agent_report(session: Session, settings: Settings, host_id: str, server: Server,
                 state: states.Observed, operation_id: str | None,
                 message: str | None) -> bool:
    """Apply an agent's report about a MIGRATING server (both hosts and the server locked).

    An ``error`` from either host reverts the move; the awaited operation's id moves it on.
    Returns False when the report means nothing to the migration (the caller then applies it
    as a plain observation when it comes from the server's own host).
    """
    migration = repository.open_migration(session, server.id)
    if migration is None or host_id not in (migration.source_host_id, migration.dest_host_id):
        return False
    role = "source" if host_id == migration.source_host_id else "destination"
    if state == "error":
        if migration.fault_code == ABORTED_CODE:  # the source carried out an abort request
            revert(session, settings, server, migration, ABORTED_CODE,
                   migration.fault_message or "aborted")
            return True
        revert(session, settings, server, migration, "migration_failed",
               f"The {role} host failed: {message or 'no details'}")
        return True
    pending = lifecycle.pending_operation(server, host_id)
    if pending is None or operation_id != pending.id:
        return False
    if pending.kind == "live_prepare":
        repository.touch(session, migration, status=repository.MIGRATING, progress=5)
        lifecycle.migration_step(
            session, server, states.LIVE_MIGRATING, action="migrate",
            message="the destination is ready; the source copies memory and disk",
            details={"migration_id": migration.id}, notify=(migration.source_host_id,))
        return True
    if pending.kind == "live_migrate":
        _complete(session, settings, server, migration)
        return True
    if pending.kind == "migrate_export":
        if not relay.complete(settings, migration.id):
            revert(session, settings, server, migration, "migration_failed",
                   "The source host reported its files sent, but the relay does not hold them.")
            return True
        repository.touch(session, migration, status=repository.MIGRATING, progress=50)
        lifecycle.migration_step(
            session, server, states.MIGRATING_IMPORT, action="migrate",
            message="the source sent the disk and seed; the destination defines the server",
            details={"migration_id": migration.id}, notify=(migration.dest_host_id or "",))
        return True
    if pending.kind == "migrate_import":
        _complete(session, settings, server, migration)
        return True
    return False


def _return_state(migration: Migration) -> tuple[str, str | None]:
    # A live move never stops the guest. A cold move ends shut off; an ACTIVE server is
    # started again where it lands.
    if migration.kind == "live":
        return states.ACTIVE, None
    if migration.server_status == states.ACTIVE:
        return states.SHUTOFF, states.POWERING_ON
    return states.SHUTOFF, None


def _complete(session: Session, settings: Settings, server: Server,
              migration: Migration) -> None:
    dest = migration.dest_host_id
    assert dest is not None
    freed = repository.release(session, server.id, migration.source_host_id)
    repository.touch(session, migration, status=repository.COMPLETED, progress=100,
                     finished_at=utcnow())
    host = session.get(Host, dest)
    status, task = _return_state(migration)
    lifecycle.migration_ended(
        session, server, host_id=dest,
        availability_zone=host.availability_zone if host else server.availability_zone,
        status=status, task_state=task, action="migrate", result=SUCCESS,
        message=f"{migration.kind} migration completed; the source removes its copy",
        details={"migration_id": migration.id, "host_id": dest,
                 "source_allocations_freed": freed},
        notify=(migration.source_host_id,))
    relay.discard(settings, migration.id)


def revert(session: Session, settings: Settings, server: Server, migration: Migration,
           code: str, message: str) -> None:
    """Return a MIGRATING server to its source as it was, with ``fault`` = (code, message).

    The destination's allocations are released; its agent removes what it built once it no
    longer lists the server. The caller holds both hosts' locks, then the server's.
    """
    dest = migration.dest_host_id
    freed = repository.release(session, server.id, dest) if dest is not None else 0
    repository.touch(session, migration, status=repository.REVERTED, fault_code=code,
                     fault_message=message, finished_at=utcnow())
    source = session.get(Host, migration.source_host_id)
    status, task = _return_state(migration)
    lifecycle.migration_ended(
        session, server, host_id=migration.source_host_id,
        availability_zone=source.availability_zone if source else server.availability_zone,
        status=status, task_state=task, action="migrate", result=ERROR,
        message=f"migration reverted to the source: {message}",
        details={"migration_id": migration.id, "destination_allocations_freed": freed},
        fault=(code, message), notify=(dest,) if dest is not None else ())
    relay.discard(settings, migration.id)


def live_params(session: Session, settings: Settings, server: Server) -> dict[str, Any]:
    """The ``live_migrate`` operation's parameters for the source's agent: the destination's
    registered endpoint and this deployment's downtime and timeout (empty when the
    destination no longer has an endpoint: the agent then fails the step)."""
    migration = repository.open_migration(session, server.id)
    dest = (session.get(Host, migration.dest_host_id)
            if migration is not None and migration.dest_host_id is not None else None)
    if migration is None or dest is None or dest.migration_endpoint is None:
        return {}
    endpoint = dest.migration_endpoint
    return {"migration_id": migration.id, "dest_host_id": dest.id,
            "dest_libvirt_uri": endpoint["libvirt_uri"], "migrate_uri": endpoint["migrate_uri"],
            "dest_instances_dir": endpoint["instances_dir"],
            "dest_image_cache_dir": endpoint["image_cache_dir"],
            "max_downtime_ms": settings.live_migration_max_downtime_ms,
            "timeout_seconds": settings.live_migration_timeout_seconds}


def record_progress(session: Session, host_id: str, server_id: str, *, data_total: int,
                    data_processed: int, data_remaining: int) -> Migration:
    """A source's reading of its live migration's copy: kept on the migration record (which
    also keeps the step from timing out) and recorded as a ``migration_progress`` event.

    Returns the migration; its ``fault_code`` is ``migration_aborted`` when an abort was
    asked for (the agent then aborts the copy). Raises NotFound ``migration_not_found`` when
    ``host_id`` is not the source of a live migration of the server in its copy step (the
    agent then aborts too: the move ended without it).
    """
    migration = repository.open_migration(session, server_id)
    if migration is None or migration.kind != "live" or migration.source_host_id != host_id \
            or migration.status != repository.MIGRATING:
        raise NotFound("No live migration of this server from this host.",
                       code="migration_not_found")
    done = min(data_processed, data_total) * 100 // data_total if data_total > 0 else 0
    progress = max(migration.progress, min(99, 5 + done * 94 // 100))
    repository.touch(session, migration, progress=progress, data_remaining=data_remaining)
    server = session.get(Server, server_id)
    if server is not None:
        lifecycle.record_event(
            session, server, "migration_progress", user_id=None, result=SUCCESS,
            message=f"live migration: {data_remaining} bytes remaining",
            details={"migration_id": migration.id, "data_total": data_total,
                     "data_processed": data_processed, "data_remaining": data_remaining,
                     "progress": progress})
    return migration


def abort(session: Session, settings: Settings, principal: Principal, server: Server) -> Migration:
    """Abort the server's live migration (whoever may migrate the server may abort it).

    While the destination prepares, the move is reverted at once. While the source copies,
    the abort is recorded and the source's agent aborts the copy at its next progress
    report; the guest keeps running on the source and the move ends ``reverted`` with fault
    ``migration_aborted`` (or ``completed``, when the copy finished first). Raises Conflict
    ``migration_not_abortable`` (no live migration in flight, or one already aborting).
    """
    migration = repository.open_migration(session, server.id)
    if migration is None or migration.kind != "live" or migration.fault_code == ABORTED_CODE:
        raise Conflict("The server has no live migration that can be aborted.",
                       code="migration_not_abortable")
    who = "an admin" if principal.is_admin else "its owner"
    message = f"The live migration was aborted by {who}."
    if migration.status == repository.PREPARING:
        for host_id in sorted(h for h in (migration.source_host_id, migration.dest_host_id)
                              if h):
            agent_repository.lock_host(session, host_id)
        locked = agent_repository.lock_server(session, server.id, None)
        assert locked is not None
        revert(session, settings, locked, migration, ABORTED_CODE, message)
        return migration
    repository.touch(session, migration, fault_code=ABORTED_CODE, fault_message=message)
    lifecycle.record_event(session, server, "abort_migration", user_id=principal.user_id,
                           result=ACCEPTED, message="the source aborts the copy",
                           details={"migration_id": migration.id})
    return migration


def relay_migration(session: Session, host_id: str, server_id: str, *,
                    upload: bool) -> Migration:
    """The open migration whose relay ``host_id`` may use now for ``server_id``: the source
    uploads while ``preparing``, the destination downloads while ``migrating``.

    Raises NotFound ``migration_not_found`` otherwise (another host learns nothing).
    """
    migration = repository.open_migration(session, server_id)
    if migration is not None and migration.kind == "cold":
        if upload and migration.source_host_id == host_id \
                and migration.status == repository.PREPARING:
            return migration
        if not upload and migration.dest_host_id == host_id \
                and migration.status == repository.MIGRATING:
            return migration
    raise NotFound("No migration of this server for this host.", code="migration_not_found")


def visible_migrations(session: Session, principal: Principal,
                       server: Server) -> list[Migration]:
    """The server's migrations, newest first (the caller already sees the server)."""
    del principal  # host ids are blanked by the view for non-admins
    return list(repository.server_migrations(session, server.id))


def sweep_stuck(session: Session, settings: Settings, now: datetime | None = None) -> int:
    """Revert every open migration whose step made no progress within
    ``migration_step_timeout_seconds`` (a dead source or destination agent); returns how
    many. Hosts are locked in id order, then the server; a migration that moved on meanwhile
    (or a lost race with another sweeper) is skipped. Then discard the relayed files of
    migrations that ended.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.migration_step_timeout_seconds)
    reverted = 0
    for stale in repository.stale_open(session, cutoff):
        for host_id in sorted(h for h in (stale.source_host_id, stale.dest_host_id) if h):
            agent_repository.lock_host(session, host_id)
        server = agent_repository.lock_server(session, stale.server_id, None)
        migration = repository.open_migration(session, stale.server_id)
        if server is None or migration is None or migration.id != stale.id \
                or migration.updated_at >= cutoff:
            continue
        if stale.kind == "live" and stale.status == repository.MIGRATING \
                and server.status == states.MIGRATING:
            # Only the source's agent knows whether libvirt finished the copy (it goes on
            # without the agent): reverting now could make the destination remove the guest.
            # The agent settles the move from what it finds when it is back.
            continue
        if server.status != states.MIGRATING:
            # Something else took the server over (a delete, an evacuation of its host).
            repository.touch(session, migration, status=repository.ABORTED,
                             fault_code="server_moved", finished_at=utcnow(),
                             fault_message=f"The server became {server.status} meanwhile.")
            continue
        step = server.task_state or "migration"
        try:
            revert(session, settings, server, migration, "migration_timeout",
                   f"The {step} step made no progress within "
                   f"{settings.migration_step_timeout_seconds} s.")
        except Conflict:
            continue
        reverted += 1
    # A move that ended without passing through here (a delete aborts it) leaves its files.
    for migration_id in relay.leftovers(settings):
        found = repository.get(session, migration_id)
        if found is None or found.status in repository.ENDED:
            relay.discard(settings, migration_id)
    return reverted
