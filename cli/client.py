"""A thin httpx wrapper that turns problem+json answers into ``ApiError``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# Uploads and downloads may take long between chunks on a busy host; no read timeout there.
STREAM_TIMEOUT = httpx.Timeout(30.0, connect=5.0, read=None, write=None)


class CliError(Exception):
    """An error the CLI reports as one readable message and a non-zero exit code."""

    exit_code = 1

    def __init__(self, detail: str, *, code: str = "error", status: int | None = None,
                 request_id: str | None = None, errors: list[dict[str, Any]] | None = None
                 ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        self.status = status
        self.request_id = request_id
        self.errors = errors or []


class ApiError(CliError):
    """The API answered with an error (4xx/5xx)."""


class Unreachable(CliError):
    """The API did not answer at all."""

    exit_code = 3


def _error_from(response: httpx.Response) -> ApiError:
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "code" in body:
        errors = body.get("errors")
        return ApiError(str(body.get("detail") or body.get("title") or "error"),
                        code=str(body["code"]), status=response.status_code,
                        request_id=body.get("request_id") or response.headers.get("x-request-id"),
                        errors=errors if isinstance(errors, list) else None)
    text = response.text.strip()[:300] or response.reason_phrase
    return ApiError(text, code=f"http_{response.status_code}", status=response.status_code,
                    request_id=response.headers.get("x-request-id"))


class ApiClient:
    """Calls the minicloud API with a bearer token; every error becomes a ``CliError``."""

    def __init__(self, url: str, token: str = "", *,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"User-Agent": "minicloud-cli/0.1", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url
        self._http = httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT,
                                  transport=transport)

    def close(self) -> None:
        """Release the connection pool."""
        self._http.close()

    def request(self, method: str, path: str, *, json: Any = None,
                params: dict[str, Any] | None = None) -> Any:
        """Send one request; return the decoded JSON body (None for 204).

        Raises ApiError for an error answer, Unreachable when the API does not answer.
        """
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, json=json, params=clean)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise _error_from(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    def get_all(self, path: str, *, items: str | None = None, **params: Any) -> list[Any]:
        """GET a JSON array (or the array under ``items`` of an object) and every further
        page its ``Link: <...>; rel="next"`` names."""
        out: list[Any] = []
        url: str | None = path
        query: dict[str, Any] | None = {k: v for k, v in params.items() if v is not None}
        while url is not None:
            try:
                response = self._http.get(url, params=query)
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from None
            if response.status_code >= 400:
                raise _error_from(response)
            body = response.json()
            if items is not None and isinstance(body, dict):
                body = body.get(items)
            out.extend(body if isinstance(body, list) else [])
            nxt = response.links.get("next", {}).get("url")
            url, query = (nxt, None) if nxt else (None, None)
        return out

    def get_text(self, path: str, accept: str, **params: Any) -> str:
        """GET a non-JSON representation (e.g. ``text/csv``); raises ApiError or Unreachable."""
        clean = {k: v for k, v in params.items() if v is not None}
        try:
            response = self._http.get(path, params=clean, headers={"Accept": accept})
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise _error_from(response)
        return response.text

    def get(self, path: str, **params: Any) -> Any:
        """GET with query parameters (None values are left out)."""
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        """POST a JSON body."""
        return self.request("POST", path, json=body if body is not None else {})

    def put(self, path: str, body: Any) -> Any:
        """PUT a JSON body."""
        return self.request("PUT", path, json=body)

    def patch(self, path: str, body: Any) -> Any:
        """PATCH a JSON body."""
        return self.request("PATCH", path, json=body)

    def delete(self, path: str) -> Any:
        """DELETE."""
        return self.request("DELETE", path)

    def upload(self, path: str, chunks: Iterable[bytes], size: int) -> Any:
        """PUT a raw body streamed from ``chunks`` (never held in memory as a whole).

        Raises ApiError or Unreachable.
        """
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        try:
            response = self._http.put(path, content=chunks, headers=headers,
                                      timeout=STREAM_TIMEOUT)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise _error_from(response)
        return response.json() if response.content else None

    @contextmanager
    def download(self, path: str) -> Iterator[httpx.Response]:
        """Open a streaming GET; the caller iterates ``response.iter_bytes()``.

        Raises ApiError or Unreachable.
        """
        try:
            with self._http.stream("GET", path, timeout=STREAM_TIMEOUT,
                                   headers={"Accept": "*/*"}) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                yield response
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: httpx.TransportError) -> Unreachable:
        return Unreachable(f"Cannot reach the minicloud API at {self.url}: {str(exc).rstrip('.')}. "
                           "Is it running? Set MINICLOUD_URL or run 'minicloud login'.",
                           code="api_unreachable")
