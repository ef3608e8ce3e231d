"""Scaling group rules: create, show, list, change, delete, member protection, activities.

The reconciler (``api.scaling.reconciler``) does the launching and deleting; this module only
records what the user asked (and deletes the members of a deleted group at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from api.db import utcnow
from api.deps import Principal
from api.errors import Conflict, InvalidInput, NotFound
from api.flavors import service as flavors
from api.images import service as images
from api.keypairs import service as keypairs
from api.models import ScalingActivity, ScalingGroup, ScalingMember, Server
from api.pagination import Page, invalid_marker, page_of
from api.scaling import repository
from api.scaling.schemas import ScalingGroupCreate, ScalingGroupUpdate
from api.server_groups import service as server_groups
from api.servers import lifecycle, states

DELETING = "deleting"


def record_activity(session: Session, group: ScalingGroup, *, kind: str, result: str,
                    rule: str, cause: str, from_desired: int | None = None,
                    to_desired: int | None = None, created: Sequence[Any] = (),
                    deleted: Sequence[Any] = (), details: dict[str, Any] | None = None,
                    error: dict[str, Any] | None = None) -> ScalingActivity:
    """Append one activity to the group's log, in the unit of work of what it describes."""
    activity = ScalingActivity(
        group_id=group.id, project_id=group.project_id, kind=kind, result=result, rule=rule,
        cause=cause, from_desired=group.desired if from_desired is None else from_desired,
        to_desired=group.desired if to_desired is None else to_desired,
        created=list(created), deleted=list(deleted), details=details or {}, error=error)
    session.add(activity)
    session.flush()
    return activity


def _check_sizes(low: int, high: int, desired: int) -> None:
    if not low <= desired <= high:
        raise InvalidInput(f"Need min_size <= desired <= max_size; got {low} <= {desired} "
                           f"<= {high}.", code="scaling_size_invalid", min_size=low,
                           max_size=high, desired=desired)


def get_group(session: Session, principal: Principal, group_id: str) -> ScalingGroup:
    """A group the caller may see; raises NotFound ``scaling_group_not_found`` (also for
    other projects' groups)."""
    group = repository.get_group(session, group_id, principal.project_scope)
    if group is None:
        raise NotFound("No such scaling group.", code="scaling_group_not_found")
    return group


def create_group(session: Session, principal: Principal, body: ScalingGroupCreate,
                 ) -> ScalingGroup:
    """A new group of the caller's project; its members follow from the reconciler.

    Raises InvalidInput ``scaling_size_invalid``, Conflict ``scaling_group_name_in_use``, what
    resolving the flavor, image and key pair raises (NotFound, Conflict ``image_not_active``,
    InvalidInput ``flavor_too_small``). Nothing is written on error.
    """
    desired = body.min_size if body.desired is None else body.desired
    _check_sizes(body.min_size, body.max_size, desired)
    launch = body.launch
    flavor = flavors.get_flavor(session, principal, launch.flavor)
    image = images.find_image(session, principal, launch.image)
    if image.status != "active":
        raise Conflict(f"Image {image.id} is {image.status}, not active.",
                       code="image_not_active", image_status=image.status)
    if flavor.disk_gb < image.min_disk or flavor.ram_mb < image.min_ram:
        raise InvalidInput(f"Flavor {flavor.name} is smaller than image {image.id} needs "
                           f"({image.min_ram} MB, {image.min_disk} GB).",
                           code="flavor_too_small")
    key_data = launch.key_data
    if launch.key_name is not None:
        if key_data is not None:
            raise InvalidInput("Give key_name or key_data, not both.",
                               code="key_name_with_key_data")
        key_data = keypairs.public_key_for(session, principal, launch.key_name)
    if repository.name_taken(session, principal.project_id, body.name):
        raise Conflict(f"The project already has a scaling group named {body.name}.",
                       code="scaling_group_name_in_use")
    server_group = (server_groups.create_group(session, principal, f"scaling-{body.name}",
                                               "soft-anti-affinity")
                    if launch.anti_affinity else None)
    group = ScalingGroup(
        project_id=principal.project_id, user_id=principal.user_id, name=body.name,
        flavor_id=flavor.id, image_id=image.id, user_data=launch.user_data, key_data=key_data,
        availability_zone=launch.availability_zone,
        server_group_id=server_group.id if server_group else None,
        min_size=body.min_size, max_size=body.max_size, desired=desired,
        scale_in_policy=body.scale_in_policy,
        policy=body.policy.model_dump() if body.policy else None,
        scheduled_actions=[a.model_dump() for a in body.scheduled_actions],
        recommendations=[], next_seq=1, failures=0, generation=0)
    session.add(group)
    session.flush()
    record_activity(session, group, kind="set", result="success", rule="user",
                    cause=f"created by {principal.user_name}: min {group.min_size}, "
                          f"max {group.max_size}, desired {group.desired}",
                    from_desired=0, details={"user_id": principal.user_id})
    return group


def list_group_page(session: Session, principal: Principal, *, limit: int,
                    marker: str | None) -> Page[ScalingGroup]:
    """A page of the caller's project's groups, oldest first; raises DomainError
    ``invalid_marker``."""
    mark = None
    if marker is not None:
        mark = repository.get_group(session, marker, principal.project_id)
        if mark is None:
            raise invalid_marker()
    rows = repository.list_groups(session, principal.project_id, after=mark, limit=limit + 1)
    return page_of(rows, limit, lambda g: g.id)


def members(session: Session, groups: Sequence[ScalingGroup],
            ) -> dict[str, list[tuple[ScalingMember, Server]]]:
    """group id -> its live members with their servers."""
    return repository.live_members(session, [g.id for g in groups])


def _writable(group: ScalingGroup) -> None:
    if group.status == DELETING:
        raise Conflict("The scaling group is being deleted.", code="scaling_group_deleting")


def _bump(session: Session, group: ScalingGroup, **values: Any) -> None:
    if not repository.bump(session, group, **values):
        raise Conflict("The scaling group changed while this request ran; retry.",
                       code="scaling_group_changed")


def update_group(session: Session, principal: Principal, group_id: str,
                 body: ScalingGroupUpdate) -> ScalingGroup:
    """Change sizes, the scale-in policy, the target tracking policy or the schedules.

    A target tracking policy overrides a manual ``desired`` at its next evaluation. Raises
    NotFound, Conflict ``scaling_group_deleting`` / ``scaling_group_changed``, InvalidInput
    ``scaling_size_invalid``.
    """
    group = get_group(session, principal, group_id)
    repository.lock(session, group)
    _writable(group)
    given = body.model_fields_set
    low = body.min_size if body.min_size is not None else group.min_size
    high = body.max_size if body.max_size is not None else group.max_size
    desired = body.desired if body.desired is not None else group.desired
    if body.desired is None:
        # Changing only the bounds moves desired into them, as the reconciler would.
        desired = min(max(desired, low), high)
    _check_sizes(low, high, desired)
    values: dict[str, Any] = {"min_size": low, "max_size": high, "desired": desired}
    if body.scale_in_policy is not None:
        values["scale_in_policy"] = body.scale_in_policy
    if "policy" in given:
        values["policy"] = body.policy.model_dump() if body.policy else None
        values["recommendations"] = []
    if body.scheduled_actions is not None:
        values["scheduled_actions"] = [a.model_dump() for a in body.scheduled_actions]
    before = group.desired
    _bump(session, group, **values)
    record_activity(session, group, kind="set", result="success", rule="user",
                    cause=f"set by {principal.user_name}: "
                          + ", ".join(sorted(f for f in given)),
                    from_desired=before, details={"user_id": principal.user_id,
                                                  "min_size": low, "max_size": high})
    return group


def set_protection(session: Session, principal: Principal, group_id: str, server_id: str,
                   protected: bool) -> tuple[ScalingMember, Server]:
    """Protect a member from scale-in (or lift it); raises NotFound
    ``scaling_member_not_found``."""
    group = get_group(session, principal, group_id)
    found = repository.member(session, group.id, server_id)
    if found is None:
        raise NotFound("No such member of the scaling group.", code="scaling_member_not_found")
    found[0].protected = protected
    session.flush()
    return found


def delete_group(session: Session, principal: Principal, group_id: str) -> ScalingGroup:
    """Delete the group and its members: every member server starts deleting now; the
    reconciler removes the group (and its server group) once they are gone. Deleting a group
    being deleted changes nothing. Raises NotFound, Conflict ``scaling_group_changed``."""
    group = get_group(session, principal, group_id)
    repository.lock(session, group)
    if group.status == DELETING:
        return group
    before = group.desired
    _bump(session, group, status=DELETING, desired=0, min_size=0)
    deleted = []
    for member, server in repository.live_members(session, [group.id])[group.id]:
        if server.status not in (states.DELETING, states.DELETED):
            lifecycle.delete(session, None, server, user_id=principal.user_id)
        member.released_at = utcnow()
        member.release_reason = "group_deleted"
        deleted.append(server.id)
    record_activity(session, group, kind="scale_in", result="success", rule="user",
                    cause=f"group deleted by {principal.user_name}: every member goes",
                    from_desired=before, to_desired=0, deleted=deleted)
    return group


def activities(session: Session, principal: Principal, group_id: str,
               limit: int) -> Sequence[ScalingActivity]:
    """The group's activities, newest first; raises NotFound."""
    group = get_group(session, principal, group_id)
    return repository.activities(session, group.id, limit)
