"""Server group rules: create, list, show, delete (only when empty)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import update
from sqlalchemy.orm import Session

from api.deps import Principal
from api.errors import Conflict, NotFound
from api.models import Server, ServerGroup
from api.pagination import Page, invalid_marker, page_of
from api.quotas.repository import lock_project
from api.server_groups import repository


def create_group(session: Session, principal: Principal, name: str, policy: str) -> ServerGroup:
    """A new group in the caller's project."""
    group = ServerGroup(project_id=principal.project_id, name=name, policy=policy)
    session.add(group)
    session.flush()
    return group


def get_group(session: Session, principal: Principal, group_id: str) -> ServerGroup:
    """A group the caller may see; raises NotFound for other projects' groups."""
    group = repository.get_group(session, group_id, principal.project_scope)
    if group is None:
        raise NotFound("No such server group.", code="server_group_not_found")
    return group


def get_project_group(session: Session, project_id: str, group_id: str) -> ServerGroup:
    """A group of ``project_id`` (a server joins only its own project's groups, admins' too);
    raises NotFound."""
    group = repository.get_group(session, group_id, project_id)
    if group is None:
        raise NotFound("No such server group.", code="server_group_not_found")
    return group


def list_groups(session: Session, principal: Principal) -> Sequence[ServerGroup]:
    """The caller's project's groups."""
    return repository.list_groups(session, principal.project_id)


def list_group_page(session: Session, principal: Principal, *, limit: int,
                    marker: str | None) -> Page[ServerGroup]:
    """A page of the caller's project's groups, oldest first; raises DomainError
    ``invalid_marker`` for a marker that is not one of them."""
    mark = None
    if marker is not None:
        mark = repository.get_group(session, marker, principal.project_id)
        if mark is None:
            raise invalid_marker()
    rows = repository.list_groups(session, principal.project_id, after=mark, limit=limit + 1)
    return page_of(rows, limit, lambda g: g.id)


def members(session: Session, groups: Sequence[ServerGroup]) -> dict[str, list[str]]:
    """group id -> ids of its non-deleted servers."""
    return repository.members(session, (g.id for g in groups))


def delete_group(session: Session, principal: Principal, group_id: str) -> None:
    """Delete an empty group; raises NotFound, Conflict ``server_group_in_use``."""
    group = get_group(session, principal, group_id)
    # Same lock as a server create: a create naming this group either commits first (and
    # we see its member) or resolves the group after we deleted it (and gets a 404).
    lock_project(session, group.project_id)
    in_use = repository.members(session, [group.id])[group.id]
    if in_use:
        raise Conflict(f"The group still has {len(in_use)} server(s).",
                       code="server_group_in_use", members=in_use)
    # Deleted servers keep their history but no longer point at the group.
    session.execute(update(Server).where(Server.server_group_id == group.id)
                    .values(server_group_id=None).execution_options(synchronize_session=False))
    session.delete(group)
    session.flush()
