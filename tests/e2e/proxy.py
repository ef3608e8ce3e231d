"""A real HTTP proxy in front of the API that answers chosen paths with an error status.

The agent talks to it as to the API; every other request is forwarded as it is. Used to make
one image download fail with a real 5xx while everything else works.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

import httpx

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
        "host", "accept-encoding"}


class FaultyProxy:
    """Forward to ``upstream``; answer ``status`` to GETs of the paths in ``failing``."""

    def __init__(self, upstream: str, status: int = 502) -> None:
        self.upstream = upstream.rstrip("/")
        self.status = status
        self.failing: set[str] = set()
        self.refused = 0  # requests answered with ``status``
        self._http = httpx.Client(timeout=120)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.command == "GET" and self.path.split("?")[0] in proxy.failing:
                    proxy.refused += 1
                    payload = b'{"code": "bad_gateway", "detail": "upstream failed"}'
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                r = proxy._http.request(self.command, proxy.upstream + self.path,
                                        headers=headers, content=body)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()
