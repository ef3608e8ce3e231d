"""Evacuation of a down host (admin) and the fence orders of its agent."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminUser, CurrentHost, SessionDep, SettingsDep
from api.evacuation import service
from api.evacuation.schemas import (
    EvacuationOut,
    EvacuationProgress,
    FencedIn,
    FencedOut,
    FenceOrdersOut,
)
from api.fields import PathId

router = APIRouter(prefix="/v1", tags=["hosts"])
agent_router = APIRouter(prefix="/v1/agent", tags=["agent"])


@router.post("/hosts/{host_id}/evacuate", status_code=202, response_model=EvacuationOut)
def evacuate_host(host_id: PathId, admin: AdminUser, session: SessionDep,
                  settings: SettingsDep) -> EvacuationOut:
    """Rebuild every server of a down host on other hosts, from their images (admin).

    Local disk content is lost. A server no host can take stays, with the reason; calling
    again retries it. 409 ``host_not_down`` while the host heartbeats.
    """
    return service.evacuate_host(session, settings, host_id, user_id=admin.user_id)


@router.get("/hosts/{host_id}/evacuation", response_model=EvacuationProgress)
def show_evacuation(host_id: PathId, _: AdminUser, session: SessionDep) -> EvacuationProgress:
    """Progress of the host's newest evacuation (admin)."""
    return service.host_progress(session, host_id)


@agent_router.get("/fencing", response_model=FenceOrdersOut)
def fence_orders(host: CurrentHost, session: SessionDep) -> FenceOrdersOut:
    """Servers evacuated from this host: destroy and undefine their domains, delete their
    files, then report them done; every other agent call is refused until then."""
    return FenceOrdersOut(server_ids=service.fence_orders(session, host.host_id))


@agent_router.post("/fencing", response_model=FencedOut)
def report_fenced(body: FencedIn, host: CurrentHost, session: SessionDep) -> FencedOut:
    """This host removed the old copies of these evacuated servers."""
    closed, pending = service.fenced(session, host.host_id, body.fenced)
    return FencedOut(closed=closed, pending=pending)
