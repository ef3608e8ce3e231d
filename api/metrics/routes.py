"""``GET /metrics``: the Prometheus exposition, for admins (or anyone on a public setting)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from api.config import Settings
from api.db import SessionFactory, session_scope
from api.deps import get_principal, require_admin
from api.metrics import service


def _scrape(maker: SessionFactory, settings: Settings, authorization: str | None) -> bytes:
    for session in session_scope(maker):
        if not settings.metrics_public:
            require_admin(get_principal(session, authorization))
        return service.exposition(session, settings)
    raise AssertionError("unreachable")


async def metrics(request: Request) -> Response:
    """The exposition; raises Unauthorized/Forbidden unless admin or ``metrics_public``."""
    body = await run_in_threadpool(_scrape, request.app.state.sessionmaker,
                                   request.app.state.settings,
                                   request.headers.get("authorization"))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI) -> None:
    """Serve ``/metrics``: a plain route, outside the OpenAPI document (it is not JSON)."""
    app.add_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
