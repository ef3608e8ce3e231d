"""Scheduler HTTP routes: /v1/scheduler/simulate (admin)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminUser, SessionDep, SettingsDep
from api.errors import request_id_var
from api.scheduler import service
from api.scheduler.schemas import SimulateRequest, SimulateResponse

router = APIRouter(prefix="/v1/scheduler", tags=["scheduler"])


@router.post("/simulate", response_model=SimulateResponse)
def simulate(body: SimulateRequest, admin: AdminUser, session: SessionDep,
             settings: SettingsDep) -> SimulateResponse:
    """Would this request fit, where, and if not why; how many more fit. Claims nothing."""
    return service.simulate(session, settings, admin, body, request_id_var.get())
