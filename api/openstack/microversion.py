"""Nova's microversion headers on every /compute answer: always 2.1, the only one offered."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ComputeMicroversion:
    """Add ``OpenStack-API-Version: compute 2.1`` (and the legacy header) to /compute answers.

    Whatever a client asks for, the answer is 2.1 (never 406): only 2.1 is advertised, so
    clients that negotiate never ask for more. Plain ASGI, like ``RequestIdMiddleware``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/compute"):
            await self.app(scope, receive, send)
            return

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["OpenStack-API-Version"] = "compute 2.1"
                headers["X-OpenStack-Nova-API-Version"] = "2.1"
                headers["Vary"] = "OpenStack-API-Version, X-OpenStack-Nova-API-Version"
            await send(message)

        await self.app(scope, receive, send_with_version)
