"""Real HTTP proxies in front of the API, which the agent talks to as to the API.

``ForwardingProxy`` forwards every request as it is; a subclass may answer a request itself
(``intercept``) or change the API's answer (``rewrite``). ``FaultyProxy`` answers chosen
paths with an error status, e.g. to make one image download fail with a real 5xx while
everything else works.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import httpx

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
        "host", "accept-encoding"}


class Answer:
    """An answer the proxy gives itself."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None,
                 content_type: str = "application/json") -> None:
        self.status = status
        self.payload = json.dumps(body).encode()
        self.headers = {"Content-Type": content_type, **(headers or {})}


class ForwardingProxy:
    """Forward every request to ``upstream``, unless ``intercept`` answers it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._http = httpx.Client(timeout=120)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, headers: dict[str, str], payload: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                answer = proxy.intercept(self.command, self.path, body)
                if answer is not None:
                    self._send(answer.status, answer.headers, answer.payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                r = proxy._http.request(self.command, proxy.upstream + self.path,
                                        headers=headers, content=body)
                content = proxy.rewrite(self.command, self.path, body, r)
                self._send(r.status_code, {k: v for k, v in r.headers.items()
                                           if k.lower() not in _HOP}, content)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def intercept(self, method: str, path: str, body: bytes) -> Answer | None:
        """The proxy's own answer to this request, or None to forward it."""
        return None

    def rewrite(self, method: str, path: str, body: bytes, answer: httpx.Response) -> bytes:
        """The body sent back for the API's ``answer`` (default: as it is)."""
        return answer.content

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()


class FaultyProxy(ForwardingProxy):
    """Forward to ``upstream``; answer ``status`` to GETs of the paths in ``failing``."""

    def __init__(self, upstream: str, status: int = 502) -> None:
        super().__init__(upstream)
        self.status = status
        self.failing: set[str] = set()
        self.refused = 0  # requests answered with ``status``

    def intercept(self, method: str, path: str, body: bytes) -> Answer | None:
        """Fail GETs of the failing paths."""
        if method == "GET" and path.split("?")[0] in self.failing:
            self.refused += 1
            return Answer(self.status, {"code": "bad_gateway", "detail": "upstream failed"})
        return None
