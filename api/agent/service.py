"""Agent rules: enrollment, inventory, heartbeats, desired state, observations, console.

The agent endpoints are an adapter: they authenticate hosts, keep observations idempotent
(one row per ``idempotency_key``) and in order (a report older than the newest one changes
nothing), and translate what agents see into ``api.servers.lifecycle`` calls, which own every
server transition.

Contracts with the agent
------------------------
* **Desired state.** ``DesiredServer.desired`` is the power state libvirt should show
  (``states.desired_power``); the long-poll cursor moves whenever ``lifecycle.notify_host``
  ran for the host (and, as a safety net, when the live servers' generations change).
* **Pending operations.** A one-shot action (reboot, resize) is handed over as
  ``operation = {id, kind, params}``; the agent performs it once and reports
  ``operation = {operation_id, result}`` in an observation. The id carries the server's
  generation, so a hard reboot over a soft one has a new id and a late report of the soft one
  settles nothing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.agent import repository
from api.agent.liveness import HeartbeatBuffer
from api.agent.schemas import (
    DesiredServer,
    EnrollIn,
    FlavorSpec,
    ImageSpec,
    InventoryIn,
    InventoryOut,
    ObservationIn,
    ObservedItem,
    OperationSpec,
)
from api.config import Settings
from api.db import utcnow
from api.errors import Conflict, NotFound, Unauthorized
from api.evacuation.service import require_fenced
from api.hosts import repository as hosts_repository
from api.hosts import service as hosts_service
from api.hosts.schemas import ForeignDomain, LoopProgress
from api.mobility import repository as mobility_repository
from api.mobility import service as mobility
from api.models import AgentObservation, Host, Image, Inventory, Server
from api.models.compute import RESOURCE_CLASSES
from api.security import HOST_CREDENTIAL_PREFIX, digest, new_secret
from api.servers import lifecycle, states
from api.servers.changes import Change
from api.servers.console import console_path, read_console, write_console
from api.servers.subscribers import confirmation_predicates, publish, record_nothing

__all__ = ["console_path", "read_console", "write_console"]  # the console routes use them


# ---------------------------------------------------------------- enrollment and inventory

def enroll(session: Session, body: EnrollIn) -> tuple[Host, str]:
    """Register a new host and issue its credential; the token is spent on success only.

    An enrollment token enrolls exactly one *new* host. A name that is already enrolled is
    refused, so a leaked or spare token cannot take over an existing host (its servers,
    user_data and keys): replacing a host's credential is the admin action
    ``POST /v1/hosts/{id}/credential``.

    Raises Unauthorized ``invalid_enrollment_token`` for an unknown, used or expired token,
    Conflict ``host_exists`` for a known name (the unit of work rolls back, so the token
    stays unused and the existing host's credential keeps working).
    """
    token_digest = digest(body.token)
    # The token is checked before the name, so an anonymous caller cannot probe host names.
    if not repository.consume_enrollment_token(session, token_digest, utcnow()):
        raise Unauthorized("The enrollment token is unknown, used or expired.",
                           code="invalid_enrollment_token")
    if repository.host_by_name(session, body.name) is not None:
        raise Conflict(f"A host named {body.name!r} is already enrolled; an admin replaces "
                       "its credential with 'minicloud host credential rotate'.",
                       code="host_exists")
    credential = new_secret(HOST_CREDENTIAL_PREFIX)
    host = Host(name=body.name, availability_zone=body.availability_zone,
                libvirt_uri=body.libvirt_uri, virt_type=body.virt_type,
                architecture=body.architecture, credential_digest=digest(credential))
    session.add(host)
    try:
        session.flush()
    except IntegrityError as exc:  # another enrollment of the same name won the race
        raise Conflict(f"A host named {body.name!r} is already enrolled.",
                       code="host_exists") from exc
    repository.set_token_host(session, token_digest, host.id)
    return host, credential


def put_inventory(session: Session, settings: Settings, host_id: str,
                  body: InventoryIn) -> InventoryOut:
    """Upsert the host's inventories; admin-set ratios stay, ``reserved`` null keeps it.

    A total below what is already allocated is accepted (the hardware is what it is) and
    reported in ``overcommitted``; the scheduler then simply finds no room there.
    Raises Conflict ``fencing_required`` (``api.evacuation.service.require_fenced``).
    """
    require_fenced(session, host_id)
    invs = hosts_repository.inventories(session, [host_id])[host_id]
    changed = False
    for rc in RESOURCE_CLASSES:
        item = getattr(body, rc)
        if item is None:
            continue
        inv = invs.get(rc)
        if inv is None:
            inv = Inventory(host_id=host_id, resource_class=rc, total=item.total,
                            reserved=item.reserved or 0, min_unit=item.min_unit,
                            max_unit=item.max_unit)
            session.add(inv)
            changed = True
            continue
        new = (item.total, inv.reserved if item.reserved is None else item.reserved,
               item.min_unit, item.max_unit)
        if new != (inv.total, inv.reserved, inv.min_unit, inv.max_unit):
            inv.total, inv.reserved, inv.min_unit, inv.max_unit = new
            changed = True
    host = hosts_service.get_host(session, host_id)
    if "migration" in body.model_fields_set:
        endpoint = body.migration.model_dump() if body.migration is not None else None
        if endpoint != host.migration_endpoint:
            host.migration_endpoint = endpoint
    session.flush()
    if changed:
        hosts_repository.bump_generation(session, host_id)
    view = hosts_service.host_views(session, settings, [host])[0]
    over = [rc for rc, r in view.resources.items() if r.allocated > r.capacity]
    return InventoryOut(resources=view.resources, overcommitted=over)


# ---------------------------------------------------------------- heartbeat and observations

@dataclass
class HeartbeatResult:
    """What a heartbeat changed."""

    host: Host
    applied: int
    ignored: list[str]
    full_report: bool = False


def heartbeat(session: Session, settings: Settings, host_id: str,
              observed: list[ObservedItem],
              foreign: list[ForeignDomain] | None = None,
              progress: LoopProgress | None = None,
              buffer: HeartbeatBuffer | None = None, *, fast: bool = True,
              full: bool = True) -> HeartbeatResult:
    """Record the heartbeat (API clock) and apply the observations of this host's servers.

    Observations of servers not on this host (or unknown ids) are ignored and listed.
    ``foreign`` (when given) replaces the host's list of quarantined domains of other hosts;
    ``progress`` (when given) is the agent's loop progress (``hosts.service.record_progress``).

    With a ``buffer`` (``api.agent.liveness``), a heartbeat of a host that is up and that
    changes nothing else (every observation confirms what is stored) writes nothing: its time
    and loop progress go to the buffer, which the process flushes in one statement.
    Confirming observations are skipped without a lock; everything else takes the full path
    below. Raises Conflict ``fencing_required`` while evacuated servers wait to be fenced: the
    host stays down until its agent removed their old copies (a host that is up never has
    any: only a down host is evacuated, and this check keeps it down).

    ``full=False``: the agent sent only what changed since its last acknowledged heartbeat.
    From a host that was not up that is not enough (after a silence billing must hear every
    server's state again): the answer asks for a full report (``full_report``).
    """
    host = hosts_service.get_host(session, host_id)
    now = utcnow()
    up = (host.last_heartbeat_at is not None and now - host.last_heartbeat_at
          < timedelta(seconds=settings.host_down_after_seconds) / 2)
    full_report = not full and not up
    if foreign is not None:
        domains = [f.model_dump() for f in foreign]
        if domains != host.foreign_domains:
            host.foreign_domains = domains
    # One read of the host's servers tells which observations merely confirm the stored
    # state; only while the host is up (after a silence billing must hear "running" again).
    # ``fast=False``: the full path for every observation (a subscriber needs the locks).
    stored = (repository.observed_servers(session, host_id) if observed and up and fast
              else {})
    applied, wrote = 0, False
    ignored: list[str] = []
    # A fixed order, so two requests of one agent never lock rows in opposite orders.
    for item in sorted(observed, key=lambda o: o.server_id):
        known = stored.get(item.server_id)
        if known is not None and _confirms(known[0], item):
            confirmed, last, summary = known  # ``stored`` keeps the summary loaded
            seen = min(item.seen_at, now)
            if last is not None and seen < last:
                continue  # stale: the full path would change nothing either
            # A subscriber that records something (billing resuming after the host was
            # reported down) or may needs the locks: the full path, asked before anything is
            # recorded. (On SQLite a transaction begins at the first write, and the ledger's
            # first write is a savepoint's: its release would commit the entry at once, and
            # the rollback below would drop only the summary and pieces written after it.)
            if not record_nothing(confirmed.status, item.state, seen,
                                  summary.state if summary is not None else None,
                                  summary.last_s if summary is not None else None):
                session.rollback()
                return heartbeat(session, settings, host_id, observed, foreign, progress,
                                 buffer, fast=False, full=full)
            # Subscribers still hear it, as on the full path; one that recorded something
            # all the same: start over on the full path, dropping what this pass did.
            if publish(session, Change("observed", confirmed, seen, confirmed.status,
                                       observed=item.state)):
                session.rollback()
                return heartbeat(session, settings, host_id, observed, foreign, progress,
                                 buffer, fast=False, full=full)
            applied += 1
            continue
        if not wrote:
            wrote = True
            repository.lock_host(session, host_id)  # lock order: host, then server
        server = repository.lock_server(session, item.server_id, host_id)
        if server is None:
            ignored.append(item.server_id)
            continue
        if apply_observation(session, settings, host_id, server, item.state, item.seen_at):
            applied += 1
    if buffer is not None and up and not wrote and not session.is_modified(host):
        moved = progress is not None and hosts_service.progress_moved(host, progress)
        assert host.credential_digest is not None  # the caller authenticated with it
        buffer.record(host_id, host.credential_digest, now,
                      progress.model_dump(mode="json") if progress is not None else None,
                      now if moved else None)
        # The answer shows the time the flush will write; the stored one stays until then.
        session.expunge(host)
        host.last_heartbeat_at = now
        return HeartbeatResult(host, applied, ignored, full_report)
    if buffer is not None:
        buffer.forget(host_id)
    host.last_heartbeat_at = now
    if progress is not None:
        hosts_service.record_progress(host, progress, now)
    session.flush()
    # Checked under the host row's lock (taken by the write above), so an evacuation that
    # committed while this heartbeat waited for it is seen, and the heartbeat rolls back.
    require_fenced(session, host_id)
    return HeartbeatResult(host, applied, ignored, full_report)


def _confirms(server: Server, item: ObservedItem) -> bool:
    """Whether an observation only confirms the stored state: no transition, no new power
    state, no pending operation (the full path would change nothing)."""
    return (item.state == server.power_state
            and lifecycle.pending_operation(server) is None
            and states.on_observed(server.status, server.task_state, item.state) is None)


def confirmed(rows: Mapping[str, repository.ConfirmationRow], observed: list[ObservedItem],
              now: datetime) -> int | None:
    """How many of an up host's observations apply when every one only confirms the stored
    state (``rows``: ``repository.confirmation_rows``); None when one needs the full path.

    The rule of :func:`heartbeat`'s shortcut, decided without the ORM or a lock: the reported
    state is the stored power state, no operation is pending, the lifecycle makes no
    transition and no subscriber records anything (each one's ``records_nothing``,
    ``api.servers.subscribers``; billing's summary tells: after a ``host_down`` it records
    "running" again, so that heartbeat takes the full path). A stale report (seen before the
    newest recorded one) changes nothing and is not counted, as on the full path. An unknown
    server, or a subscriber without ``records_nothing``, sends the heartbeat to the full path
    too (it lists the unknown id; such a subscriber may need to hear every report).
    """
    if confirmation_predicates() is None:
        return None
    applied = 0
    for item in observed:
        row = rows.get(item.server_id)
        if row is None:
            return None
        status, task_state, power_state, last, summary_state, summary_last_s = row
        if (item.state != power_state
                or states.pending_operation(status, task_state, "source") is not None
                or states.on_observed(status, task_state, item.state) is not None):
            return None
        seen = min(item.seen_at, now)
        if last is not None and seen < last:
            continue
        if not record_nothing(status, item.state, seen, summary_state, summary_last_s):
            return None
        applied += 1
    return applied


def observe(session: Session, settings: Settings, host_id: str, server_id: str,
            body: ObservationIn) -> tuple[Server, bool]:
    """Apply one keyed observation; returns the server and whether it was applied.

    A repeated ``idempotency_key`` changes nothing. Raises NotFound ``server_not_found`` when
    the server is not a live server of this host, Conflict ``fencing_required``.
    """
    # Lock order: hosts (both of a migration, in id order), then the server.
    for locked in sorted({host_id} | mobility_repository.hosts_of_open(session, server_id)):
        repository.lock_host(session, locked)
    require_fenced(session, host_id)  # under the host lock, as in heartbeat
    server = repository.lock_server(session, server_id, host_id)
    if server is None and mobility_repository.is_incoming(session, host_id, server_id):
        server = repository.lock_server(session, server_id, None)  # a migration's destination
    if server is None:
        raise NotFound("No such server on this host.", code="server_not_found")
    if repository.observation_by_key(session, host_id, body.idempotency_key) is not None:
        return server, False
    operation_id = body.operation.operation_id if body.operation is not None else None
    if server.status == states.MIGRATING and mobility.agent_report(
            session, settings, host_id, server, body.state, operation_id, body.message):
        _remember(session, host_id, server, body)
        return server, True
    if server.host_id != host_id:
        return server, False  # a destination's plain report: its copy is not the server yet
    addresses = ([a.model_dump(mode="json", exclude_none=True) for a in body.addresses]
                 if body.addresses is not None else None)
    applied = apply_observation(
        session, settings, host_id, server, body.state, body.seen_at,
        key=body.idempotency_key, operation_id=operation_id, message=body.message,
        addresses=addresses, unexpected_stop=body.unexpected_stop,
    )
    return server, applied


def _remember(session: Session, host_id: str, server: Server, body: ObservationIn) -> None:
    """Record a report a migration consumed, so a retry of it changes nothing."""
    session.add(AgentObservation(
        host_id=host_id, idempotency_key=body.idempotency_key, server_id=server.id,
        state=body.state, seen_at=min(body.seen_at, utcnow()), transition="migration"))
    session.flush()


def apply_observation(session: Session, settings: Settings, host_id: str, server: Server,
                      state: states.Observed, seen_at: datetime, *, key: str | None = None,
                      operation_id: str | None = None, message: str | None = None,
                      addresses: list[Any] | None = None,
                      unexpected_stop: str | None = None) -> bool:
    """Hand one observation of a locked server to the lifecycle; False when it is stale.

    ``seen_at`` is clamped to the API clock (an agent clock ahead of ours must not bill the
    future). An observation seen before the newest recorded one is stale: it changes nothing,
    so a late retry cannot undo a newer state, and it is not recorded, so its key stays free:
    a later, current report under the same key is still applied (a burnt key would leave the
    server in DELETING, REBOOT or resizing for good).
    """
    seen = min(seen_at, utcnow())
    last = repository.last_seen_at(session, server.id)
    if last is not None and seen < last:
        return False
    old = server.status
    move = lifecycle.observe(session, settings, host_id, server, state, seen,
                             operation_id=operation_id, message=message, addresses=addresses,
                             unexpected_stop=unexpected_stop)
    if key is not None or move is not None:
        session.add(AgentObservation(
            host_id=host_id, idempotency_key=key or f"auto-{uuid.uuid4()}",
            server_id=server.id, state=state, seen_at=seen,
            transition=f"{old}->{move.status}" if move else "",
        ))
        session.flush()
    return True


# ---------------------------------------------------------------- desired state

def cursor(session: Session | Connection, host_id: str) -> str | None:
    """The host's opaque desired-state cursor; None when the host no longer exists."""
    parts = repository.cursor_parts(session, host_id)
    return None if parts is None else ".".join(str(p) for p in parts)


def cursors(conn: Connection, host_ids: Sequence[str]) -> dict[str, str]:
    """``cursor`` of several hosts in one statement; a host that no longer exists is absent."""
    return {host_id: ".".join(str(p) for p in parts)
            for host_id, parts in repository.cursor_parts_of(conn, host_ids).items()}


_NOT_HOSTNAME = re.compile(r"[^a-z0-9-]+")


def safe_hostname(name: str, server_id: str) -> str:
    """A DNS label derived from the server name (``server-<id8>`` when nothing is left)."""
    label = _NOT_HOSTNAME.sub("-", name.lower()).strip("-")[:63].strip("-")
    return label or f"server-{server_id[:8]}"


def _desired(server: Server, image: Image, host_id: str) -> DesiredServer:
    props = image.properties or {}
    pending = lifecycle.pending_operation(server, host_id)
    operation = (OperationSpec(id=pending.id, kind=pending.kind, params=pending.params)
                 if pending is not None else None)
    return DesiredServer(
        server_id=server.id, project_id=server.project_id, name=server.name,
        hostname=safe_hostname(server.name, server.id),
        flavor=FlavorSpec(vcpus=server.vcpus, ram_mb=server.ram_mb, disk_gb=server.disk_gb),
        image=ImageSpec(
            id=image.id, sha256=image.sha256, disk_format=image.disk_format, size=image.size,
            kernel_id=_str_or_none(props.get("kernel_id")),
            ramdisk_id=_str_or_none(props.get("ramdisk_id")),
            kernel_cmdline=_str_or_none(props.get("kernel_cmdline")),
        ),
        user_data=server.user_data, key_data=server.key_data,
        desired=states.desired_power(server.status, server.task_state),
        operation=operation, status=server.status, task_state=server.task_state,
        generation=server.generation,
    )


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def desired_servers(session: Session, host_id: str,
                    settings: Settings | None = None) -> tuple[str, list[DesiredServer]]:
    """The cursor and every live server of the host; raises Unauthorized if the host is gone.

    The cursor is read first, so a change racing with this read makes the next poll return
    at once rather than be missed. Raises Conflict ``fencing_required`` while evacuated servers
    of the host wait to be fenced: an agent back from the dead learns nothing it could start.
    """
    require_fenced(session, host_id)
    current = cursor(session, host_id)
    if current is None:
        raise Unauthorized("The host no longer exists.", code="invalid_host_credential")
    rows = [*repository.live_servers_with_images(session, host_id),
            *mobility_repository.incoming_with_images(session, host_id)]
    out = [_desired(s, i, host_id) for s, i in rows]
    for d, (s, _) in zip(out, rows, strict=True):
        if d.operation is not None and d.operation.kind == "live_migrate":
            # The source needs the destination's endpoint and the deployment's limits.
            d.operation.params = mobility.live_params(session, settings or Settings(), s)
    return current, out


# ---------------------------------------------------------------- console

def get_live_server(session: Session, server_id: str) -> Server:
    """A server that is not DELETED; raises NotFound."""
    server = session.get(Server, server_id)
    if server is None or server.status == states.DELETED:
        raise NotFound("No such server.", code="server_not_found")
    return server


