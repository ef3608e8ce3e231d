"""Bounded admission of agent enrollments, inventories and heartbeats.

A fleet that starts at once (a data centre powering up, an API restart) sends every host's
enrollment, inventory and heartbeat together. Each is a short write; handled all at once they
would queue on the connection pool and the database's write lock until they time out as 500s.
Here at most ``concurrency`` of them run per API process; the others wait for a turn up to
``wait_seconds`` (costing an asyncio waiter, no thread, no connection) and are then answered
503 ``agent_busy`` with ``Retry-After``, which the agent's client honours.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import problem_response
from api.metrics import ADMISSION_REJECTED, ADMITTED

ADMITTED_PATHS = frozenset({"/v1/agent/enroll", "/v1/agent/inventory", "/v1/agent/heartbeat",
                            "/v1/agent/guest-metrics"})
"""The agent calls that take a turn; the long-poll and observations are not limited here."""


class AgentAdmission:
    """ASGI middleware: at most ``concurrency`` admitted calls at once, FIFO."""

    def __init__(self, app: ASGIApp, *, concurrency: int, wait_seconds: float,
                 retry_after: int) -> None:
        self.app = app
        self.wait_seconds = wait_seconds
        self.retry_after = retry_after
        self._turns = asyncio.Semaphore(concurrency)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in ADMITTED_PATHS:
            await self.app(scope, receive, send)
            return
        if not await self._turn():
            ADMISSION_REJECTED.labels(path).inc()
            response = problem_response(
                503, "agent_busy", "Service unavailable",
                "Too many agent requests at once; retry after the Retry-After delay.",
                headers={"Retry-After": str(self.retry_after)})
            await response(scope, receive, send)
            return
        ADMITTED.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            ADMITTED.dec()
            self._turns.release()

    async def _turn(self) -> bool:
        if not self._turns.locked():
            await self._turns.acquire()  # free: returns at once
            return True
        try:
            await asyncio.wait_for(self._turns.acquire(), self.wait_seconds)
        except TimeoutError:
            return False
        return True
