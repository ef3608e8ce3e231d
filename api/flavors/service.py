"""Flavor rules."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db import utcnow
from api.deps import Principal
from api.errors import Conflict, NotFound
from api.flavors import repository
from api.models import Flavor, FlavorAccess, Project
from api.pagination import Page, invalid_marker, page_of

# name: (vcpus, ram_mb, disk_gb)
DEFAULT_FLAVORS: dict[str, tuple[int, int, int]] = {
    "tiny": (1, 512, 1),
    "small": (1, 2048, 20),
    "medium": (2, 4096, 40),
    "large": (4, 8192, 80),
}


def ensure_default_flavors(session: Session) -> list[Flavor]:
    """Create the default public flavors that do not exist yet; returns the created ones."""
    existing = set(session.scalars(select(Flavor.name)).all())
    created = [
        Flavor(name=name, vcpus=v, ram_mb=r, disk_gb=d, is_public=True, extra_specs={})
        for name, (v, r, d) in DEFAULT_FLAVORS.items()
        if name not in existing
    ]
    session.add_all(created)
    session.flush()
    return created


def list_flavors(session: Session, principal: Principal) -> Sequence[Flavor]:
    """Flavors the caller may see, smallest first."""
    return repository.list_visible(session, principal.project_scope)


def list_flavor_page(session: Session, principal: Principal, *, limit: int,
                     marker: str | None) -> Page[Flavor]:
    """A page of the flavors the caller may see, smallest first; raises DomainError
    ``invalid_marker`` for a marker that is not one of them."""
    mark = None
    if marker is not None:
        mark = repository.visible(session, principal.project_scope, marker)
        if mark is None:
            raise invalid_marker()
    rows = repository.list_visible(session, principal.project_scope, after=mark,
                                   limit=limit + 1)
    return page_of(rows, limit, lambda f: f.id)


def get_flavor(session: Session, principal: Principal, ref: str) -> Flavor:
    """A visible flavor by id or name; raises NotFound (also for private, unshared ones).

    Visible: public or shared with the caller's project, never deleted; admins see all. The
    one flavor visibility rule: servers resolve their flavor here too.
    """
    flavor = repository.visible_by_ref(session, principal.project_scope, ref)
    if flavor is None:
        raise NotFound(f"No flavor {ref!r}.", code="flavor_not_found")
    return flavor


def create_flavor(session: Session, name: str, vcpus: int, ram_mb: int, disk_gb: int,
                  is_public: bool, extra_specs: dict[str, str]) -> Flavor:
    """A new flavor; raises Conflict ``flavor_exists`` when the name is taken."""
    if repository.by_name(session, name) is not None:
        raise Conflict(f"A flavor named {name!r} exists.", code="flavor_exists")
    flavor = Flavor(name=name, vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb,
                    is_public=is_public, extra_specs=dict(extra_specs))
    session.add(flavor)
    session.flush()
    return flavor


def delete_flavor(session: Session, principal: Principal, flavor_id: str) -> None:
    """Delete a flavor; raises NotFound, Conflict ``flavor_in_use`` while live servers use it.

    Soft-deleted servers keep referencing their flavor (history, usage), so a flavor only they
    use becomes a tombstone: hidden, unshared, its name freed for reuse.
    """
    flavor = get_flavor(session, principal, flavor_id)
    live, deleted = repository.server_counts(session, flavor.id)
    if live:
        raise Conflict(f"{live} server(s) use flavor {flavor.name!r}.", code="flavor_in_use",
                       servers=live)
    repository.drop_access(session, flavor.id)
    if deleted:
        flavor.name = flavor.id
        flavor.is_public = False
        flavor.deleted_at = utcnow()
    else:
        session.delete(flavor)
    session.flush()


def _project(session: Session, project_id: str) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"No project {project_id!r}.", code="project_not_found")
    return project


def list_access(session: Session, principal: Principal,
                flavor_id: str) -> tuple[Flavor, list[str]]:
    """A flavor and the projects it is shared with; raises NotFound."""
    flavor = get_flavor(session, principal, flavor_id)
    return flavor, repository.access_projects(session, flavor.id)


def add_access(session: Session, principal: Principal, flavor_id: str,
               project_id: str) -> tuple[Flavor, list[str]]:
    """Share a private flavor with a project; returns the flavor and its shares.

    Raises NotFound for an unknown flavor or project, Conflict ``flavor_is_public`` for a
    public flavor (everyone sees it already). Sharing twice is a no-op.
    """
    flavor = get_flavor(session, principal, flavor_id)
    _project(session, project_id)
    if flavor.is_public:
        raise Conflict("A public flavor needs no sharing.", code="flavor_is_public")
    if repository.access(session, flavor.id, project_id) is None:
        session.add(FlavorAccess(flavor_id=flavor.id, project_id=project_id))
        session.flush()
    return flavor, repository.access_projects(session, flavor.id)


def remove_access(session: Session, principal: Principal, flavor_id: str,
                  project_id: str) -> tuple[Flavor, list[str]]:
    """Stop sharing a flavor with a project; returns the flavor and its shares.

    Raises NotFound for an unknown flavor or a project it is not shared with.
    """
    flavor = get_flavor(session, principal, flavor_id)
    share = repository.access(session, flavor.id, project_id)
    if share is None:
        raise NotFound("The flavor is not shared with that project.", code="access_not_found")
    session.delete(share)
    session.flush()
    return flavor, repository.access_projects(session, flavor.id)
