"""Admin host management: /v1/hosts, enrollment tokens, /v1/availability-zones."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import AdminUser, CurrentUser, SessionDep, SettingsDep
from api.fields import PathId
from api.hosts import service
from api.hosts.schemas import (
    AvailabilityZoneOut,
    EnrollmentTokenOut,
    HostCredentialOut,
    HostOut,
    HostPatch,
)
from api.pagination import MAX_PAGE, Marker, PageLimit, link_next

router = APIRouter(prefix="/v1", tags=["hosts"])


@router.post("/hosts/enrollment-tokens", status_code=201, response_model=EnrollmentTokenOut)
def create_enrollment_token(admin: AdminUser, session: SessionDep,
                            settings: SettingsDep) -> EnrollmentTokenOut:
    """A single-use, expiring token a new compute node enrolls with (admin)."""
    token, expires_at = service.create_enrollment_token(session, settings, admin)
    return EnrollmentTokenOut(token=token, expires_at=expires_at)


@router.get("/hosts", response_model=list[HostOut])
def list_hosts(_: AdminUser, session: SessionDep, settings: SettingsDep, response: Response,
               limit: PageLimit = MAX_PAGE, marker: Marker = None) -> list[HostOut]:
    """Every host with capacity, allocations, server count and up/down state (admin), by
    name. Paginated (see "Pagination")."""
    page = service.list_host_views(session, settings, limit=limit, marker=marker)
    return list(link_next(response, "/v1/hosts", limit, page))


@router.get("/hosts/{host_id}", response_model=HostOut)
def show_host(host_id: PathId, _: AdminUser, session: SessionDep, settings: SettingsDep) -> HostOut:
    """One host (admin)."""
    return service.host_views(session, settings, [service.get_host(session, host_id)])[0]


@router.patch("/hosts/{host_id}", response_model=HostOut)
def update_host(host_id: PathId, body: HostPatch, _: AdminUser, session: SessionDep,
                settings: SettingsDep) -> HostOut:
    """Enable/disable, move to a zone, tag aggregates, set ratios and reserved (admin)."""
    host = service.update_host(session, host_id, body)
    return service.host_views(session, settings, [host])[0]


@router.delete("/hosts/{host_id}", status_code=204)
def delete_host(host_id: PathId, _: AdminUser, session: SessionDep) -> Response:
    """Remove a host with no servers left (admin); its credential stops working."""
    service.delete_host(session, host_id)
    return Response(status_code=204)


@router.post("/hosts/{host_id}/credential", status_code=201, response_model=HostCredentialOut)
def rotate_host_credential(host_id: PathId, _: AdminUser, session: SessionDep) -> HostCredentialOut:
    """Issue the host a new credential, shown only here; the old one stops working (admin).

    Replacing a compute node's machine, or recovering a leaked credential: put the new
    credential in the agent's state directory and restart the agent.
    """
    host, secret = service.rotate_credential(session, host_id)
    return HostCredentialOut(host_id=host.id, credential=secret)


@router.delete("/hosts/{host_id}/credential", status_code=204)
def revoke_host_credential(host_id: PathId, _: AdminUser, session: SessionDep) -> Response:
    """Revoke the host's credential at once: every agent call answers 401 (admin)."""
    service.revoke_credential(session, host_id)
    return Response(status_code=204)


@router.get("/availability-zones", response_model=list[AvailabilityZoneOut],
            response_model_exclude_none=True)
def list_availability_zones(principal: CurrentUser, session: SessionDep,
                            settings: SettingsDep) -> list[AvailabilityZoneOut]:
    """Zones and whether any enabled, up host serves them; host names for admins only."""
    return service.availability_zones(session, settings, principal)
