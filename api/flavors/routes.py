"""Flavor HTTP routes: /v1/flavors."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import AdminUser, CurrentUser, SessionDep
from api.fields import PathId, PathRef
from api.flavors import service
from api.flavors.schemas import FlavorAccessOut, FlavorCreate, FlavorOut
from api.pagination import MAX_PAGE, Marker, PageLimit, link_next

router = APIRouter(prefix="/v1/flavors", tags=["flavors"])


@router.get("", response_model=list[FlavorOut])
def list_flavors(principal: CurrentUser, session: SessionDep, response: Response,
                 limit: PageLimit = MAX_PAGE, marker: Marker = None) -> list[FlavorOut]:
    """Flavors the caller may see (admins: all), smallest first. Paginated."""
    page = service.list_flavor_page(session, principal, limit=limit, marker=marker)
    return [FlavorOut.model_validate(f) for f in link_next(response, "/v1/flavors", limit, page)]


@router.get("/{ref}", response_model=FlavorOut)
def show_flavor(ref: PathRef, principal: CurrentUser, session: SessionDep) -> FlavorOut:
    """One visible flavor by id or name."""
    return FlavorOut.model_validate(service.get_flavor(session, principal, ref))


@router.post("", status_code=201, response_model=FlavorOut)
def create_flavor(body: FlavorCreate, _: AdminUser, session: SessionDep) -> FlavorOut:
    """Create a flavor (admin)."""
    flavor = service.create_flavor(session, body.name, body.vcpus, body.ram_mb, body.disk_gb,
                                   body.is_public, body.extra_specs)
    return FlavorOut.model_validate(flavor)


@router.delete("/{flavor_id}", status_code=204)
def delete_flavor(flavor_id: PathId, principal: AdminUser, session: SessionDep) -> Response:
    """Delete a flavor no live server uses (admin)."""
    service.delete_flavor(session, principal, flavor_id)
    return Response(status_code=204)


@router.get("/{flavor_id}/access", response_model=FlavorAccessOut)
def list_access(flavor_id: PathId, principal: AdminUser, session: SessionDep) -> FlavorAccessOut:
    """The projects a flavor is shared with (admin)."""
    flavor, projects = service.list_access(session, principal, flavor_id)
    return FlavorAccessOut(flavor_id=flavor.id, projects=projects)


@router.post("/{flavor_id}/access/{project_id}", response_model=FlavorAccessOut)
def add_access(flavor_id: PathId, project_id: PathId, principal: AdminUser,
               session: SessionDep) -> FlavorAccessOut:
    """Share a private flavor with a project (admin)."""
    flavor, projects = service.add_access(session, principal, flavor_id, project_id)
    return FlavorAccessOut(flavor_id=flavor.id, projects=projects)


@router.delete("/{flavor_id}/access/{project_id}", response_model=FlavorAccessOut)
def remove_access(flavor_id: PathId, project_id: PathId, principal: AdminUser,
                  session: SessionDep) -> FlavorAccessOut:
    """Stop sharing a flavor with a project (admin)."""
    flavor, projects = service.remove_access(session, principal, flavor_id, project_id)
    return FlavorAccessOut(flavor_id=flavor.id, projects=projects)
