"""Quota rules: limits (stored or default), live usage, and the atomic check.

Usage is never a counter: it is computed from what the project holds (servers with
``deleted_at IS NULL``), so it cannot drift. Atomicity comes from ``lock_project``: every
quota-checked write first locks the project, then counts, then inserts, in one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.orm import Session

from api.config import Settings
from api.deps import Principal
from api.errors import NotFound, QuotaExceeded
from api.models import Project, Quota
from api.models.servers import IMAGE_QUOTA_RESOURCES, QUOTA_RESOURCES
from api.quotas import repository
from scheduler.resources import RESOURCE_CLASSES


def default_limits(settings: Settings) -> dict[str, int]:
    """The configured limits of a project without quota rows: ``default_quota_<key>`` for
    instances, for each resource class's quota key (``scheduler.resources``) and images."""
    keys = ("instances", *(rc.quota_key for rc in RESOURCE_CLASSES), *IMAGE_QUOTA_RESOURCES)
    return {key: int(getattr(settings, f"default_quota_{key}")) for key in keys}


def limits(session: Session, settings: Settings, project_id: str) -> dict[str, int]:
    """The project's effective limits: stored rows over the configured defaults."""
    effective = default_limits(settings)
    for resource, row in repository.stored_limits(session, project_id).items():
        if resource in effective:
            effective[resource] = row.limit
    return effective


def usage(session: Session, project_id: str) -> dict[str, int]:
    """What the project uses now, computed live."""
    return repository.usage(session, project_id)


def visible_project(session: Session, principal: Principal, project_id: str) -> Project:
    """The project if the caller may see its quota; raises NotFound (also for others')."""
    project = session.get(Project, project_id)
    if project is None or not principal.sees_project(project.id):
        raise NotFound("No such project.", code="project_not_found")
    return project


def lock_and_check(session: Session, settings: Settings, project_id: str,
                   requested: Mapping[str, int]) -> None:
    """Lock the project, then verify that ``requested`` fits within its limits.

    Must be the first write of the unit of work, and the caller must insert what it
    requested before the unit of work commits. Raises NotFound when the project is gone and
    QuotaExceeded (naming resource, requested, used and limit) when something does not fit.
    """
    if not repository.lock_project(session, project_id):
        raise NotFound("No such project.", code="project_not_found")
    # Only what is requested is checked: its usage and limits come in one statement.
    wanted = [r for r in (*QUOTA_RESOURCES, *IMAGE_QUOTA_RESOURCES) if requested.get(r, 0)]
    if not wanted:
        return
    used, stored = repository.usage_and_limits(session, project_id, wanted)
    defaults = default_limits(settings)
    for resource in wanted:
        want = requested[resource]
        stored_limit = stored[resource]
        limit = defaults[resource] if stored_limit is None else stored_limit
        if used[resource] + want > limit:
            raise QuotaExceeded(
                f"Quota exceeded for {resource}: requested {want}, used {used[resource]}, "
                f"limit {limit}.",
                resource=resource, requested=want, used=used[resource], limit=limit,
            )


def set_limits(session: Session, project_id: str, changes: Mapping[str, int]) -> None:
    """Store new limits for some resources of a project.

    A limit below current usage is accepted: nothing running is touched, but the next
    create that needs that resource fails with ``quota_exceeded``. Raises NotFound for an
    unknown project.
    """
    # Serializes with creates of the same project (and with a concurrent PUT, so two first
    # writes of the same resource cannot both insert a row).
    if not repository.lock_project(session, project_id):
        raise NotFound("No such project.", code="project_not_found")
    stored = repository.stored_limits(session, project_id)
    for resource, value in changes.items():
        row = stored.get(resource)
        if row is None:
            session.add(Quota(project_id=project_id, resource=resource, limit=value))
        else:
            row.limit = value
    session.flush()
