"""Guest metrics over HTTP: the agents' batches in, a server's series out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from api.db import utcnow
from api.deps import CurrentHost, CurrentUser, SessionDep, SettingsDep
from api.errors import problem_doc
from api.fields import PathId
from api.guest_metrics import service
from api.guest_metrics.schemas import GuestSamplesIn, GuestSamplesOut, MetricSeriesOut

agent_router = APIRouter(prefix="/v1/agent", tags=["agent"])
router = APIRouter(prefix="/v1", tags=["servers"])


@agent_router.post("/guest-metrics", response_model=GuestSamplesOut)
def report_guest_metrics(body: GuestSamplesIn, host: CurrentHost, session: SessionDep,
                         settings: SettingsDep) -> GuestSamplesOut:
    """One interval's libvirt counters of this host's servers (one request per host).

    Samples of servers that are not live on this host are ignored and listed in ``ignored``.
    """
    return service.ingest(session, settings, host.host_id, body, utcnow())


def _utc(value: datetime | None) -> datetime | None:
    # A time without a zone in a query string means UTC.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@router.get("/servers/{server_id}/metrics", response_model=MetricSeriesOut, responses={
    422: problem_doc("Unknown metric (`unknown_metric`, `names` lists them) or a bad range "
                     "(`invalid_metric_range`).")})
def server_metrics(
    server_id: PathId, principal: CurrentUser, session: SessionDep, settings: SettingsDep,
    name: Annotated[str, Query(min_length=1, max_length=64)] = "cpu_util",
    start: datetime | None = None, end: datetime | None = None,
    step: Annotated[int | None, Query(ge=1, le=366 * 86400)] = None,
) -> MetricSeriesOut:
    """A guest metric of one of the project's servers: one averaged point per ``step``
    seconds with samples in [start, end) (default: the last hour)."""
    return service.series(session, settings, principal, server_id, name, _utc(start),
                          _utc(end), step, utcnow())
