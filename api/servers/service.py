"""Server rules: create (quota + placement), list, show, delete, actions and events.

This module decides whether a request may happen (visibility, quotas, the state machine's
``states.ALLOWED``); ``api.servers.lifecycle`` makes every change of state (generation
compare-and-swap, events, agent notification, subscribers such as billing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from api.config import Settings
from api.db import new_id, session_scope, utcnow
from api.deps import Principal
from api.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound, request_id_var
from api.flavors import service as flavors
from api.hosts.service import is_up
from api.images import service as images
from api.mobility import service as mobility
from api.models import Flavor, Host, Image, Server, ServerEvent, ServerGroup
from api.quotas import service as quotas
from api.scheduler import placement
from api.server_groups import service as server_groups
from api.servers import lifecycle, repository, states
from api.servers.lifecycle import ACCEPTED, ERROR, SUCCESS, NewEvent, record_event, record_events
from api.servers.schemas import (
    MigrateAction,
    RebootAction,
    ResizeAction,
    ServerAction,
    ServerCreate,
)


def get_server(session: Session, principal: Principal, server_id: str) -> Server:
    """A server the caller may see; raises NotFound for other projects' and deleted ones."""
    server = repository.get_server(session, server_id, principal.project_scope)
    if server is None:
        raise NotFound("No such server.", code="server_not_found")
    return server


def _resolve_flavor(session: Session, principal: Principal, ref: str) -> Flavor:
    # Flavors own flavor visibility (public or shared with the project).
    return flavors.get_flavor(session, principal, ref)


def _resolve_image(session: Session, principal: Principal, ref: str) -> Image:
    # Images own image visibility (public or the project's; an ambiguous name is a 409).
    return images.find_image(session, principal, ref)


def _resolve_group(session: Session, project_id: str, ref: str) -> ServerGroup:
    return server_groups.get_project_group(session, project_id, ref)


def create_server(session: Session, settings: Settings, principal: Principal,
                  body: ServerCreate) -> Server:
    """Create a server in BUILD, within quota, in one unit of work.

    Order matters: (1) validate references without writing; (2) lock the project and check
    the quota against live usage; (3) insert the server with the flavor's sizes copied;
    (4) placement (``placement.place``: the scheduler's claim); (5) record the events.
    Raises NotFound (flavor, image, server group), Conflict ``image_not_active`` /
    ``image_name_ambiguous``, InvalidInput ``flavor_too_small`` and QuotaExceeded; any error
    rolls everything back, so nothing is written.
    """
    flavor = _resolve_flavor(session, principal, body.flavor)
    image = _resolve_image(session, principal, body.image)
    if image.status != "active":
        raise Conflict(f"Image {image.id} is {image.status}, not active.",
                       code="image_not_active", image_status=image.status)
    if flavor.disk_gb < image.min_disk or flavor.ram_mb < image.min_ram:
        raise InvalidInput(
            f"Flavor {flavor.name} ({flavor.ram_mb} MB RAM, {flavor.disk_gb} GB disk) is "
            f"smaller than image {image.id} needs ({image.min_ram} MB, {image.min_disk} GB).",
            code="flavor_too_small")

    requested = {"instances": 1, "vcpus": flavor.vcpus, "ram_mb": flavor.ram_mb,
                 "disk_gb": flavor.disk_gb}
    quotas.lock_and_check(session, settings, principal.project_id, requested)
    # Resolved under the project lock: a concurrent group delete cannot slip in between.
    group = (_resolve_group(session, principal.project_id, body.server_group)
             if body.server_group is not None else None)

    # The row is written with Core statements (``repository.insert_server``, then
    # ``lifecycle.placed``): the object mirrors it for the answer and the subscribers and
    # stays out of the session, so no ORM flush is involved.
    now = utcnow()
    server = Server(
        id=new_id(), project_id=principal.project_id, user_id=principal.user_id,
        name=body.name, flavor_id=flavor.id, vcpus=flavor.vcpus, ram_mb=flavor.ram_mb,
        disk_gb=flavor.disk_gb, image_id=image.id, status=states.BUILD,
        task_state=states.SCHEDULING, power_state=None, host_id=None,
        availability_zone=body.availability_zone,
        server_group_id=group.id if group else None, user_data=body.user_data,
        key_data=body.key_data, addresses=[], fault_code=None, fault_message=None,
        generation=1, created_at=now, updated_at=now, deleted_at=None,
    )
    repository.insert_server(session, server)

    # Placement step: the scheduler claims a host here, inside the same transaction; a
    # NoValidHost rolls the server row and the quota usage back with it.
    spec = placement.request_spec(
        server_id=server.id, project_id=server.project_id, sizes=server, flavor=flavor,
        image=image, group=group, availability_zone=server.availability_zone,
        request_id=request_id_var.get())
    # The claim's host UPDATE also moves the agent's cursor (one statement less).
    placed = placement.place(session, settings, spec, explain_hosts=principal.is_admin,
                             wake_host=True)
    # SPAWNING on its host; billing starts once the server exists for good (placed).
    lifecycle.placed(session, server, placed.host_id, placed.availability_zone,
                     cursor_moved=True)
    # The answer shows these names: no need to read them again.
    repository.remember_name(session, Flavor, flavor.id, flavor.name)
    repository.remember_name(session, Image, image.id, image.name)
    repository.remember_name(session, Host, placed.host_id, placed.host_name)
    record_events(
        session, server,
        NewEvent("create", user_id=principal.user_id, result=ACCEPTED,
                 details={"flavor": flavor.name, "image": image.id}),
        NewEvent("schedule", user_id=None, result=SUCCESS,
                 message=f"placed after {placed.attempts} attempt(s)",
                 details={"host_id": placed.host_id, "host": placed.host_name,
                          "availability_zone": placed.availability_zone,
                          "conflicts": placed.conflicts, "decision": placed.decision}))
    return server


@dataclass(frozen=True)
class Page:
    """One page of servers and the marker of the next page (None: last page)."""

    servers: Sequence[Server]
    next_marker: str | None


def list_servers(session: Session, principal: Principal, *, status: str | None,
                 name: str | None, host: str | None, all_projects: bool, limit: int,
                 marker: str | None) -> Page:
    """A page of the caller's servers, ordered by (created_at, id), DELETED never included.

    Raises Forbidden ``admin_required`` for ``host``/``all_projects`` from non-admins and
    DomainError ``invalid_marker`` (400) for a marker that names no server in scope.
    """
    if (host is not None or all_projects) and not principal.is_admin:
        raise Forbidden("Filtering by host or across projects needs the admin role.",
                        code="admin_required")
    # An admin asking for a host's servers means all of them, whichever project owns them.
    project_id = None if all_projects or host is not None else principal.project_id
    after = None
    if marker is not None:
        # Deleted servers remain valid markers, so a delete between pages skips nothing.
        mark = repository.get_server(session, marker, project_id, include_deleted=True)
        if mark is None:
            raise DomainError("The marker is not a server of this listing.",
                              code="invalid_marker")
        after = (mark.created_at, mark.id)
    host_id = None
    if host is not None:
        host_id = repository.host_id_by_name(session, host)
        if host_id is None:
            return Page([], None)
    rows = repository.list_servers(session, project_id=project_id, status=status, name=name,
                                   host_id=host_id, after=after, limit=limit + 1)
    if len(rows) > limit:
        return Page(rows[:limit], rows[limit - 1].id)
    return Page(rows, None)


def delete_server(session: Session, principal: Principal, server_id: str) -> Server:
    """Start deleting a server (any status); raises NotFound.

    A placed server goes to DELETING/``deleting`` and its agent removes it. A server with no
    host is DELETED at once (nothing holds it). Deleting a DELETING server is idempotent: it
    answers 202 again and changes nothing.
    """
    server = get_server(session, principal, server_id)
    lifecycle.delete(session, None, server, user_id=principal.user_id)
    return server


def force_delete_server(session: Session, settings: Settings, principal: Principal,
                        server_id: str) -> Server:
    """Delete a server whose host is down without its agent's confirmation (admin).

    Raises Forbidden ``admin_required``, NotFound, Conflict ``host_up`` when the host still
    sends heartbeats (then the agent must do the delete, so nothing leaks on a live host).
    """
    if not principal.is_admin:
        raise Forbidden("Forcing a delete needs the admin role.", code="admin_required")
    server = get_server(session, principal, server_id)
    host = session.get(Host, server.host_id) if server.host_id else None
    if host is not None and is_up(host, settings):
        raise Conflict(f"Host {host.name} is up: delete without force and its agent "
                       "removes the server.", code="host_up")
    lifecycle.force_delete(session, server, user_id=principal.user_id, settings=settings)
    return server


def act(session: Session, settings: Settings, principal: Principal, server_id: str,
        action: ServerAction) -> Server:
    """Apply start, stop, reboot or resize per the state machine; raises NotFound, Conflict.

    An action the current state does not accept (see ``states.ALLOWED``; a transition in
    flight blocks others, except a hard reboot over a soft one) is 409 ``invalid_state``
    carrying the current ``server_status`` and ``task_state``. Resize also raises what
    ``resize`` raises.
    """
    server = get_server(session, principal, server_id)
    reboot_type = action.type if isinstance(action, RebootAction) else "soft"
    allowed = states.action_allowed(server.status, server.task_state, action.action)
    if server.status == states.REBOOT and reboot_type != "hard":
        allowed = False  # only a hard reboot may override a soft one in flight
    if not allowed:
        raise Conflict(
            f"Cannot {action.action} a server in {server.status}"
            f"{'/' + server.task_state if server.task_state else ''}.",
            code="invalid_state", server_status=server.status, task_state=server.task_state,
            action=action.action)
    if isinstance(action, ResizeAction):
        return resize(session, settings, principal, server, action.flavor)
    if isinstance(action, MigrateAction):
        if action.live:
            mobility.live_migrate(session, settings, principal, server, action.host)
        else:
            mobility.migrate(session, settings, principal, server, action.host)
        return server
    details = {"type": reboot_type} if isinstance(action, RebootAction) else {}
    lifecycle.apply_action(session, server, action.action, user_id=principal.user_id,
                           reboot_type=reboot_type, details=details)
    return server


def resize(session: Session, settings: Settings, principal: Principal, server: Server,
           flavor_ref: str) -> Server:
    """Give a SHUTOFF server (state already checked) another flavor on the same host.

    Order, in one unit of work: (1) resolve the flavor and refuse a smaller disk (409
    ``resize_disk_shrink``) or the same flavor (409 ``resize_same_flavor``); (2) lock the
    project and check the quota for the growth only; (3) re-claim the new sizes on the
    server's host with the scheduler's race-free claim, the current allocations counted as
    freed (409 ``no_valid_host`` when the host has no room); (4) move the server to
    SHUTOFF/``resizing`` (optimistic on its generation, 409 ``state_changed``) with the new
    sizes (``lifecycle.resized``: event, billing), which the agent applies before the task
    clears.
    Raises NotFound ``flavor_not_found``, Conflict, QuotaExceeded, NoValidHost.
    """
    flavor = _resolve_flavor(session, principal, flavor_ref)
    if flavor.id == server.flavor_id:
        raise Conflict(f"The server already has flavor {flavor.name}.",
                       code="resize_same_flavor")
    if flavor.disk_gb < server.disk_gb:
        raise Conflict(
            f"Flavor {flavor.name} has a {flavor.disk_gb} GB disk; the server's is "
            f"{server.disk_gb} GB and disks never shrink.",
            code="resize_disk_shrink", disk_gb=server.disk_gb, flavor_disk_gb=flavor.disk_gb)
    image = session.get(Image, server.image_id)
    if image is not None and (flavor.disk_gb < image.min_disk or flavor.ram_mb < image.min_ram):
        raise InvalidInput(
            f"Flavor {flavor.name} is smaller than image {image.id} needs "
            f"({image.min_ram} MB, {image.min_disk} GB).", code="flavor_too_small")
    old = {"flavor_id": server.flavor_id, "vcpus": server.vcpus, "ram_mb": server.ram_mb,
           "disk_gb": server.disk_gb}
    growth = {"vcpus": max(0, flavor.vcpus - server.vcpus),
              "ram_mb": max(0, flavor.ram_mb - server.ram_mb),
              "disk_gb": max(0, flavor.disk_gb - server.disk_gb)}
    quotas.lock_and_check(session, settings, server.project_id, growth)
    if server.host_id is None:  # SHUTOFF servers are placed; guard the invariant anyway
        raise Conflict("The server holds no host.", code="invalid_state",
                       server_status=server.status, task_state=server.task_state,
                       action="resize")
    spec = placement.request_spec(server_id=server.id, project_id=server.project_id,
                                  sizes=flavor, flavor=flavor, image=image,
                                  request_id=request_id_var.get())
    placed = placement.place(session, settings, spec, explain_hosts=principal.is_admin,
                             force_host=server.host_id, release_held=True)
    lifecycle.resized(
        session, server, flavor.id, flavor.vcpus, flavor.ram_mb, flavor.disk_gb,
        user_id=principal.user_id,
        details={"from": old, "to": {"flavor_id": flavor.id, "flavor": flavor.name,
                 "vcpus": flavor.vcpus, "ram_mb": flavor.ram_mb, "disk_gb": flavor.disk_gb},
                 "host_id": placed.host_id, "attempts": placed.attempts})
    return server


def record_rejection(factory: sessionmaker[Session], settings: Settings, principal: Principal,
                     server_id: str, action: str, error: DomainError) -> None:
    """Record a refused request (e.g. 409 ``invalid_state``) as an ``error`` event.

    Runs its own unit of work, because the request's unit of work rolls back with the error.
    Only for a server the caller may see: nothing is recorded for other projects' ids. At most
    ``settings.rejected_action_events_per_minute`` refusals are recorded per server within
    any 60 seconds, so a client hammering a refused action cannot grow the history without
    bound; the refusals beyond that are answered the same but not recorded.
    """
    for session in session_scope(factory):
        server = repository.get_server(session, server_id, principal.project_scope)
        if server is None:
            return
        since = utcnow() - timedelta(seconds=60)
        if repository.count_rejections(session, server.id, since) >= \
                settings.rejected_action_events_per_minute:
            return
        record_event(session, server, action, user_id=principal.user_id, result=ERROR,
                     message=error.detail, details={"code": error.code})


# What a tenant may see of the scheduler's decision: never host names or ids.
_TENANT_SCHEDULE_KEYS = ("availability_zone", "conflicts")
# Keys naming a host, in any event's details (``observe``, ``resize``, ...): admins only.
_HOST_KEYS = frozenset({"host_id", "host", "host_name"})


def visible_details(event: ServerEvent, principal: Principal) -> dict[str, Any]:
    """An event's details as ``principal`` may see them (host ids and names only for admins)."""
    details = dict(event.details or {})
    if principal.is_admin:
        return details
    if event.action == "schedule":
        decision = details.get("decision") or {}
        shown = {k: details[k] for k in _TENANT_SCHEDULE_KEYS if k in details}
        shown["candidates"] = decision.get("candidates")
        return shown
    return {k: v for k, v in details.items() if k not in _HOST_KEYS}


@dataclass(frozen=True)
class EventPage:
    """One page of a server's events and the marker of the next page (None: last page)."""

    events: Sequence[ServerEvent]
    next_marker: str | None


def list_events(session: Session, principal: Principal, server_id: str, *, limit: int,
                marker: str | None = None) -> EventPage:
    """A page of the server's events, oldest first (by (created_at, id)).

    Raises NotFound, DomainError ``invalid_marker`` (400) for a marker that is not one of
    the server's events.
    """
    server = get_server(session, principal, server_id)
    after = None
    if marker is not None:
        mark = repository.get_event(session, server.id, marker)
        if mark is None:
            raise DomainError("The marker is not an event of this server.",
                              code="invalid_marker")
        after = (mark.created_at, mark.id)
    rows = repository.events(session, server.id, after=after, limit=limit + 1)
    if len(rows) > limit:
        return EventPage(rows[:limit], rows[limit - 1].id)
    return EventPage(rows, None)
