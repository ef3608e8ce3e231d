"""Agent rules: enrollment, inventory, heartbeats, desired state, observations, console.

Contracts other modules follow
------------------------------
* **Desired-state changes.** Whoever changes what an agent should do with a server on a host
  (assigns it to a host, runs an action, deletes it, changes anything listed in
  ``DesiredServer``) bumps ``servers.generation`` and calls ``notify_host(session, host_id)``
  in the same unit of work. Long-polling agents wake within one poll interval of the commit.
  (The cursor also counts live servers and sums their generations, so a forgotten
  ``notify_host`` is caught when the generation was bumped; do both anyway.)
* **Reboot ids.** A REBOOT server's desired state carries ``reboot.id = "r<generation>"``; the
  agent echoes it as ``reboot_done`` once done. A hard reboot over a soft one bumps the
  generation, so an echo of the older soft reboot does not settle the hard one.
* **Resize ids.** A SHUTOFF/``resizing`` server's desired state carries ``resize.id =
  "z<generation>"`` and ``flavor`` already holds the new sizes; the agent redefines the
  shut-off domain (vCPUs, memory), grows the overlay, and reports ``shutoff`` with
  ``resize_done`` = that id. Only then does the server settle (task_state null), so a start
  never boots the old definition.
* **Transitions.** Every status change caused by an agent (or ``force_delete``) calls
  ``on_transition(session, server, old_status, new_status, seen_at)``, which runs every
  function in ``TRANSITION_HOOKS`` inside the same unit of work (billing hooks in there).
  Every applied observation, with or without a status change, also runs
  ``OBSERVATION_HOOKS`` (billing: a server seen running again after its host was down).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.agent import repository
from api.agent.schemas import (
    DesiredServer,
    EnrollIn,
    FlavorSpec,
    ImageSpec,
    InventoryIn,
    InventoryOut,
    ObservationIn,
    ObservedItem,
    RebootSpec,
    ResizeSpec,
)
from api.config import Settings
from api.db import utcnow
from api.errors import Conflict, NotFound, Unauthorized, request_id_var
from api.hosts import repository as hosts_repository
from api.hosts import service as hosts_service
from api.models import AgentObservation, Host, Image, Inventory, Server, ServerEvent
from api.models.compute import RESOURCE_CLASSES
from api.security import HOST_CREDENTIAL_PREFIX, digest, new_secret
from api.servers import states

TransitionHook = Callable[[Session, Server, str, str, datetime], None]
TRANSITION_HOOKS: list[TransitionHook] = []
"""Called on every agent-driven status change, in order, inside the unit of work."""

ObservationHook = Callable[[Session, Server, str, datetime], None]
OBSERVATION_HOOKS: list[ObservationHook] = []
"""Called on every applied (not stale) observation, after any transition: ``fn(session,
server, observed_state, seen_at)``. Billing uses it to resume after a host came back."""


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
    """
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
    session.flush()
    if changed:
        hosts_repository.bump_generation(session, host_id)
    host = hosts_service.get_host(session, host_id)
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


def heartbeat(session: Session, settings: Settings, host_id: str,
              observed: list[ObservedItem]) -> HeartbeatResult:
    """Record the heartbeat (API clock) and apply the observations of this host's servers.

    Observations of servers not on this host (or unknown ids) are ignored and listed.
    """
    host = hosts_service.get_host(session, host_id)
    host.last_heartbeat_at = utcnow()
    session.flush()
    applied, ignored = 0, []
    # A fixed order, so two requests of one agent never lock rows in opposite orders.
    for item in sorted(observed, key=lambda o: o.server_id):
        server = repository.lock_server(session, item.server_id, host_id)
        if server is None:
            ignored.append(item.server_id)
            continue
        if apply_observation(session, settings, host_id, server, item.state, item.seen_at):
            applied += 1
    return HeartbeatResult(host, applied, ignored)


def observe(session: Session, settings: Settings, host_id: str, server_id: str,
            body: ObservationIn) -> tuple[Server, bool]:
    """Apply one keyed observation; returns the server and whether it was applied.

    A repeated ``idempotency_key`` changes nothing. Raises NotFound ``server_not_found`` when
    the server is not a live server of this host.
    """
    repository.lock_host(session, host_id)  # lock order: host, then server
    server = repository.lock_server(session, server_id, host_id)
    if server is None:
        raise NotFound("No such server on this host.", code="server_not_found")
    if repository.observation_by_key(session, host_id, body.idempotency_key) is not None:
        return server, False
    addresses = ([a.model_dump(mode="json", exclude_none=True) for a in body.addresses]
                 if body.addresses is not None else None)
    applied = apply_observation(
        session, settings, host_id, server, body.state, body.seen_at,
        key=body.idempotency_key, reboot_done=body.reboot_done,
        resize_done=body.resize_done, message=body.message,
        addresses=addresses,
    )
    return server, applied


def reboot_id(server: Server) -> str:
    """The id of the reboot a REBOOT server waits for (see the module docstring)."""
    return f"r{server.generation}"


def resize_id(server: Server) -> str:
    """The id of the resize a SHUTOFF/``resizing`` server waits for (module docstring)."""
    return f"z{server.generation}"


def apply_observation(session: Session, settings: Settings, host_id: str, server: Server,
                      state: states.Observed, seen_at: datetime, *, key: str | None = None,
                      reboot_done: str | None = None, resize_done: str | None = None,
                      message: str | None = None,
                      addresses: list[Any] | None = None) -> bool:
    """Move a locked server per ``states.on_observed``; False for a stale observation.

    ``seen_at`` is clamped to the API clock (an agent clock ahead of ours must not bill the
    future). An observation seen before the newest recorded one is stale: it is recorded (its
    key stays used) but changes nothing, so a late retry cannot undo a newer state.
    """
    seen = min(seen_at, utcnow())
    last = repository.last_seen_at(session, server.id)
    if last is not None and seen < last:
        if key is not None:
            session.add(AgentObservation(host_id=host_id, idempotency_key=key,
                                         server_id=server.id, state=state, seen_at=seen))
            session.flush()
        return False
    old = server.status
    done = reboot_done is not None and reboot_done == reboot_id(server)
    resized = resize_done is not None and resize_done == resize_id(server)
    move = states.on_observed(server.status, server.task_state, state, reboot_done=done,
                              resize_done=resized)
    if state in ("running", "shutoff", "absent"):
        server.power_state = state
    if addresses is not None:
        server.addresses = addresses
    if move is not None:
        server.status, server.task_state = move.status, move.task_state
        if move.status == states.ERROR:
            server.fault_code = "spawn_failed"
            server.fault_message = message or "The hypervisor could not start the server."
        if move.status == states.DELETED:
            _finish_delete(session, settings, server, seen)
        server.generation += 1
        repository.bump_desired_generation(session, host_id)
    if key is not None or move is not None:
        session.add(AgentObservation(
            host_id=host_id, idempotency_key=key or f"auto-{uuid.uuid4()}",
            server_id=server.id, state=state, seen_at=seen,
            transition=f"{old}->{move.status}" if move else "",
        ))
    session.flush()
    if move is not None:
        on_transition(session, server, old, move.status, seen)
        record_event(session, server, "observe", user_id=None,
                     result="error" if move.status == states.ERROR else "success",
                     message=message or f"{old} -> {move.status} (agent saw {state})",
                     details={"state": state, "seen_at": seen.isoformat(), "host_id": host_id})
    for hook in OBSERVATION_HOOKS:
        hook(session, server, state, seen)
    return True


def _finish_delete(session: Session, settings: Settings | None, server: Server,
                   when: datetime) -> None:
    server.status, server.task_state = states.DELETED, None
    server.deleted_at = when
    repository.delete_allocations(session, server.id)
    if settings is not None:
        with contextlib.suppress(FileNotFoundError):
            console_path(settings, server.id).unlink()


def force_delete(session: Session, server: Server, *, user_id: str | None = None,
                 settings: Settings | None = None) -> None:
    """Delete a server without the agent's confirmation (its host is down), as if confirmed.

    Frees the allocations, marks it DELETED, tells the host (should it come back, its agent
    sees the server gone and removes the leftovers) and runs the transition hooks.
    """
    if server.status == states.DELETED:
        return
    old, now = server.status, utcnow()
    _finish_delete(session, settings, server, now)
    server.generation += 1
    if server.host_id is not None:
        notify_host(session, server.host_id)
    session.flush()
    on_transition(session, server, old, states.DELETED, now)
    record_event(session, server, "force_delete", user_id=user_id, result="success",
                 message="Deleted without the agent's confirmation.")


def on_transition(session: Session, server: Server, old_status: str, new_status: str,
                  seen_at: datetime) -> None:
    """Run every ``TRANSITION_HOOKS`` function for one status change."""
    for hook in TRANSITION_HOOKS:
        hook(session, server, old_status, new_status, seen_at)


def record_event(session: Session, server: Server, action: str, *, user_id: str | None,
                 result: str, message: str = "", details: dict[str, Any] | None = None) -> None:
    """Record a server event through the servers service when it exists, else directly."""
    try:
        servers_service = importlib.import_module("api.servers.service")
    except ImportError:
        servers_service = None
    shared = getattr(servers_service, "record_event", None)
    if callable(shared):
        shared(session, server, action, user_id=user_id, result=result, message=message,
               details=details)
        return
    session.add(ServerEvent(server_id=server.id, project_id=server.project_id, action=action,
                            user_id=user_id, request_id=request_id_var.get(), result=result,
                            message=message, details=details or {}))
    session.flush()


# ---------------------------------------------------------------- desired state

def notify_host(session: Session, host_id: str) -> None:
    """Wake the host's long-polling agent: call after changing any of its servers."""
    repository.bump_desired_generation(session, host_id)


def cursor(session: Session, host_id: str) -> str | None:
    """The host's opaque desired-state cursor; None when the host no longer exists."""
    parts = repository.cursor_parts(session, host_id)
    return None if parts is None else ".".join(str(p) for p in parts)


_NOT_HOSTNAME = re.compile(r"[^a-z0-9-]+")


def safe_hostname(name: str, server_id: str) -> str:
    """A DNS label derived from the server name (``server-<id8>`` when nothing is left)."""
    label = _NOT_HOSTNAME.sub("-", name.lower()).strip("-")[:63].strip("-")
    return label or f"server-{server_id[:8]}"


def _desired(server: Server, image: Image) -> DesiredServer:
    props = image.properties or {}
    reboot = None
    if server.status == states.REBOOT:
        kind = "hard" if server.task_state == states.REBOOTING_HARD else "soft"
        reboot = RebootSpec(id=reboot_id(server), type=kind)
    resize = (ResizeSpec(id=resize_id(server))
              if server.status == states.SHUTOFF and server.task_state == states.RESIZING
              else None)
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
        reboot=reboot, resize=resize, status=server.status, task_state=server.task_state,
        generation=server.generation,
    )


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def desired_servers(session: Session, host_id: str) -> tuple[str, list[DesiredServer]]:
    """The cursor and every live server of the host; raises Unauthorized if the host is gone.

    The cursor is read first, so a change racing with this read makes the next poll return
    at once rather than be missed.
    """
    current = cursor(session, host_id)
    if current is None:
        raise Unauthorized("The host no longer exists.", code="invalid_host_credential")
    rows = repository.live_servers_with_images(session, host_id)
    return current, [_desired(s, i) for s, i in rows]


# ---------------------------------------------------------------- console

def console_path(settings: Settings, server_id: str) -> Path:
    """The console file of a server, named only from its parsed UUID; raises NotFound."""
    try:
        name = str(uuid.UUID(server_id))
    except ValueError:
        raise NotFound("No such server.", code="server_not_found") from None
    return settings.console_dir / f"{name}.log"


def write_console(settings: Settings, server_id: str, data: bytes) -> int:
    """Replace the stored console tail (last ``console_max_bytes``) atomically; returns size."""
    path = console_path(settings, server_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data[-settings.console_max_bytes:]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".console-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return len(data)


def read_console(settings: Settings, server_id: str, lines: int | None) -> str:
    """The stored tail as text, optionally only its last ``lines`` lines ("" if none yet)."""
    try:
        raw = console_path(settings, server_id).read_bytes()
    except FileNotFoundError:
        return ""
    text = raw.decode("utf-8", errors="replace")
    if lines is not None:
        text = "".join(text.splitlines(keepends=True)[-lines:]) if lines else ""
    return text


def get_live_server(session: Session, server_id: str) -> Server:
    """A server that is not DELETED; raises NotFound."""
    server = session.get(Server, server_id)
    if server is None or server.status == states.DELETED:
        raise NotFound("No such server.", code="server_not_found")
    return server


