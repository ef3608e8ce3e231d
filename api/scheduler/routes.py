"""Scheduler HTTP routes: /v1/scheduler/simulate (admin)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentUser, SessionDep, SettingsDep
from api.errors import request_id_var
from api.scheduler import service
from api.scheduler.schemas import SimulateRequest, SimulateResponse

router = APIRouter(prefix="/v1/scheduler", tags=["scheduler"])


@router.post("/simulate", response_model=SimulateResponse)
def simulate(body: SimulateRequest, principal: CurrentUser, session: SessionDep,
             settings: SettingsDep) -> SimulateResponse:
    """Would this request fit, where, and if not why; how many more fit. Claims nothing.

    Tenants ask for their own project and see no host; admins see hosts and may ask as any
    project (``project_id``)."""
    return service.simulate(session, settings, principal, body, request_id_var.get())
