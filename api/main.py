"""The FastAPI application: routers, error handlers, request ids, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Response
from sqlalchemy import text
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import metrics
from api.admission import AgentAdmission
from api.agent import liveness, notifier
from api.agent.fastpath import REQUEST_ID as _REQUEST_ID
from api.agent.fastpath import AgentFastPath
from api.agent.routes import console_router as agent_console_router
from api.agent.routes import router as agent_router
from api.body_limit import BodyLimitMiddleware
from api.config import Settings, get_settings
from api.db import make_engine, make_sessionmaker, session_scope
from api.deps import WriteTurns
from api.errors import (
    DATABASE_RETRY_AFTER,
    PROBLEM_RESPONSES,
    Problem,
    database_problem,
    install_error_handlers,
    problem_doc,
    problem_response,
    request_id_var,
)
from api.evacuation.routes import agent_router as evacuation_agent_router
from api.evacuation.routes import router as evacuation_router
from api.flavors.routes import router as flavors_router
from api.guest_metrics import routes as guest_metrics_routes
from api.hosts.routes import router as hosts_router
from api.identity import auth_cache
from api.identity.routes import router as identity_router
from api.images.routes import router as images_router
from api.images.store import ImageStore
from api.keypairs.routes import router as keypairs_router
from api.metrics import routes as metrics_routes
from api.metrics.middleware import RequestMetricsMiddleware
from api.mobility.routes import agent_router as mobility_agent_router
from api.mobility.routes import router as mobility_router
from api.openstack import compute as os_compute
from api.openstack import errors as os_errors
from api.openstack import identity as os_identity
from api.openstack import image as os_image
from api.openstack.microversion import ComputeMicroversion
from api.quotas.routes import router as quotas_router
from api.scaling import lease as scaling_lease
from api.scaling import reconciler as scaling_reconciler
from api.scaling.routes import router as scaling_router
from api.scheduler.routes import router as scheduler_router
from api.server_groups.routes import router as server_groups_router
from api.servers.routes import router as servers_router
from api.ui import routes as ui_routes
from api.usage import host_monitor
from api.usage.routes import router as usage_router

log = logging.getLogger("minicloud.api")

# Every domain's router, in the order they appear in /docs.
ROUTERS: list[APIRouter] = [identity_router, flavors_router, images_router]
ROUTERS += [servers_router, server_groups_router, quotas_router, keypairs_router]
ROUTERS += [hosts_router, agent_router, agent_console_router]
ROUTERS += [evacuation_router, evacuation_agent_router]
ROUTERS += [scheduler_router]
ROUTERS += [usage_router]
ROUTERS += [mobility_router, mobility_agent_router]
ROUTERS += [scaling_router]
ROUTERS += [guest_metrics_routes.router, guest_metrics_routes.agent_router]
# The OpenStack-compatible surface (docs/openstack.md), hidden from /docs.
ROUTERS += [os_identity.router, os_compute.router, os_image.router]


class RequestIdMiddleware:
    """Give every request an id (a well-formed ``X-Request-Id`` or a new one), visible to the
    code through ``request_id_var`` and echoed in the response; an unhandled error becomes a
    500 problem carrying it.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware runs
    the app in a separate task and re-streams the response through memory streams, which
    cost more CPU per create than the scheduler's decision.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        rid = given if _REQUEST_ID.match(given) else f"req-{uuid.uuid4()}"
        token = request_id_var.set(rid)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)["X-Request-Id"] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            database = None if started else database_problem(exc)
            if database is None:
                log.exception("unhandled error request_id=%s", rid)
            if started:
                raise
            response = database or problem_response(500, "internal_error", "Internal error",
                                                    "An unexpected error.")
            await response(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    engine = make_engine(settings.effective_database_url, pool_size=settings.db_pool_size,
                         max_overflow=settings.db_max_overflow,
                         pool_timeout=settings.db_pool_timeout_seconds,
                         lock_timeout=settings.db_lock_timeout_seconds)
    metrics.watch_pool(engine, settings.db_pool_size)
    metrics.count_statements(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.bootstrap_admin_token:
            from api.bootstrap import bootstrap_from_env

            for session in session_scope(app.state.sessionmaker):
                if bootstrap_from_env(session, settings.bootstrap_admin_token):
                    log.info("bootstrapped the admin project from MINICLOUD_BOOTSTRAP_ADMIN_TOKEN")
        stop = asyncio.Event()
        # The host monitor: down hosts' servers stop accruing compute (api.usage.host_monitor).
        monitor = app.state.host_monitor = asyncio.create_task(
            host_monitor.run(app.state.sessionmaker, settings, stop), name="host-monitor")
        # The scaling reconciler: only the holder of the database lease acts (api.scaling).
        scaling = asyncio.create_task(scaling_reconciler.run(
            app.state.sessionmaker, settings, app.state.scaling_holder, stop), name="scaling")
        # Coalesced heartbeats are written once per period (and at shutdown).
        flusher = asyncio.create_task(liveness.run(
            app.state.sessionmaker, settings.heartbeat_flush_seconds, stop), name="heartbeats")
        lag = asyncio.create_task(metrics.watch_loop_lag(stop), name="loop-lag")
        # Other API processes' desired-state changes wake this process's long-polls.
        listener = (asyncio.create_task(notifier.listen(
            settings.effective_database_url, notifier.WAITERS, stop), name="desired-listener")
            if engine.dialect.name == "postgresql" else None)
        try:
            yield
        finally:
            stop.set()
            await monitor
            await scaling
            await flusher
            await lag
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            engine.dispose()
            metrics.process_exited()

    app = FastAPI(
        title="minicloud",
        version="0.1.0",
        description="Rent VMs from a pool of KVM hosts.",
        lifespan=lifespan,
        responses=PROBLEM_RESPONSES,
        # minicloud's metrics are Prometheus (/metrics); FastAPI's built-in OpenTelemetry
        # would otherwise look up the global providers (environment reads) on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.engine = engine
    auth_cache.attach(engine, settings.auth_cache_seconds)
    app.state.sessionmaker = make_sessionmaker(engine)
    # Write-heavy routes take turns on the event loop (api.deps): one at a time on SQLite,
    # which has one writer; a few per process elsewhere.
    app.state.write_turns = WriteTurns(
        1 if engine.dialect.name == "sqlite" else settings.write_turns_per_process)
    app.state.scaling_holder = scaling_lease.new_holder()
    install_error_handlers(app)
    # Under /identity, /compute and /image errors take the OpenStack services' shapes.
    os_errors.install(app)

    app.add_middleware(ComputeMicroversion)
    # Outermost last: request ids first, then the body cap (a 413 carries the request's id),
    # then per-route metrics, then admission of agents.
    app.add_middleware(AgentAdmission, concurrency=settings.agent_admission_concurrency,
                       wait_seconds=settings.agent_admission_wait_seconds,
                       retry_after=settings.retry_after_seconds)
    app.add_middleware(RequestMetricsMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    # Outermost of all: idle heartbeats and unchanged long-polls of hosts this process
    # remembers never reach FastAPI, the thread pool or SQL (api.agent.fastpath).
    app.add_middleware(AgentFastPath, settings=settings, engine=lambda: app.state.engine)
    metrics_routes.install(app)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={
        200: {"content": {"application/json": {"schema": {"type": "object"}}}},
        503: problem_doc("The database does not answer (`database_unavailable`), or the "
                         "image store is out of space (`image_store_full`).")})
    def readyz() -> Response:
        """Readiness: the database answers and the image store has room (a 503 names what
        is down, never driver text, paths or sizes)."""
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:  # any driver error means "not ready"
            log.warning("readiness check: the database does not answer", exc_info=True)
            code = "database_unavailable"
            return problem_response(
                503, code, "Not ready", "The database does not answer.",
                headers={"Retry-After": str(DATABASE_RETRY_AFTER[code])},
                checks={"database": "unavailable"})
        try:
            free = ImageStore(settings.image_dir).free_bytes()
        except OSError:
            free = 0
        if free < settings.image_store_min_free_bytes:
            # Says what is down, not where or how much (no paths, no sizes).
            return problem_response(503, "image_store_full", "Not ready",
                                    "The image store is out of space.",
                                    checks={"image_store": "full"})
        return Response('{"status":"ready"}', media_type="application/json")

    # Routes are matched in order and POST /v1/servers is the hot path: its router goes first
    # (no other router's paths start with /v1/servers), so a create is not tested against
    # every identity, flavor and image route; /docs lists it first too.
    app.include_router(servers_router)
    for router in ROUTERS:
        if router is not servers_router:
            app.include_router(router)
    ui_routes.install(app)  # the web console at /ui (docs/ui.md)

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # The problem responses refer to this schema (api.errors.PROBLEM_RESPONSES).
        schema = base_openapi()
        schema.setdefault("components", {}).setdefault("schemas", {}).setdefault(
            "Problem", Problem.model_json_schema())
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
