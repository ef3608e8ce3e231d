"""Domain errors with stable codes, and the one handler that renders them.

Every error answer is an RFC 9457 ``application/problem+json`` document:
``{"type", "title", "status", "detail", "code", "request_id", ...extra}``.
Once published, a ``code`` never changes meaning; every code is declared in
``api.error_codes`` with its status.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.db import database_trouble
from api.error_codes import status_of
from api.metrics import DATABASE_ERRORS

log = logging.getLogger("minicloud.api")

PROBLEM_JSON = "application/problem+json"
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")


class Problem(BaseModel):
    """An error answer (RFC 9457): ``code`` is stable; some codes add fields (e.g. ``errors``)."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    code: str
    request_id: str


def problem_doc(description: str) -> dict[str, Any]:
    """An OpenAPI response entry for a problem document."""
    # No "model" here: FastAPI would also list application/json; create_app registers the schema.
    return {"description": description,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


# Documented on every operation; each route's own ``responses`` may add more.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: problem_doc("Malformed JSON (`malformed_json`) or a bad request."),
    401: problem_doc("Missing, unknown or expired credential."),
    403: problem_doc("The role may not do this (`admin_required`, `read_only_role`)."),
    404: problem_doc("No such object, or it belongs to another project."),
    409: problem_doc("The object's state or a quota forbids it."),
    422: problem_doc("Invalid input (`invalid_input`): `errors` lists each field."),
}


class DomainError(Exception):
    """Base of all errors a service may raise; rendered as a problem document.

    ``code=`` names a registered code answered with this class's status (checked by
    tests/api/test_error_codes.py); a subclass's default code is checked when it is defined.
    """

    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if status_of(cls.code) != cls.status:
            raise TypeError(f"{cls.__name__}: code {cls.code!r} is registered with status "
                            f"{status_of(cls.code)}, not {cls.status}")

    def __init__(self, detail: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.extra = extra


class InvalidInput(DomainError):
    status, code, title = 422, "invalid_input", "Invalid input"


class Unauthorized(DomainError):
    status, code, title = 401, "unauthorized", "Authentication required"


class Forbidden(DomainError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(DomainError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(DomainError):
    status, code, title = 409, "conflict", "Conflict"


class QuotaExceeded(DomainError):
    status, code, title = 409, "quota_exceeded", "Quota exceeded"


class TooManyRequests(DomainError):
    """Refused for now; ``retry_after`` (whole seconds) also goes out as ``Retry-After``."""

    status, code, title = 429, "too_many_requests", "Too many requests"

    def __init__(self, detail: str, *, retry_after: int, code: str | None = None,
                 **extra: Any) -> None:
        super().__init__(detail, code=code, retry_after=retry_after, **extra)
        self.retry_after = retry_after


class PayloadTooLarge(DomainError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class InsufficientStorage(DomainError):
    status, code, title = 507, "insufficient_storage", "Insufficient storage"


def problem_response(
    status: int, code: str, title: str, detail: str, *,
    headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """Build a problem+json response carrying the current request id (and ``headers``)."""
    body: dict[str, Any] = {
        "type": f"https://minicloud.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id_var.get(),
    }
    body.update(extra)
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"} | (headers or {})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


# code -> title of the HTTP layer's errors (unknown routes, wrong methods, ...), keyed by the
# status each code is registered with.
_HTTP_CODES = {status_of(code): (code, title) for code, title in (
    ("bad_request", "Bad request"),
    ("unauthorized", "Authentication required"),
    ("forbidden", "Forbidden"),
    ("not_found", "Not found"),
    ("method_not_allowed", "Method not allowed"),
    ("payload_too_large", "Payload too large"),
    ("unsupported_media_type", "Unsupported media type"),
)}


def _validation_detail(errors: list[dict[str, Any]]) -> tuple[str, str, list[dict[str, Any]]]:
    clean = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
         "type": str(e.get("type", ""))}
        for e in errors
    ]
    if any(e["type"] == "json_invalid" for e in clean):
        return "malformed_json", "The request body is not valid JSON.", clean
    first = clean[0] if clean else {"loc": [], "msg": "invalid"}
    where = ".".join(p for p in first["loc"] if p != "body") or "request"
    return "invalid_input", f"{where}: {first['msg']}", clean


# Seconds a client should wait before retrying after a database 503 (Retry-After).
DATABASE_RETRY_AFTER = {"database_busy": 1, "database_unavailable": 5}
_DATABASE_DETAIL = {
    "database_busy": "The database is busy (no connection free in time); retry.",
    "database_unavailable": "The database does not answer; retry later.",
}


def database_problem(exc: BaseException) -> JSONResponse | None:
    """A 503 ``database_busy``/``database_unavailable`` answer with ``Retry-After`` when
    ``exc`` means the database is saturated or unreachable (``api.db.database_trouble``),
    else None. The driver's text is logged, never answered."""
    code = database_trouble(exc)
    if code is None:
        return None
    log.warning("%s request_id=%s: %s", code, request_id_var.get(), exc)
    DATABASE_ERRORS.labels(code).inc()
    return problem_response(503, code, "Service unavailable", _DATABASE_DETAIL[code],
                            headers={"Retry-After": str(DATABASE_RETRY_AFTER[code])})


def install_error_handlers(app: FastAPI) -> None:
    """Render every error, expected or not, as a problem document."""

    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        response = problem_response(exc.status, exc.code, exc.title, exc.detail, **exc.extra)
        if isinstance(exc, TooManyRequests):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        code, detail, errors = _validation_detail(list(exc.errors()))
        status = status_of(code)
        title = "Malformed JSON" if code == "malformed_json" else "Invalid input"
        return problem_response(status, code, title, detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "HTTP error"))
        return problem_response(exc.status_code, code, title, str(exc.detail))

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError) -> JSONResponse:
        # Pre-checks catch the usual cases; this is the safety net for a race between two
        # requests creating the same unique thing. The unit of work has rolled back.
        log.info("integrity conflict request_id=%s: %s", request_id_var.get(), exc.orig)
        return problem_response(409, "conflict", "Conflict",
                                "A concurrent request changed the same object; retry.")

    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeout)
    async def _database(_: Request, exc: Exception) -> JSONResponse:
        # A saturated or unreachable database is the server's condition, not a bug: 503 with
        # Retry-After. Any other driver error is a bug like any other.
        database = database_problem(exc)
        if database is not None:
            return database
        log.exception("unexpected database error request_id=%s", request_id_var.get())
        return problem_response(500, "internal_error", "Internal error", "An unexpected error.")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error request_id=%s", request_id_var.get())
        return problem_response(500, "internal_error", "Internal error", "An unexpected error.")
