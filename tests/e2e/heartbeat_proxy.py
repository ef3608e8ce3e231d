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
from typing import Any

import httpx

from tests.e2e.proxy import Answer, ForwardingProxy

HEARTBEAT = "/v1/agent/heartbeat"


class HeartbeatProxy(ForwardingProxy):
    """Forward to ``upstream``; ``heartbeats`` holds every heartbeat body sent (in order) and
    ``asked`` the index of the heartbeat whose answer asked for a full report."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.heartbeats: list[dict[str, Any]] = []
        self.ask_full_report = False  # the next heartbeat's answer asks for a full report
        self.asked: int | None = None
        self.swallow = False
        self.refuse = 0
        self.answers: list[dict[str, Any]] = []  # the API's answer to each heartbeat ({}: none)
        self._lock = threading.Lock()

    def intercept(self, method: str, path: str, body: bytes) -> Answer | None:
        """Refuse or swallow heartbeats while asked to."""
        if method != "POST" or path != HEARTBEAT or not (self.refuse > 0 or self.swallow):
            return None
        with self._lock:
            self.heartbeats.append(json.loads(body))
            self.answers.append({})
            if self.refuse > 0:
                self.refuse -= 1
                return Answer(503, {"type": "about:blank", "title": "Busy", "status": 503,
                                    "code": "agent_busy"}, {"Retry-After": "0"},
                              content_type="application/problem+json")
        return Answer(200, {"host_id": "swallowed", "applied": 0, "ignored": [],
                            "last_heartbeat_at": "2000-01-01T00:00:00Z",
                            "heartbeat_interval_seconds": 10})

    def rewrite(self, method: str, path: str, body: bytes, answer: httpx.Response) -> bytes:
        """Record a forwarded heartbeat and its answer; ask for a full report when told."""
        if method != "POST" or path != HEARTBEAT:
            return answer.content
        with self._lock:
            self.heartbeats.append(json.loads(body))
            self.answers.append(answer.json() if answer.status_code == 200 else {})
            if self.ask_full_report and answer.status_code == 200:
                self.ask_full_report = False
                self.asked = len(self.heartbeats) - 1
                return json.dumps({**answer.json(), "full_report": True}).encode()
        return answer.content

    def sent(self) -> list[dict[str, Any]]:
        """The heartbeat bodies so far."""
        with self._lock:
            return list(self.heartbeats)

    def answered(self) -> list[dict[str, Any]]:
        """The API's answers to them so far ({}: not answered 200 by the API)."""
        with self._lock:
            return list(self.answers)
