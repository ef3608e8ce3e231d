"""Quota HTTP routes: /v1/quotas/{project_id}."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminUser, CurrentUser, SessionDep, SettingsDep
from api.fields import PathId
from api.quotas import service
from api.quotas.schemas import QuotaOut, QuotaUpdate, QuotaValues

router = APIRouter(prefix="/v1", tags=["quotas"])


def _out(session: SessionDep, settings: SettingsDep, project_id: str) -> QuotaOut:
    return QuotaOut(
        project_id=project_id,
        limits=QuotaValues(**service.limits(session, settings, project_id)),
        usage=QuotaValues(**service.usage(session, project_id)),
    )


@router.get("/quotas/{project_id}", response_model=QuotaOut)
def show_quota(project_id: PathId, principal: CurrentUser, session: SessionDep,
               settings: SettingsDep) -> QuotaOut:
    """A project's limits and live usage (own project; admins: any; others 404).

    Usage counts every server not yet deleted (a DELETING server still holds its resources)."""
    project = service.visible_project(session, principal, project_id)
    return _out(session, settings, project.id)


@router.put("/quotas/{project_id}", response_model=QuotaOut)
def update_quota(project_id: PathId, body: QuotaUpdate, _: AdminUser, session: SessionDep,
                 settings: SettingsDep) -> QuotaOut:
    """Set any subset of a project's limits (admin).

    A limit may be set below current usage: running servers are untouched, and new creates
    that need that resource fail with 409 `quota_exceeded` until usage drops below it."""
    service.set_limits(session, project_id, body.model_dump(exclude_none=True))
    return _out(session, settings, project_id)
