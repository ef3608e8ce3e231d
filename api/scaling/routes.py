"""Scaling group HTTP routes: /v1/scaling-groups (docs/scaling.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import CurrentUser, SessionDep, Writer
from api.fields import PathId
from api.models import ScalingGroup
from api.pagination import MAX_PAGE, Marker, PageLimit, link_next
from api.scaling import service
from api.scaling.schemas import (
    ActivityList,
    ActivityOut,
    LaunchTemplateOut,
    MemberOut,
    MemberUpdate,
    ScalingGroupCreate,
    ScalingGroupList,
    ScalingGroupOut,
    ScalingGroupUpdate,
)

router = APIRouter(prefix="/v1", tags=["scaling groups"])


def _render(session: SessionDep, groups: Sequence[ScalingGroup]) -> list[ScalingGroupOut]:
    members = service.members(session, groups)
    return [ScalingGroupOut(
        id=g.id, name=g.name, project_id=g.project_id, status=g.status,
        launch=LaunchTemplateOut(flavor_id=g.flavor_id, image_id=g.image_id,
                                 availability_zone=g.availability_zone,
                                 has_user_data=g.user_data is not None,
                                 has_key=g.key_data is not None,
                                 server_group_id=g.server_group_id),
        min_size=g.min_size, max_size=g.max_size, desired=g.desired,
        scale_in_policy=g.scale_in_policy, policy=g.policy,
        scheduled_actions=list(g.scheduled_actions or []),
        members=[MemberOut(server_id=s.id, name=s.name, seq=m.seq, status=s.status,
                           protected=m.protected, created_at=m.created_at)
                 for m, s in members[g.id]],
        retry_at=g.retry_at, created_at=g.created_at, updated_at=g.updated_at)
        for g in groups]


@router.post("/scaling-groups", status_code=201, response_model=ScalingGroupOut)
def create_group(body: ScalingGroupCreate, principal: Writer,
                 session: SessionDep) -> ScalingGroupOut:
    """Create a scaling group; the reconciler launches its members (named `<group>-<n>`,
    ordinary servers of the project) up to `desired`. Sizes must satisfy
    `min_size <= desired <= max_size` (422 `scaling_size_invalid`)."""
    return _render(session, [service.create_group(session, principal, body)])[0]


@router.get("/scaling-groups", response_model=ScalingGroupList)
def list_groups(principal: CurrentUser, session: SessionDep, response: Response,
                limit: PageLimit = MAX_PAGE, marker: Marker = None) -> ScalingGroupList:
    """The project's scaling groups, oldest first (paginated: see "Pagination")."""
    page = service.list_group_page(session, principal, limit=limit, marker=marker)
    groups = link_next(response, "/v1/scaling-groups", limit, page)
    return ScalingGroupList(scaling_groups=_render(session, groups))


@router.get("/scaling-groups/{scaling_group_id}", response_model=ScalingGroupOut)
def show_group(scaling_group_id: PathId, principal: CurrentUser,
               session: SessionDep) -> ScalingGroupOut:
    """One scaling group with its members (404 `scaling_group_not_found` for other
    projects' groups)."""
    return _render(session, [service.get_group(session, principal, scaling_group_id)])[0]


@router.patch("/scaling-groups/{scaling_group_id}", response_model=ScalingGroupOut)
def update_group(scaling_group_id: PathId, body: ScalingGroupUpdate, principal: Writer,
                 session: SessionDep) -> ScalingGroupOut:
    """Change min/max/desired (manual scaling), the scale-in policy, the target tracking
    policy (`null` removes it) or the scheduled actions."""
    return _render(session, [service.update_group(session, principal, scaling_group_id, body)])[0]


@router.delete("/scaling-groups/{scaling_group_id}", status_code=202,
               response_model=ScalingGroupOut)
def delete_group(scaling_group_id: PathId, principal: Writer,
                 session: SessionDep) -> ScalingGroupOut:
    """Delete the group and its members: the members start deleting at once; the group
    (status `deleting`) disappears once they are gone."""
    return _render(session, [service.delete_group(session, principal, scaling_group_id)])[0]


@router.patch("/scaling-groups/{scaling_group_id}/members/{server_id}",
              response_model=MemberOut)
def update_member(scaling_group_id: PathId, server_id: PathId, body: MemberUpdate,
                  principal: Writer,
                  session: SessionDep) -> MemberOut:
    """Set a member's scale-in protection: a protected member is never picked by scale-in."""
    m, s = service.set_protection(session, principal, scaling_group_id, server_id, body.protected)
    return MemberOut(server_id=s.id, name=s.name, seq=m.seq, status=s.status,
                     protected=m.protected, created_at=m.created_at)


@router.get("/scaling-groups/{scaling_group_id}/activities", response_model=ActivityList)
def list_activities(scaling_group_id: PathId, principal: CurrentUser, session: SessionDep,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> ActivityList:
    """The group's activities, newest first: every decision with why (rule, metric values),
    what (created and deleted server ids) and failures with the refusal."""
    rows = service.activities(session, principal, scaling_group_id, limit)
    return ActivityList(activities=[ActivityOut(
        id=a.id, kind=a.kind, result=a.result, rule=a.rule, cause=a.cause,
        from_desired=a.from_desired, to_desired=a.to_desired, created=list(a.created),
        deleted=list(a.deleted), details=dict(a.details), error=a.error,
        created_at=a.created_at) for a in rows])
