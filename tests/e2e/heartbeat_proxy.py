"""A real HTTP proxy in front of the API that records the agent's heartbeats.

Everything is forwarded as it is; each heartbeat's body is kept, in order, and the answer to
one heartbeat can be made to ask for a full report (``"full_report": true``), as an API that
lost track of the host answers. The next ``refuse`` heartbeats are answered ``503
agent_busy`` (``Retry-After: 0``) by the proxy itself, as a saturated API answers. While
``swallow`` is set, heartbeats are answered 200 by the
proxy itself and never reach the API: the agent beats on, the API hears a silence.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import httpx

from tests.e2e.proxy import _HOP

HEARTBEAT = "/v1/agent/heartbeat"


class HeartbeatProxy:
    """Forward to ``upstream``; ``heartbeats`` holds every heartbeat body sent (in order) and
    ``asked`` the index of the heartbeat whose answer asked for a full report."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.heartbeats: list[dict[str, Any]] = []
        self.ask_full_report = False  # the next heartbeat's answer asks for a full report
        self.asked: int | None = None
        self.swallow = False
        self.refuse = 0
        self.answers: list[dict[str, Any]] = []  # the API's answer to each heartbeat ({}: none)
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=120)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.command == "POST" and self.path == HEARTBEAT and proxy.refuse > 0:
                    with proxy._lock:
                        proxy.refuse -= 1
                        proxy.heartbeats.append(json.loads(body))
                        proxy.answers.append({})
                    busy = json.dumps({"type": "about:blank", "title": "Busy", "status": 503,
                                       "code": "agent_busy"}).encode()
                    self.send_response(503)
                    self.send_header("Content-Type", "application/problem+json")
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", str(len(busy)))
                    self.end_headers()
                    self.wfile.write(busy)
                    return
                if self.command == "POST" and self.path == HEARTBEAT and proxy.swallow:
                    with proxy._lock:
                        proxy.heartbeats.append(json.loads(body))
                        proxy.answers.append({})
                    fake = json.dumps({"host_id": "swallowed", "applied": 0, "ignored": [],
                                       "last_heartbeat_at": "2000-01-01T00:00:00Z",
                                       "heartbeat_interval_seconds": 10}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(fake)))
                    self.end_headers()
                    self.wfile.write(fake)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                r = proxy._http.request(self.command, proxy.upstream + self.path,
                                        headers=headers, content=body)
                content = r.content
                if self.command == "POST" and self.path == HEARTBEAT:
                    with proxy._lock:
                        proxy.heartbeats.append(json.loads(body))
                        proxy.answers.append(r.json() if r.status_code == 200 else {})
                        if proxy.ask_full_report and r.status_code == 200:
                            proxy.ask_full_report = False
                            proxy.asked = len(proxy.heartbeats) - 1
                            content = json.dumps({**r.json(), "full_report": True}).encode()
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def sent(self) -> list[dict[str, Any]]:
        """The heartbeat bodies so far."""
        with self._lock:
            return list(self.heartbeats)

    def answered(self) -> list[dict[str, Any]]:
        """The API's answers to them so far ({}: not answered 200 by the API)."""
        with self._lock:
            return list(self.answers)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()
