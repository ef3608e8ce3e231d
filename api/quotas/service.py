"""Quota rules: limits (stored or default), live usage, and the atomic check.

Usage is never a counter: it is computed from what the project holds (servers with
``deleted_at IS NULL``), so it cannot drift. Atomicity comes from ``lock_project``: every
quota-checked write first locks the project, then counts, then inserts, in one transaction.
A process may skip the count when the project's generation proves that its own last check's
result still bounds the usage (``UsageBounds``); a request that does not fit is always
counted live.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from sqlalchemy.orm import Session

from api.config import Settings
from api.db import on_commit
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


class UsageBounds:
    """Per project, a bound on its server usage and its stored limits as of the generation
    the process's last committed quota check left (``lock_and_check``), so the next create
    of the project skips the count over its servers.

    Sound because every write that adds usage or changes a limit locks the project, which
    bumps its generation, and a bound is recorded only once its unit of work has committed
    (``api.db.on_commit``): while the generation is the recorded one, nothing was added and
    no limit changed since, in any process; only deletes, which free usage, may have
    happened. So the bound is never below the live usage, and a request that fits it fits.
    One that does not fit is counted live, and refused only on the live count.
    """

    # Projects remembered; the oldest is dropped beyond this.
    SIZE = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bounds: OrderedDict[str, tuple[int, dict[str, int], dict[str, int | None]]] = \
            OrderedDict()

    def get(self, project_id: str, generation: int, wanted: Sequence[str]
            ) -> tuple[dict[str, int], dict[str, int | None]] | None:
        """(usage bound, stored limits) of ``wanted`` if recorded at ``generation``."""
        with self._lock:
            bound = self._bounds.get(project_id)
        if bound is None or bound[0] != generation or not all(r in bound[1] for r in wanted):
            return None
        return bound[1], bound[2]

    def record(self, project_id: str, generation: int, used: Mapping[str, int],
               stored: Mapping[str, int | None]) -> None:
        """Remember a bound (call once its unit of work committed)."""
        with self._lock:
            self._bounds[project_id] = (generation, dict(used), dict(stored))
            self._bounds.move_to_end(project_id)
            while len(self._bounds) > self.SIZE:
                self._bounds.popitem(last=False)


_BOUNDS = UsageBounds()


def lock_and_check(session: Session, settings: Settings, project_id: str,
                   requested: Mapping[str, int]) -> None:
    """Lock the project, then verify that ``requested`` fits within its limits.

    Must be the first write of the unit of work, and the caller must insert what it
    requested (or less) before the unit of work commits. Raises NotFound when the project
    is gone and QuotaExceeded (naming resource, requested, used and limit) when something
    does not fit. Server resources are checked against the bound of ``UsageBounds`` when
    the project's generation shows it still holds, else against the live usage.
    """
    generation = repository.lock_project_generation(session, project_id)
    if generation is None:
        raise NotFound("No such project.", code="project_not_found")
    # Only what is requested is checked: its usage and limits come in one statement.
    wanted = [r for r in (*QUOTA_RESOURCES, *IMAGE_QUOTA_RESOURCES) if requested.get(r, 0)]
    if not wanted:
        return
    defaults = default_limits(settings)
    servers_only = not any(r in IMAGE_QUOTA_RESOURCES for r in wanted)
    known = _BOUNDS.get(project_id, generation - 1, wanted) if servers_only else None
    if known is None or _over(known[0], known[1], defaults, wanted, requested) is not None:
        known = repository.usage_and_limits(session, project_id, wanted)
    used, stored = known
    over = _over(used, stored, defaults, wanted, requested)
    if over is not None:
        want, limit = requested[over], _limit(over, stored, defaults)
        raise QuotaExceeded(
            f"Quota exceeded for {over}: requested {want}, used {used[over]}, "
            f"limit {limit}.",
            resource=over, requested=want, used=used[over], limit=limit,
        )
    if servers_only:
        after = {r: used[r] + requested[r] for r in wanted}
        kept = {r: stored[r] for r in wanted}
        on_commit(session, lambda: _BOUNDS.record(project_id, generation, after, kept))


def _limit(resource: str, stored: Mapping[str, int | None], defaults: Mapping[str, int]) -> int:
    stored_limit = stored[resource]
    return defaults[resource] if stored_limit is None else stored_limit


def _over(used: Mapping[str, int], stored: Mapping[str, int | None],
          defaults: Mapping[str, int], wanted: Sequence[str],
          requested: Mapping[str, int]) -> str | None:
    """The first of ``wanted`` whose request does not fit, or None."""
    for resource in wanted:
        if used[resource] + requested[resource] > _limit(resource, stored, defaults):
            return resource
    return None


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
