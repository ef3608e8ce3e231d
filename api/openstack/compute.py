"""Compute v2.1 subset at /compute: servers, actions, console, flavors, key pairs, server
groups, availability zones, quotas and limits, shaped as Nova shapes them.

Only microversion 2.1 is advertised, so every request is 2.1 whatever it asks for. Each route
calls the service ``/v1`` calls (``api.servers.service``, ``api.flavors.service``, ...).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.agent import service as agent_service
from api.config import Settings
from api.db import utcnow
from api.deps import Principal, SessionDep, SettingsDep
from api.errors import Conflict, Forbidden, InvalidInput, NotFound
from api.flavors import service as flavors
from api.hosts import repository as hosts_repo
from api.hosts import service as hosts
from api.hosts.schemas import HostOut
from api.keypairs import service as keypairs
from api.keypairs.schemas import KeyPairCreate
from api.models import Flavor, Host, KeyPair, Server, ServerGroup
from api.openstack import repository
from api.openstack.auth import BaseUrl, OsAdmin, OsUser, OsWriter, os_id
from api.openstack.identity import stamp
from api.quotas import service as quotas
from api.server_groups import service as server_groups
from api.server_groups.schemas import ServerGroupCreate
from api.servers import repository as servers_repo
from api.servers import service as servers
from api.servers.schemas import RebootAction, ServerCreate, StartAction, StopAction
from api.usage import reports
from api.usage import service as usage_service

router = APIRouter(prefix="/compute", tags=["openstack compute"], include_in_schema=False)

_UPDATED = "2013-07-23T11:33:21Z"
# Nova's power_state numbers (nova/compute/power_state.py) for what agents observe.
_POWER = {"running": 1, "paused": 3, "shutoff": 4, "crashed": 6}
# minicloud status -> (Nova vm_state, Nova status).
_VM_STATE = {"BUILD": "building", "ACTIVE": "active", "SHUTOFF": "stopped",
             "REBOOT": "active", "ERROR": "error", "DELETING": "active", "DELETED": "deleted",
             "MIGRATING": "active"}
_STATUS_FILTER = {"BUILD": "BUILD", "ACTIVE": "ACTIVE", "SHUTOFF": "SHUTOFF",
                  "REBOOT": "REBOOT", "HARD_REBOOT": "REBOOT", "ERROR": "ERROR",
                  "DELETING": "DELETING", "MIGRATING": "MIGRATING"}
MAX_LIMIT = 1000


def _version(base: str) -> dict[str, Any]:
    return {"id": "v2.1", "status": "CURRENT", "version": "2.1", "min_version": "2.1",
            "updated": _UPDATED,
            "links": [{"rel": "self", "href": f"{base}/compute/v2.1/"},
                      {"rel": "describedby", "type": "text/html",
                       "href": "https://docs.openstack.org/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.compute+json;version=2.1"}]}


@router.get("")
@router.get("/")
def versions(base: BaseUrl) -> dict[str, Any]:
    """The compute versions (anonymous)."""
    return {"versions": [_version(base)]}


@router.get("/v2.1")
@router.get("/v2.1/")
def version(base: BaseUrl) -> dict[str, Any]:
    """Compute v2.1 (anonymous): microversion 2.1 only."""
    return {"version": _version(base)}


def _links(base: str, kind: str, ident: str) -> list[dict[str, str]]:
    return [{"rel": "self", "href": f"{base}/compute/v2.1/{kind}/{ident}"},
            {"rel": "bookmark", "href": f"{base}/compute/{kind}/{ident}"}]


def _bad(message: str) -> InvalidInput:
    return InvalidInput(message, code="invalid_input")


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "request"
    return f"Invalid input for field/attribute {where}. {first.get('msg', '')}"


# ---- servers ------------------------------------------------------------------------------


def _addresses(raw: Sequence[Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for a in raw:
        if not isinstance(a, dict) or "ip" not in a:
            continue
        entry: dict[str, Any] = {"version": 6 if ":" in str(a["ip"]) else 4,
                                 "addr": a["ip"], "OS-EXT-IPS:type": "fixed"}
        if a.get("mac"):
            entry["OS-EXT-IPS-MAC:mac_addr"] = a["mac"]
        out.setdefault(a.get("network") or "default", []).append(entry)
    return out


def _first_ip(raw: Sequence[Any], version: int) -> str:
    for entries in _addresses(raw).values():
        for e in entries:
            if e["version"] == version:
                return str(e["addr"])
    return ""


def _status(s: Server) -> str:
    if s.status == "REBOOT" and s.task_state == "rebooting-hard":
        return "HARD_REBOOT"
    return s.status


def _render(session: Session, principal: Principal, base: str,
            rows: Sequence[Server]) -> list[dict[str, Any]]:
    host_names = (servers_repo.names_by_id(session, Host, (s.host_id for s in rows))
                  if principal.is_admin else {})
    key_names = repository.keypair_names_by_key(session, {s.user_id for s in rows})
    out = []
    for s in rows:
        host_id = (hashlib.sha224(f"{s.project_id}{s.host_id}".encode()).hexdigest()
                   if s.host_id else "")
        task = s.task_state.replace("rebooting-hard", "rebooting_hard") if s.task_state else None
        view: dict[str, Any] = {
            "id": s.id, "name": s.name, "status": _status(s),
            "tenant_id": s.project_id, "user_id": s.user_id, "metadata": {},
            "hostId": host_id,
            "image": {"id": s.image_id, "links": [
                {"rel": "bookmark", "href": f"{base}/compute/images/{s.image_id}"}]},
            "flavor": {"id": s.flavor_id, "links": [
                {"rel": "bookmark", "href": f"{base}/compute/flavors/{s.flavor_id}"}]},
            "created": stamp_z(s.created_at), "updated": stamp_z(s.updated_at),
            "addresses": _addresses(s.addresses or []),
            # minicloud has no floating IPs: the address to reach a server by is its own
            # (clients such as openstacksdk's cloud layer then do not look for a floating IP).
            "accessIPv4": _first_ip(s.addresses or [], 4),
            "accessIPv6": _first_ip(s.addresses or [], 6),
            "links": _links(base, "servers", s.id),
            "OS-DCF:diskConfig": "MANUAL", "progress": 0,
            "OS-EXT-AZ:availability_zone": s.availability_zone or "",
            "config_drive": "",
            "key_name": key_names.get((s.user_id, s.key_data or "")),
            "OS-SRV-USG:launched_at": None, "OS-SRV-USG:terminated_at": None,
            "OS-EXT-STS:task_state": task,
            "OS-EXT-STS:vm_state": _VM_STATE.get(s.status, "error"),
            "OS-EXT-STS:power_state": _POWER.get(s.power_state or "", 0),
            "os-extended-volumes:volumes_attached": [],
            "security_groups": [{"name": "default"}],
        }
        if s.fault_code:
            view["fault"] = {"code": 500, "message": s.fault_message or s.fault_code,
                             "created": stamp_z(s.updated_at)}
        if principal.is_admin:
            host = host_names.get(s.host_id) if s.host_id else None
            view["OS-EXT-SRV-ATTR:host"] = host
            view["OS-EXT-SRV-ATTR:hypervisor_hostname"] = host
            view["OS-EXT-SRV-ATTR:instance_name"] = f"minicloud-{s.id}"
        out.append(view)
    return out


def stamp_z(at: Any) -> str | None:
    """Nova's timestamp format (seconds, ``Z``)."""
    return at.strftime("%Y-%m-%dT%H:%M:%SZ") if at is not None else None


def _ref(value: Any, what: str) -> str:
    """An id from a Nova reference, which may also be a link ending in the id."""
    if not isinstance(value, str) or not value.strip():
        raise _bad(f"Invalid {what}: it must be a non-empty string.")
    return value.rstrip("/").rsplit("/", 1)[-1]


def _image_of(server: dict[str, Any]) -> str:
    image = server.get("imageRef")
    bdm = server.get("block_device_mapping_v2")
    if bdm is not None:
        if not isinstance(bdm, list) or not all(isinstance(b, dict) for b in bdm):
            raise _bad("Invalid block_device_mapping_v2: a list of objects.")
        for b in bdm:
            if b.get("destination_type", "local") != "local" or b.get("source_type") not in (
                    "image", "blank", None):
                raise _bad("minicloud boots from images onto local disks only: "
                           "block_device_mapping_v2 may only name the boot image.")
            if b.get("source_type") == "image" and str(b.get("boot_index")) == "0":
                if image and _ref(image, "imageRef") != b.get("uuid"):
                    raise _bad("imageRef and the boot block device name different images.")
                image = b.get("uuid")
    return _ref(image, "imageRef")


def _user_data(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad("Invalid user_data: base64 text.")
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("User data needs to be valid base 64.") from None
    return value


def _server_create(body: dict[str, Any]) -> ServerCreate:
    server = body.get("server")
    if not isinstance(server, dict):
        raise _bad("Invalid input: a 'server' object is required.")
    networks = server.get("networks", "auto")
    if networks not in ("auto", []):
        raise _bad("minicloud attaches every server to its one network: networks may be "
                   "'auto' or [] (specific networks and 'none' are not supported).")
    for key in ("min_count", "max_count"):
        if str(server.get(key, 1)) != "1":
            raise _bad(f"{key} must be 1: minicloud creates one server per request.")
    if server.get("metadata"):
        raise _bad("Server metadata is not supported.")
    hints = body.get("OS-SCH-HNT:scheduler_hints") or {}
    if not isinstance(hints, dict):
        raise _bad("Invalid scheduler hints.")
    group = hints.get("group")
    zone = server.get("availability_zone")
    if isinstance(zone, str) and ":" in zone:
        zone = zone.split(":", 1)[0] or None  # "zone:host" asks for a host: the zone counts
    try:
        return ServerCreate(
            name=server.get("name"), flavor=_ref(server.get("flavorRef"), "flavorRef"),
            image=_image_of(server), user_data=_user_data(server.get("user_data")),
            key_name=server.get("key_name"), server_group=group, availability_zone=zone)
    except ValidationError as exc:
        raise _bad(_validation_message(exc)) from None


@router.post("/v2.1/servers", status_code=202)
def create_server(principal: OsWriter, session: SessionDep, settings: SettingsDep,
                  base: BaseUrl, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    """``POST /servers``: ``servers.service.create_server`` (quota, placement, billing)."""
    create = keypairs.with_key_data(session, principal, _server_create(body))
    server = servers.create_server(session, settings, principal, create)
    return {"server": {"id": server.id, "links": _links(base, "servers", server.id),
                       "OS-DCF:diskConfig": "MANUAL",
                       "security_groups": [{"name": "default"}]}}


def _limit(value: str | None) -> int:
    if value is None:
        return MAX_LIMIT
    try:
        limit = int(value)
    except ValueError:
        raise _bad("limit param must be an integer") from None
    if limit < 0:
        raise _bad("limit param must be positive")
    return min(limit, MAX_LIMIT) or MAX_LIMIT


def _text_param(value: str | None, what: str) -> str | None:
    """A text filter as ``/v1`` accepts it (printable, at most 255): else 400, before SQL."""
    if not value:
        return None
    if len(value) > 255 or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        raise _bad(f"Invalid {what} filter: printable text of at most 255 characters.")
    return value


def _list(request: Request, principal: Principal, session: Session,
          base: BaseUrl, path: str) -> tuple[list[Server], list[dict[str, str]]]:
    q = request.query_params
    all_projects = q.get("all_tenants", q.get("all_projects", "0")).lower() not in (
        "0", "false", "off", "no")
    if not principal.is_admin:
        all_projects = False  # Nova ignores all_tenants from non-admins' lists of their own
    status = q.get("status")
    if status is not None and status.upper() not in _STATUS_FILTER:
        return [], []
    limit = _limit(q.get("limit"))
    marker = q.get("marker")
    if marker is not None and not marker:
        marker = None
    if marker is not None:
        os_id(marker)
    name = _text_param(q.get("name"), "name")
    page = servers.list_servers(
        session, principal, status=_STATUS_FILTER[status.upper()] if status else None,
        name=name.strip("^$") if name else None,
        host=_text_param(q.get("host"), "host") if principal.is_admin else None,
        all_projects=all_projects, limit=limit, marker=marker)
    rows = list(page.servers)
    if status and status.upper() == "HARD_REBOOT":
        rows = [s for s in rows if _status(s) == "HARD_REBOOT"]
    links = []
    if page.next_marker is not None and q.get("limit") is not None:
        links = [{"rel": "next",
                  "href": f"{base}/compute/v2.1/{path}?limit={limit}&marker={page.next_marker}"}]
    return rows, links


@router.get("/v2.1/servers")
def list_servers(request: Request, principal: OsUser, session: SessionDep,
                 base: BaseUrl) -> dict[str, Any]:
    """``GET /servers``: ids, names and links (filters: name, status, limit, marker, and
    all_tenants/host for admins; others ignored)."""
    rows, links = _list(request, principal, session, base, "servers")
    out: dict[str, Any] = {"servers": [{"id": s.id, "name": s.name,
                                        "links": _links(base, "servers", s.id)} for s in rows]}
    if links:
        out["servers_links"] = links
    return out


@router.get("/v2.1/servers/detail")
def list_servers_detail(request: Request, principal: OsUser, session: SessionDep,
                        base: BaseUrl) -> dict[str, Any]:
    """``GET /servers/detail``: full server views."""
    rows, links = _list(request, principal, session, base, "servers/detail")
    out: dict[str, Any] = {"servers": _render(session, principal, base, rows)}
    if links:
        out["servers_links"] = links
    return out


@router.get("/v2.1/servers/{server_id}")
def show_server(server_id: str, principal: OsUser, session: SessionDep,
                base: BaseUrl) -> dict[str, Any]:
    """``GET /servers/{id}`` (404 for names, other projects' and deleted servers)."""
    server = servers.get_server(session, principal, os_id(server_id))
    return {"server": _render(session, principal, base, [server])[0]}


@router.delete("/v2.1/servers/{server_id}", status_code=204)
def delete_server(server_id: str, principal: OsWriter, session: SessionDep) -> Response:
    """``DELETE /servers/{id}``: ``servers.service.delete_server`` (204)."""
    servers.delete_server(session, principal, os_id(server_id))
    return Response(status_code=204)


def _console_length(value: Any) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except (TypeError, ValueError):
        raise _bad("Invalid input for field/attribute length.") from None
    if length < -1:
        raise _bad("Invalid input for field/attribute length.")
    return None if length == -1 else min(length, 100_000)


@router.post("/v2.1/servers/{server_id}/action")
def server_action(server_id: str, request: Request, principal: OsUser, session: SessionDep,
                  settings: SettingsDep, body: Annotated[dict[str, Any], Body()]) -> Response:
    """``os-start``, ``os-stop``, ``reboot`` (202) through ``servers.service.act``;
    ``os-getConsoleOutput`` (200) from the stored console tail."""
    server_id = os_id(server_id)
    if len(body) != 1:
        raise _bad("Send exactly one action.")
    (name, args), = body.items()
    if name == "os-getConsoleOutput":
        server = servers.get_server(session, principal, server_id)
        length = _console_length((args or {}).get("length") if isinstance(args, dict)
                                 else None)
        return JSONResponse({"output": agent_service.read_console(settings, server.id,
                                                                  length)})
    action: StartAction | StopAction | RebootAction
    if name == "os-start":
        action = StartAction(action="start")
    elif name == "os-stop":
        action = StopAction(action="stop")
    elif name == "reboot":
        kind = str((args or {}).get("type", "")).upper() if isinstance(args, dict) else ""
        if kind not in ("SOFT", "HARD"):
            raise _bad("Invalid input for field/attribute type: 'SOFT' or 'HARD'.")
        action = RebootAction(action="reboot", type="hard" if kind == "HARD" else "soft")
    else:
        raise _bad(f"There is no such action: {name[:64]}")
    if not principal.can_write:
        raise Forbidden("The reader role cannot change anything.", code="read_only_role")
    try:
        servers.act(session, settings, principal, server_id, action)
    except Conflict as exc:
        # As on /v1: the refusal is written to the server's history in its own unit of work.
        session.rollback()
        servers.record_rejection(request.app.state.sessionmaker, settings, principal, server_id,
                                 action.action, exc)
        raise
    return Response(status_code=202)


# ---- flavors -------------------------------------------------------------------------------


def _flavor(base: str, f: Flavor, detail: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {"id": f.id, "name": f.name, "links": _links(base, "flavors", f.id)}
    if detail:
        view.update({"ram": f.ram_mb, "disk": f.disk_gb, "vcpus": f.vcpus, "swap": "",
                     "OS-FLV-EXT-DATA:ephemeral": 0, "OS-FLV-DISABLED:disabled": False,
                     "os-flavor-access:is_public": f.is_public, "rxtx_factor": 1.0})
    return view


@router.get("/v2.1/flavors")
def list_flavors(principal: OsUser, session: SessionDep, base: BaseUrl) -> dict[str, Any]:
    """``GET /flavors``: the flavors the project may use."""
    return {"flavors": [_flavor(base, f, detail=False)
                        for f in flavors.list_flavors(session, principal)]}


@router.get("/v2.1/flavors/detail")
def list_flavors_detail(principal: OsUser, session: SessionDep,
                        base: BaseUrl) -> dict[str, Any]:
    """``GET /flavors/detail``."""
    return {"flavors": [_flavor(base, f) for f in flavors.list_flavors(session, principal)]}


def _visible_flavor(session: Session, principal: Principal, flavor_id: str) -> Flavor:
    flavor = flavors.get_flavor(session, principal, os_id(flavor_id))
    if flavor.id != flavor_id:
        # Nova looks flavors up by id only; a name is found through the list.
        raise NotFound(f"Flavor {flavor_id} could not be found.", code="flavor_not_found")
    return flavor


@router.get("/v2.1/flavors/{flavor_id}")
def show_flavor(flavor_id: str, principal: OsUser, session: SessionDep,
                base: BaseUrl) -> dict[str, Any]:
    """``GET /flavors/{id}``."""
    return {"flavor": _flavor(base, _visible_flavor(session, principal, flavor_id))}


@router.get("/v2.1/flavors/{flavor_id}/os-extra_specs")
def flavor_extra_specs(flavor_id: str, principal: OsUser,
                       session: SessionDep) -> dict[str, Any]:
    """``GET /flavors/{id}/os-extra_specs``: the aggregate requirements."""
    return {"extra_specs": dict(_visible_flavor(session, principal, flavor_id).extra_specs)}


# ---- key pairs -----------------------------------------------------------------------------


def _keypair(k: KeyPair, detail: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {"name": k.name, "public_key": k.public_key,
                            "fingerprint": k.fingerprint}
    if detail:
        view.update({"user_id": k.user_id, "created_at": stamp(k.created_at),
                     "deleted": False, "deleted_at": None, "updated_at": None})
    return view


def _keypair_name(name: str) -> str:
    if not name or len(name) > 255 or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        raise NotFound(f"Keypair {name[:64]} not found for user.", code="keypair_not_found")
    return name


@router.post("/v2.1/os-keypairs")
def create_keypair(principal: OsWriter, session: SessionDep,
                   body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    """``POST /os-keypairs``: import ``public_key`` or generate a pair (private key once)."""
    ref = body.get("keypair")
    if not isinstance(ref, dict):
        raise _bad("Invalid input: a 'keypair' object is required.")
    if ref.get("type", "ssh") != "ssh":
        raise _bad("Only ssh key pairs are supported.")
    try:
        create = KeyPairCreate(name=ref.get("name"), public_key=ref.get("public_key"))
    except ValidationError as exc:
        raise _bad(_validation_message(exc)) from None
    created = keypairs.create_keypair(session, principal, create.name, create.public_key)
    view = _keypair(created.keypair)
    view["user_id"] = created.keypair.user_id
    if created.private_key is not None:
        view["private_key"] = created.private_key
    return {"keypair": view}


@router.get("/v2.1/os-keypairs")
def list_keypairs(principal: OsUser, session: SessionDep) -> dict[str, Any]:
    """``GET /os-keypairs``: the caller's key pairs."""
    return {"keypairs": [{"keypair": _keypair(k)}
                         for k in keypairs.list_keypairs(session, principal)]}


@router.get("/v2.1/os-keypairs/{name}")
def show_keypair(name: str, principal: OsUser, session: SessionDep) -> dict[str, Any]:
    """``GET /os-keypairs/{name}``."""
    return {"keypair": _keypair(keypairs.get_keypair(session, principal,
                                                     _keypair_name(name)), detail=True)}


@router.delete("/v2.1/os-keypairs/{name}", status_code=202)
def delete_keypair(name: str, principal: OsWriter, session: SessionDep) -> Response:
    """``DELETE /os-keypairs/{name}`` (202)."""
    keypairs.delete_keypair(session, principal, _keypair_name(name))
    return Response(status_code=202)


# ---- server groups -------------------------------------------------------------------------


def _group(session: Session, groups: Sequence[ServerGroup]) -> list[dict[str, Any]]:
    members = server_groups.members(session, groups)
    return [{"id": g.id, "name": g.name, "policies": [g.policy], "members": members[g.id],
             "metadata": {}, "project_id": g.project_id} for g in groups]


@router.post("/v2.1/os-server-groups")
def create_group(principal: OsWriter, session: SessionDep,
                 body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    """``POST /os-server-groups`` (``policies``: one of Nova's four policies)."""
    ref = body.get("server_group")
    if not isinstance(ref, dict):
        raise _bad("Invalid input: a 'server_group' object is required.")
    policies = ref.get("policies")
    if not isinstance(policies, list) or len(policies) != 1:
        raise _bad("Invalid input for field/attribute policies: exactly one policy.")
    try:
        create = ServerGroupCreate(name=ref.get("name"), policy=policies[0])
    except ValidationError as exc:
        raise _bad(_validation_message(exc)) from None
    group = server_groups.create_group(session, principal, create.name, create.policy)
    return {"server_group": _group(session, [group])[0]}


@router.get("/v2.1/os-server-groups")
def list_groups(principal: OsUser, session: SessionDep) -> dict[str, Any]:
    """``GET /os-server-groups``: the project's groups."""
    return {"server_groups": _group(session, server_groups.list_groups(session, principal))}


@router.get("/v2.1/os-server-groups/{group_id}")
def show_group(group_id: str, principal: OsUser, session: SessionDep) -> dict[str, Any]:
    """``GET /os-server-groups/{id}``."""
    group = server_groups.get_group(session, principal, os_id(group_id))
    return {"server_group": _group(session, [group])[0]}


@router.delete("/v2.1/os-server-groups/{group_id}", status_code=204)
def delete_group(group_id: str, principal: OsWriter, session: SessionDep) -> Response:
    """``DELETE /os-server-groups/{id}``."""
    server_groups.delete_group(session, principal, os_id(group_id))
    return Response(status_code=204)


# ---- availability zones, quotas, limits ----------------------------------------------------


@router.get("/v2.1/os-availability-zone")
def availability_zones(principal: OsUser, session: SessionDep,
                       settings: SettingsDep) -> dict[str, Any]:
    """``GET /os-availability-zone``: zones that have hosts, available when one is up."""
    return {"availabilityZoneInfo": [
        {"zoneName": z.name, "zoneState": {"available": z.available}, "hosts": None}
        for z in hosts.availability_zones(session, settings, principal)]}


@router.get("/v2.1/os-availability-zone/detail")
def availability_zones_detail(admin: OsAdmin, session: SessionDep,
                              settings: SettingsDep) -> dict[str, Any]:
    """``GET /os-availability-zone/detail`` (admin): zones with their hosts."""
    return {"availabilityZoneInfo": [
        {"zoneName": z.name, "zoneState": {"available": z.available},
         "hosts": {h: {"nova-compute": {"available": z.available, "active": True,
                                        "updated_at": None}} for h in z.hosts or []}}
        for z in hosts.availability_zones(session, settings, admin)]}


def _quota_values(session: Session, settings: Settings, project_id: str
                  ) -> tuple[dict[str, int], dict[str, int]]:
    limits = quotas.limits(session, settings, project_id)
    usage = quotas.usage(session, project_id)
    # Nova's names for minicloud's quota resources; the disk quota has no Nova name.
    names = {"instances": "instances", "cores": "vcpus", "ram": "ram_mb"}
    return ({n: limits[r] for n, r in names.items()},
            {n: usage.get(r, 0) for n, r in names.items()})


# Quotas Nova has and minicloud does not enforce: unlimited (-1), as Nova shows them.
_UNLIMITED = ("key_pairs", "metadata_items", "server_groups", "server_group_members",
              "injected_files", "injected_file_content_bytes", "injected_file_path_bytes",
              "fixed_ips", "floating_ips", "security_groups", "security_group_rules")


@router.get("/v2.1/os-quota-sets/{project_id}")
def show_quota(project_id: str, principal: OsUser, session: SessionDep,
               settings: SettingsDep) -> dict[str, Any]:
    """``GET /os-quota-sets/{project}``: the limits ``quotas.service`` enforces."""
    project = quotas.visible_project(session, principal, os_id(project_id))
    limits, _ = _quota_values(session, settings, project.id)
    return {"quota_set": {"id": project.id, **limits, **{k: -1 for k in _UNLIMITED}}}


@router.get("/v2.1/os-quota-sets/{project_id}/defaults")
def show_default_quota(project_id: str, principal: OsUser, session: SessionDep,
                       settings: SettingsDep) -> dict[str, Any]:
    """``GET /os-quota-sets/{project}/defaults``: the configured defaults."""
    project = quotas.visible_project(session, principal, os_id(project_id))
    defaults = quotas.default_limits(settings)
    return {"quota_set": {"id": project.id, "instances": defaults["instances"],
                          "cores": defaults["vcpus"], "ram": defaults["ram_mb"],
                          **{k: -1 for k in _UNLIMITED}}}


@router.get("/v2.1/os-quota-sets/{project_id}/detail")
def show_quota_detail(project_id: str, principal: OsUser, session: SessionDep,
                      settings: SettingsDep) -> dict[str, Any]:
    """``GET /os-quota-sets/{project}/detail``: limits with live usage."""
    project = quotas.visible_project(session, principal, os_id(project_id))
    limits, usage = _quota_values(session, settings, project.id)
    detail: dict[str, Any] = {n: {"limit": limits[n], "in_use": usage[n], "reserved": 0}
                              for n in limits}
    detail.update({k: {"limit": -1, "in_use": 0, "reserved": 0} for k in _UNLIMITED})
    return {"quota_set": {"id": project.id, **detail}}


@router.get("/v2.1/limits")
def limits(principal: OsUser, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """``GET /limits``: absolute limits and usage of the caller's project (no rate limits)."""
    limit, usage = _quota_values(session, settings, principal.project_id)
    groups = len(server_groups.list_groups(session, principal))
    return {"limits": {"rate": [], "absolute": {
        "maxTotalInstances": limit["instances"], "maxTotalCores": limit["cores"],
        "maxTotalRAMSize": limit["ram"], "totalInstancesUsed": usage["instances"],
        "totalCoresUsed": usage["cores"], "totalRAMUsed": usage["ram"],
        "maxServerMeta": -1, "maxImageMeta": -1, "maxPersonality": -1,
        "maxPersonalitySize": -1, "maxTotalKeypairs": -1, "maxServerGroups": -1,
        "maxServerGroupMembers": -1, "totalServerGroupsUsed": groups,
        "maxSecurityGroups": -1, "maxSecurityGroupRules": -1, "totalSecurityGroupsUsed": 0,
        "maxTotalFloatingIps": -1, "totalFloatingIpsUsed": 0}}}



# ---- usage (from the billing ledger) -------------------------------------------------------


def _when(value: str | None, default: datetime) -> datetime:
    if not value:
        return default
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        raise _bad(f"Invalid timestamp for date {value[:64]}") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _usage(session: Session, settings: Settings, principal: Principal, request: Request,
           project_id: str | None) -> list[dict[str, Any]]:
    """Nova's tenant usages from ``usage.reports.build_report``: hours are what the ledger
    bills (a stopped server accrues no vCPU or RAM hours, only its disk)."""
    now = utcnow()
    start = _when(request.query_params.get("start"), now - timedelta(days=28))
    end = _when(request.query_params.get("end"), now)
    scope = usage_service.visible_project(session, principal, project_id)
    report = reports.build_report(session, start=start, end=end, now=now,
                                  minimum=settings.billing_minimum_run_seconds,
                                  project_id=scope, group_by="server")
    ids = [s["server_id"] for p in report["projects"] for s in p.get("servers", [])]
    rows = {s.id: s for s in repository.servers_by_ids(session, ids)} if ids else {}
    flavor_names = servers_repo.names_by_id(session, Flavor,
                                            (s.flavor_id for s in rows.values()))
    out = []
    for p in report["projects"]:
        server_usages = []
        for line in p.get("servers", []):
            s = rows.get(line["server_id"])
            server_usages.append({
                "instance_id": line["server_id"], "name": s.name if s else None,
                "tenant_id": p["project_id"],
                "hours": line["running_seconds"] / 3600,
                "vcpus": s.vcpus if s else 0, "memory_mb": s.ram_mb if s else 0,
                "local_gb": s.disk_gb if s else 0,
                "flavor": flavor_names.get(s.flavor_id) if s else None,
                "started_at": line["first_seen"], "ended_at": (
                    line["last_seen"] if line["state"] == "deleted" else None),
                "state": _VM_STATE.get(s.status, "error") if s else line["state"],
                "uptime": line["server_seconds"]})
        out.append({
            "tenant_id": p["project_id"], "start": report["start"], "stop": report["end"],
            "total_hours": p["running_seconds"] / 3600,
            "total_vcpus_usage": p["vcpu_seconds"] / 3600,
            "total_memory_mb_usage": p["ram_mib_seconds"] / 3600,
            "total_local_gb_usage": p["disk_gib_seconds"] / 3600,
            "server_usages": server_usages})
    return out


@router.get("/v2.1/os-simple-tenant-usage")
def list_usage(request: Request, principal: OsUser, session: SessionDep,
               settings: SettingsDep) -> dict[str, Any]:
    """``GET /os-simple-tenant-usage``: every project's usage (tenants: their own)."""
    usages = _usage(session, settings, principal, request, None)
    if request.query_params.get("detailed", "0") in ("0", "false"):
        for u in usages:
            u.pop("server_usages")
    return {"tenant_usages": usages}


@router.get("/v2.1/os-simple-tenant-usage/{project_id}")
def show_usage(project_id: str, request: Request, principal: OsUser, session: SessionDep,
               settings: SettingsDep) -> dict[str, Any]:
    """``GET /os-simple-tenant-usage/{project}`` (another tenant's project: 404)."""
    usages = _usage(session, settings, principal, request, os_id(project_id))
    return {"tenant_usage": usages[0] if usages else {}}


# ---- admin: hypervisors and services -------------------------------------------------------


def _hypervisor(h: HostOut, detail: bool) -> dict[str, Any]:
    view: dict[str, Any] = {"id": h.id, "hypervisor_hostname": h.name,
                            "state": h.state, "status": "enabled" if h.enabled else "disabled"}
    if detail:
        res = h.resources
        vcpu, ram, disk = res.get("VCPU"), res.get("MEMORY_MB"), res.get("DISK_GB")
        view.update({
            "hypervisor_type": "QEMU", "hypervisor_version": 0, "host_ip": None,
            "vcpus": vcpu.total if vcpu else 0, "vcpus_used": vcpu.allocated if vcpu else 0,
            "memory_mb": ram.total if ram else 0,
            "memory_mb_used": ram.allocated if ram else 0,
            "local_gb": disk.total if disk else 0,
            "local_gb_used": disk.allocated if disk else 0,
            "running_vms": h.servers, "service": {"host": h.name, "id": h.id,
                                                  "disabled_reason": h.disabled_reason}})
    return view


@router.get("/v2.1/os-hypervisors")
@router.get("/v2.1/os-hypervisors/detail")
def list_hypervisors(request: Request, _: OsAdmin, session: SessionDep,
                     settings: SettingsDep) -> dict[str, Any]:
    """``GET /os-hypervisors[/detail]`` (admin): the compute hosts."""
    views = hosts.host_views(session, settings, list(hosts_repo.list_hosts(session)))
    detail = request.url.path.endswith("/detail")
    return {"hypervisors": [_hypervisor(h, detail) for h in views]}


@router.get("/v2.1/os-hypervisors/{host_id}")
def show_hypervisor(host_id: str, _: OsAdmin, session: SessionDep,
                    settings: SettingsDep) -> dict[str, Any]:
    """``GET /os-hypervisors/{id}`` (admin)."""
    host = hosts.get_host(session, os_id(host_id))
    return {"hypervisor": _hypervisor(hosts.host_views(session, settings, [host])[0], True)}


@router.get("/v2.1/os-services")
def list_services(_: OsAdmin, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """``GET /os-services`` (admin): one ``nova-compute`` per host (its agent)."""
    views = hosts.host_views(session, settings, list(hosts_repo.list_hosts(session)))
    return {"services": [
        {"id": h.id, "binary": "nova-compute", "host": h.name, "zone": h.availability_zone,
         "status": "enabled" if h.enabled else "disabled", "state": h.state,
         "updated_at": stamp_z(h.last_heartbeat_at), "disabled_reason": h.disabled_reason,
         "forced_down": False} for h in views]}
