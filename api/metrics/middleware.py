"""Per-route request counts and latencies, labelled by route template (never by raw path)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import REQUEST_SECONDS, REQUESTS, request_scope


class RequestMetricsMiddleware:
    """Count each HTTP request by method, route template and status class, and time it.

    The label is the matched route's template (``/v1/servers/{server_id}``), which the router
    leaves in ``scope["route"]``; a path no route matches is ``unmatched``, so ids in paths
    never become label values.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        token = request_scope.set(scope)  # names the route of the statements it runs

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            request_scope.reset(token)
            route = scope.get("route")
            template = str(getattr(route, "path", "unmatched")) if route else "unmatched"
            method = str(scope.get("method", ""))
            REQUESTS.labels(method, template, f"{status // 100}xx").inc()
            REQUEST_SECONDS.labels(method, template).observe(time.perf_counter() - started)
