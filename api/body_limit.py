"""Request-body caps, enforced before any route parses a body (413 ``payload_too_large``;
under the OpenStack prefixes, 413 in that service's own error shape)."""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem_response
from api.openstack.errors import PREFIXES as OPENSTACK_PREFIXES
from api.openstack.errors import error_response as openstack_error

# Routes that stream their body to disk: images under their own cap (``max_image_bytes``;
# also the web console's upload, which streams to the images API), a cold migration's disk
# (as large as the server's disk, from its authenticated source host).
_EXEMPT = re.compile(r"^(/v1/images|/image/v2/images|/ui/images)/[^/]+/file/?$"
                     r"|^/v1/agent/servers/[^/]+/migration/[a-z]+$")


class BodyLimitMiddleware:
    """Refuse a body over ``max_bytes``: at once when ``Content-Length`` says so, else (a
    chunked body) as soon as the bytes received pass it. The body of an accepted chunked
    request is buffered (at most ``max_bytes``) and replayed, so no route ever sees part of
    an oversized body and nothing is written for it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
                scope["method"] == "PUT" and _EXEMPT.match(scope["path"])):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # No length declared: read the whole body (bounded) before the app runs.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"The request body is larger than {self.max_bytes} bytes."
        path: str = scope["path"]
        # The middleware runs outside the exception handlers, so the OpenStack layer's
        # renderer (api.openstack.errors) is called here for its paths.
        response = (openstack_error(path, 413, detail) if path.startswith(OPENSTACK_PREFIXES)
                    else problem_response(413, "payload_too_large", "Payload too large",
                                          detail, limit=self.max_bytes))
        # Close the connection: the rest of the body is never read.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)
