"""Server group HTTP routes: /v1/server-groups."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Response

from api.deps import CurrentUser, SessionDep, Writer
from api.fields import PathId
from api.models import ServerGroup
from api.pagination import MAX_PAGE, Marker, PageLimit, link_next
from api.server_groups import service
from api.server_groups.schemas import ServerGroupCreate, ServerGroupList, ServerGroupOut

router = APIRouter(prefix="/v1", tags=["server groups"])


def _render(session: SessionDep, groups: Sequence[ServerGroup]) -> list[ServerGroupOut]:
    members = service.members(session, groups)
    return [ServerGroupOut(id=g.id, name=g.name, project_id=g.project_id,
                           policy=g.policy,
                           members=members[g.id], created_at=g.created_at) for g in groups]


@router.post("/server-groups", status_code=201, response_model=ServerGroupOut)
def create_group(body: ServerGroupCreate, principal: Writer,
                 session: SessionDep) -> ServerGroupOut:
    """Create a server group. `affinity`/`anti-affinity` are hard (a placement that would break
    them fails); the `soft-` policies only prefer."""
    return _render(session, [service.create_group(session, principal, body.name,
                                                  body.policy)])[0]


@router.get("/server-groups", response_model=ServerGroupList)
def list_groups(principal: CurrentUser, session: SessionDep, response: Response,
                limit: PageLimit = MAX_PAGE, marker: Marker = None) -> ServerGroupList:
    """The project's server groups, oldest first. Paginated (see "Pagination"; the page is
    the `server_groups` array)."""
    page = service.list_group_page(session, principal, limit=limit, marker=marker)
    groups = link_next(response, "/v1/server-groups", limit, page)
    return ServerGroupList(server_groups=_render(session, groups))


@router.get("/server-groups/{group_id}", response_model=ServerGroupOut)
def show_group(group_id: PathId, principal: CurrentUser, session: SessionDep) -> ServerGroupOut:
    """One server group with its members (404 for other projects' groups)."""
    return _render(session, [service.get_group(session, principal, group_id)])[0]


@router.delete("/server-groups/{group_id}", status_code=204)
def delete_group(group_id: PathId, principal: Writer, session: SessionDep) -> Response:
    """Delete a server group that has no members (else 409 `server_group_in_use`)."""
    service.delete_group(session, principal, group_id)
    return Response(status_code=204)
