"""The console's session: the API secret in an HttpOnly cookie, CSRF tokens, the API client.

The cookie holds the user's token (or application credential secret) itself: HttpOnly (no
script reads it), SameSite=Strict (no other site sends it), Secure when served over HTTPS,
path ``/ui``. Every state-changing request also carries a CSRF token (a hidden form field or
the ``X-CSRF-Token`` header htmx adds) that is an HMAC of the secret, so a page that cannot
read the cookie cannot forge it. The login form, which has no session yet, uses a random
double-submit cookie instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import Request, Response

SESSION_COOKIE = "mc_session"
LOGIN_CSRF_COOKIE = "mc_login_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
COOKIE_PATH = "/ui"


def csrf_for(secret: str) -> str:
    """The CSRF token that goes with a session secret."""
    return hmac.new(secret.encode(), b"minicloud-ui-csrf", hashlib.sha256).hexdigest()


def new_login_csrf() -> str:
    """A random token for the login form's double-submit cookie."""
    return secrets.token_urlsafe(32)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session(response: Response, request: Request, secret: str, max_age: int | None) -> None:
    """Store ``secret`` as the session cookie."""
    response.set_cookie(SESSION_COOKIE, secret, max_age=max_age, path=COOKIE_PATH,
                        httponly=True, samesite="strict", secure=_secure(request))


def clear_session(response: Response) -> None:
    """Forget the session cookie."""
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")


def set_login_csrf(response: Response, request: Request, token: str) -> None:
    """Store the login form's double-submit token."""
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, path=COOKIE_PATH,
                        httponly=True, samesite="strict", secure=_secure(request))


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two optional strings (None never matches)."""
    return a is not None and b is not None and hmac.compare_digest(a, b)


@dataclass(frozen=True)
class ApiAnswer:
    """One answer of the API: status, parsed JSON body (or None) and raw text."""

    status: int
    body: Any
    text: str
    headers: httpx.Headers

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def problem(self) -> str:
        """The problem document's human sentence (or the raw text)."""
        if isinstance(self.body, dict):
            detail = self.body.get("detail") or self.body.get("title")
            if detail:
                return str(detail)
        return self.text[:500]

    @property
    def code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("code"), str):
            return str(self.body["code"])
        return None


class Api:
    """The ``/v1`` API called in-process (the same ASGI app) with the session's secret."""

    def __init__(self, request: Request, secret: str | None) -> None:
        self.secret = secret
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        request_id = request.headers.get("x-request-id")
        if request_id:
            headers["X-Request-Id"] = request_id
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=request.app),
                                         base_url="http://minicloud-ui", headers=headers,
                                         timeout=60)

    async def close(self) -> None:
        await self._client.aclose()

    async def call(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                   json: Any = None, content: Any = None,
                   headers: dict[str, str] | None = None) -> ApiAnswer:
        """Send one request; never raises for an HTTP error status."""
        clean = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        r = await self._client.request(method, path, params=clean, json=json, content=content,
                                       headers=headers)
        body: Any = None
        if r.headers.get("content-type", "").split(";")[0].endswith("json"):
            try:
                body = r.json()
            except ValueError:
                body = None
        return ApiAnswer(r.status_code, body, r.text, r.headers)

    async def get(self, path: str, **params: Any) -> ApiAnswer:
        return await self.call("GET", path, params=params)
