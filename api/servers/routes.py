"""Server HTTP routes: /v1/servers, actions and events.

State machine (also in /docs; the source of truth is ``api.servers.states``)::

    BUILD --(agent sees it running)--> ACTIVE <--stop/start--> SHUTOFF
      |                                  |
      |                   reboot soft|hard -> REBOOT --(agent confirms)--> ACTIVE
      +--(spawn fails)--> ERROR (fault code + message)
    any status except DELETING --delete--> DELETING --(agent confirms gone)--> DELETED (hidden)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from api.config import Settings
from api.deps import (
    CurrentUser,
    Principal,
    SessionDep,
    SettingsDep,
    Writer,
    WriteTurn,
    in_unit_of_work,
)
from api.errors import Conflict
from api.fields import PathId
from api.keypairs import service as keypairs
from api.models import Server
from api.servers import service, views
from api.servers.schemas import (
    EventList,
    EventOut,
    Fault,
    FlavorRef,
    ImageRef,
    MarkerId,
    ServerAction,
    ServerCreate,
    ServerList,
    ServerOut,
)

router = APIRouter(prefix="/v1", tags=["servers"])

_STATE_MACHINE = """

**State machine.** `status` is what the server is; `task_state` names the transition in flight
(null when settled).

| status | accepts | then |
|---|---|---|
| BUILD (`scheduling`, `spawning`) | delete | ACTIVE once running; ERROR (`fault`) |
| ACTIVE | stop, reboot, pause, migrate (or live), delete | `powering-off`; REBOOT; MIGRATING |
| SHUTOFF | start, resize, migrate, delete | `powering-on`; `resizing`; MIGRATING |
| REBOOT | hard reboot (over a soft one), delete | ACTIVE once the agent confirms |
| PAUSED | unpause, stop, delete | `unpausing` then ACTIVE (same boot); `powering-off` |
| MIGRATING (`migrating-*`, `live-*`) | delete | on the new host; else back, `fault` |
| ERROR | delete | |
| DELETING | delete (idempotent, 202) | DELETED (hidden) once the agent confirms |

A transition in flight blocks other actions: 409 `invalid_state` with the current `server_status`
and `task_state`. A server with no host (not placed yet) is deleted at once.
"""

StatusFilter = Literal["BUILD", "ACTIVE", "SHUTOFF", "REBOOT", "PAUSED", "DELETING", "ERROR",
                       "MIGRATING"]


def _render(session: SessionDep, principal: Principal,
            servers: Sequence[Server]) -> list[ServerOut]:
    names = views.related_names(session, servers, with_hosts=principal.is_admin)
    flavors, images, hosts = names.flavors, names.images, names.hosts
    return [
        ServerOut(
            id=s.id, name=s.name, project_id=s.project_id, user_id=s.user_id,
            status=s.status, task_state=s.task_state, power_state=s.power_state,
            flavor=FlavorRef(id=s.flavor_id, name=flavors.get(s.flavor_id), vcpus=s.vcpus,
                             ram_mb=s.ram_mb, disk_gb=s.disk_gb),
            image=ImageRef(id=s.image_id, name=images.get(s.image_id)),
            host=hosts.get(s.host_id) if s.host_id else None,
            availability_zone=s.availability_zone, server_group_id=s.server_group_id,
            addresses=list(s.addresses or []),
            fault=(Fault(code=s.fault_code, message=s.fault_message or "")
                   if s.fault_code else None),
            created_at=s.created_at, updated_at=s.updated_at,
        )
        for s in servers
    ]


@router.post("/servers", status_code=202, response_model=ServerOut,
             dependencies=[WriteTurn],
             description="Create a server; it starts in BUILD/`scheduling`. The quota "
             "(instances, vcpus, ram_mb, disk_gb) is checked atomically: over quota is 409 "
             "`quota_exceeded` and nothing is written. `flavor` and `image` are ids or names "
             "visible to the project; `user_data` is base64 or plain text (<= 64 KiB); "
             "`key_data` an OpenSSH public key (or `key_name`, one of the caller's key pairs); "
             "`server_group` an own group's id."
             + _STATE_MACHINE)
async def create_server(body: ServerCreate, principal: Writer, session: SessionDep,
                        settings: SettingsDep) -> ServerOut:
    """Create a server (202: it is built asynchronously)."""
    # The hottest route: its work and the commit in one thread hop (api.deps).
    return await in_unit_of_work(session, _create, session, settings, principal, body)


def _create(session: SessionDep, settings: Settings, principal: Principal,
            body: ServerCreate) -> ServerOut:
    """The blocking part of ``create_server`` (``SessionDep`` only names the session type:
    route modules do not import SQLAlchemy)."""
    body = keypairs.with_key_data(session, principal, body)
    server = service.create_server(session, settings, principal, body)
    return _render(session, principal, [server])[0]


@router.get("/servers", response_model=ServerList,
            description="The project's servers ordered by (created_at, id); DELETED servers "
            "never appear. `name` matches a case-insensitive substring; `status` an exact "
            "status. Admins may pass `all_projects=true`, and `host=<host name>` (all projects' "
            "servers on that host). Pass "
            "`next_marker` as `marker` for the next page; an unknown marker is 400 "
            "`invalid_marker`." + _STATE_MACHINE)
def list_servers(
    principal: CurrentUser, session: SessionDep,
    status: StatusFilter | None = None,
    name: Annotated[str | None, Query(min_length=1, max_length=255,
                                      pattern=r"^[^\x00-\x1f\x7f-\x9f]+$")] = None,
    host: Annotated[str | None, Query(min_length=1, max_length=255,
                                      pattern=r"^[^\x00-\x1f\x7f-\x9f]+$")] = None,
    all_projects: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    marker: MarkerId = None,
) -> ServerList:
    """List servers, one page at a time."""
    page = service.list_servers(session, principal, status=status, name=name, host=host,
                                all_projects=all_projects, limit=limit, marker=marker)
    return ServerList(servers=_render(session, principal, page.servers),
                      next_marker=page.next_marker)


@router.get("/servers/{server_id}", response_model=ServerOut, description=_STATE_MACHINE)
def show_server(server_id: PathId, principal: CurrentUser, session: SessionDep) -> ServerOut:
    """One server (404 `server_not_found` for other projects' or deleted servers)."""
    return _render(session, principal, [service.get_server(session, principal, server_id)])[0]


@router.delete("/servers/{server_id}", status_code=202, response_model=ServerOut,
               dependencies=[WriteTurn],
               description="Start deleting a server: DELETING/`deleting` until its agent "
               "confirms, then DELETED. A server with no host is DELETED at once. Deleting a "
               "DELETING server is idempotent (202, nothing changes). `force=true` (admin) "
               "deletes a server whose host is down without waiting for its agent: its "
               "allocations are freed at once; 409 `host_up` while the host is up."
               + _STATE_MACHINE)
def delete_server(server_id: PathId, principal: Writer, session: SessionDep,
                  settings: SettingsDep, force: bool = False) -> ServerOut:
    """Delete a server (202)."""
    if force:
        server = service.force_delete_server(session, settings, principal, server_id)
    else:
        server = service.delete_server(session, principal, server_id)
    return _render(session, principal, [server])[0]


@router.post("/servers/{server_id}/actions", status_code=202, response_model=ServerOut,
             dependencies=[WriteTurn],
             description='`{"action": "start"}`, `{"action": "stop"}` or `{"action": '
             '"reboot", "type": "soft"|"hard"}`, `{"action": "resize", "flavor": <id or '
             'name>}`, `{"action": "pause"}` or `{"action": "unpause"}`. An action the '
             'current state does not accept is 409 `invalid_state` '
             "(and an `error` event). Resize (SHUTOFF only) stays on the same host: 409 "
             "`no_valid_host` when it has no room, `resize_disk_shrink` for a smaller disk, "
             "`quota_exceeded` for growth over quota; the server is SHUTOFF/`resizing` until "
             "its agent applied the new sizes. `{\"action\": \"migrate\", \"host\": "
             "<admin only>}` moves an ACTIVE or SHUTOFF server to another host (cold); see "
             "`GET /v1/servers/{id}/migrations`." + _STATE_MACHINE)
def server_action(server_id: PathId, body: ServerAction, principal: Writer,
                  session: SessionDep, settings: SettingsDep, request: Request) -> ServerOut:
    """Run an action on a server (202: the agent carries it out)."""
    try:
        server = service.act(session, settings, principal, server_id, body)
    except Conflict as exc:
        # The refusal belongs in the server's history too (result "error"), written in a unit
        # of work of its own. End this one first: it may hold the write lock (SQLite) or a row
        # lock (PostgreSQL) the rejection's unit of work would wait for.
        session.rollback()
        service.record_rejection(request.app.state.sessionmaker, settings, principal, server_id,
                                 body.action, exc)
        raise
    return _render(session, principal, [server])[0]


@router.get("/servers/{server_id}/events", response_model=EventList)
def server_events(
    server_id: PathId, principal: CurrentUser, session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    marker: MarkerId = None,
) -> EventList:
    """Every accepted request and state change of a server, oldest first, one page at a time:
    pass `next_marker` as `marker` for the next page; an unknown marker is 400
    `invalid_marker`. Tenants never see host ids or names in `details`."""
    page = service.list_events(session, principal, server_id, limit=limit, marker=marker)
    return EventList(events=[
        EventOut(id=e.id, action=e.action, user_id=e.user_id, request_id=e.request_id,
                 result=e.result, message=e.message,
                 details=service.visible_details(e, principal), created_at=e.created_at)
        for e in page.events
    ], next_marker=page.next_marker)
