"""Errors in the OpenStack services' own shapes, for requests under their path prefixes.

Nova answers ``{"itemNotFound": {"code": 404, "message": ...}}`` (the key names the fault),
Glance and Keystone ``{"error": {"code", "title", "message"}}``. The same domain errors the
services raise are rendered here; everything outside the prefixes keeps problem+json.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import DomainError

PREFIXES = ("/identity", "/compute", "/image")

# Nova's fault names by status (nova/api/openstack/wsgi.py, webob's exception classes).
_NOVA_FAULTS = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
                405: "badMethod", 409: "conflictingRequest", 413: "overLimit",
                415: "badMediaType", 422: "unprocessableEntity", 500: "computeFault"}
_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Request Entity Too Large",
           415: "Unsupported Media Type", 500: "Internal Server Error"}


def os_status(exc: DomainError) -> int:
    """The status OpenStack uses: 422 (minicloud's invalid input) is Nova's 400; a quota
    refusal is Nova's 403 ``forbidden`` ("Quota exceeded ...")."""
    if exc.status == 422:
        return 400
    if exc.code == "quota_exceeded":
        return 403
    return exc.status


def error_response(path: str, status: int, message: str) -> JSONResponse:
    """The error body of the service that owns ``path``."""
    body: dict[str, Any]
    headers: dict[str, str] = {}
    if path.startswith("/compute"):
        body = {_NOVA_FAULTS.get(status, "computeFault"): {"code": status, "message": message}}
    else:
        body = {"error": {"code": status, "title": _TITLES.get(status, "Error"),
                          "message": message}}
    if status == 401:
        headers["WWW-Authenticate"] = 'Keystone uri="/identity"'
    return JSONResponse(body, status_code=status, headers=headers)


def _ours(request: Request) -> bool:
    return request.url.path.startswith(PREFIXES)


Handler = Callable[[Request, Any], Awaitable[Response]]


def install(app: FastAPI) -> None:
    """Wrap the app's error handlers: OpenStack paths get OpenStack bodies (call after
    ``api.errors.install_error_handlers``)."""
    handlers: dict[Any, Handler] = dict(app.exception_handlers)

    def wrap(kind: Any, render: Callable[[Request, Any], Response]) -> None:
        fallback = handlers[kind]

        async def handler(request: Request, exc: Any) -> Response:
            if _ours(request):
                return render(request, exc)
            return await fallback(request, exc)

        app.add_exception_handler(kind, handler)

    def domain(request: Request, exc: DomainError) -> Response:
        return error_response(request.url.path, os_status(exc), exc.detail)

    def validation(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return error_response(request.url.path, 400,
                              f"Invalid input for field/attribute {where}: "
                              f"{first.get('msg', 'invalid')}")

    def http(request: Request, exc: StarletteHTTPException) -> Response:
        message = ("The resource could not be found." if exc.status_code == 404
                   else str(exc.detail))
        return error_response(request.url.path, exc.status_code, message)

    def integrity(request: Request, _: IntegrityError) -> Response:
        return error_response(request.url.path, 409,
                              "A concurrent request changed the same object; retry.")

    unexpected = handlers[Exception]

    async def internal(request: Request, exc: Exception) -> Response:
        logged = await unexpected(request, exc)  # logs it with the request id
        if not _ours(request):
            return logged
        return error_response(request.url.path, 500, "An unexpected error.")

    app.add_exception_handler(Exception, internal)
    wrap(DomainError, domain)
    wrap(RequestValidationError, validation)
    wrap(StarletteHTTPException, http)
    wrap(IntegrityError, integrity)
