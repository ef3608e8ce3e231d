"""The agent's HTTP client against a real API process over loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.models import ServerEvent
from compute_agent.client import (
    Address,
    AgentApiError,
    AgentClient,
    InventoryItem,
    Observation,
)
from tests.agent_factories import db, enrollment_token, make_server
from tests.factories import make_account, unique


@pytest.fixture(scope="module")
def api_url(shared_api: str) -> str:
    """One real API process."""
    return shared_api


@dataclass
class Agent:
    """An enrolled host: its client, id and credential."""

    api: AgentClient
    host_id: str
    credential: str


@pytest.fixture
def agent(client: TestClient, admin: dict[str, str], api_url: str) -> Iterator[Agent]:
    """A freshly enrolled host's client."""
    enrolled = AgentClient.enroll(api_url, enrollment_token(client, admin), name=unique("node"),
                                  libvirt_uri="test:///default", virt_type="qemu")
    with AgentClient(api_url, enrolled.credential, timeout=10, backoff=0.05) as c:
        yield Agent(c, enrolled.host_id, enrolled.credential)


class _FlakyProxy:
    """A loopback HTTP proxy that fails requests as planned, in front of the real API.

    ``plan`` holds one entry per coming request: "before" answers 503 without forwarding;
    "after" forwards, lets the API process it, then loses the answer (502); "busy" and "slow"
    answer 503 and 429 with ``Retry-After: 1`` without forwarding (an API refusing new work).
    """

    def __init__(self, upstream: str) -> None:
        self.plan: list[str] = []
        self.seen = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                proxy.seen += 1
                fault = proxy.plan.pop(0) if proxy.plan else ""
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if fault == "before":
                    return self._send(503, b'{"code":"unavailable"}')
                if fault in ("busy", "slow"):
                    return self._send(503 if fault == "busy" else 429, b'{"code":"agent_busy"}',
                                      {"Retry-After": "1"})
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() in ("authorization", "content-type")}
                r = httpx.request(self.command, upstream + self.path, content=body,
                                  headers=headers, timeout=60)
                if fault == "after":
                    return self._send(502, b'{"code":"bad_gateway"}')
                return self._send(r.status_code, r.content)

            def _send(self, status: int, body: bytes,
                      extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_enroll_inventory_heartbeat_desired_and_observe(
    client: TestClient, admin: dict[str, str], agent: Agent
) -> None:
    host_id, api = agent.host_id, agent.api
    inv = api.put_inventory({"VCPU": InventoryItem(total=8, reserved=1),
                               "MEMORY_MB": InventoryItem(total=16384),
                               "DISK_GB": InventoryItem(total=100)})
    assert (inv.resources["VCPU"].capacity, inv.overcommitted) == ((8 - 1) * 4, [])
    project = make_account(client, admin).project_id
    sid = make_server(client, project, host_id, name="web 1")
    state = api.desired_servers()
    [server] = state.servers
    assert (server.server_id, server.hostname, server.desired) == (sid, "web-1", "running")
    unchanged = api.desired_servers(since=state.cursor, wait=0.3)
    assert unchanged.cursor == state.cursor
    hb = api.heartbeat([Observation(server_id=sid, state="absent",
                                      seen_at=datetime.now(UTC))])
    assert (hb.applied, hb.ignored, hb.host_id) == (1, [], host_id)
    result = api.observe(sid, "running", idempotency_key="boot-1",
                           addresses=[Address(ip="192.0.2.7", mac="52:54:00:00:00:01")])
    assert (result.status, result.power_state, result.applied) == ("ACTIVE", "running", True)
    again = api.observe(sid, "shutoff", idempotency_key="boot-1")
    assert (again.status, again.applied) == ("ACTIVE", False)
    api.put_console(sid, b"hello from the guest\n")
    r = client.get(f"/v1/servers/{sid}/console", headers=admin)
    assert r.json() == {"output": "hello from the guest\n"}


def test_api_refusals_raise_with_their_codes(
    client: TestClient, admin: dict[str, str], agent: Agent, api_url: str
) -> None:
    api = agent.api
    with pytest.raises(AgentApiError) as err:
        api.observe("00000000-0000-0000-0000-000000000000", "running")
    assert (err.value.status, err.value.code) == (404, "server_not_found")
    with AgentClient(api_url, "mch_wrong") as stranger, pytest.raises(AgentApiError) as err:
        stranger.heartbeat()
    assert (err.value.status, err.value.code) == (401, "invalid_host_credential")
    with pytest.raises(AgentApiError) as err:
        AgentClient.enroll(api_url, "mce_used-or-unknown", name=unique("n"),
                           libvirt_uri="test:///default", virt_type="qemu")
    assert err.value.code == "invalid_enrollment_token"
    with pytest.raises(AgentApiError) as err:
        list(api.download_image("00000000-0000-0000-0000-000000000000"))
    assert err.value.status == 404


def test_retries_after_lost_answers_apply_an_observation_once(
    client: TestClient, admin: dict[str, str], agent: Agent, api_url: str
) -> None:
    host_id = agent.host_id
    project = make_account(client, admin).project_id
    sid = make_server(client, project, host_id)
    credential = agent.credential
    proxy = _FlakyProxy(api_url)
    try:
        with AgentClient(proxy.url, credential, backoff=0.01) as flaky:
            # The API applies the first attempt but its answer is lost; the retry carries
            # the same key, so the server moves once and one event is recorded.
            proxy.plan = ["before", "after", "after"]
            result = flaky.observe(sid, "running")
            assert proxy.seen == 4
            assert (result.status, result.applied) == ("ACTIVE", False)
            with db(client) as s:
                events = s.scalars(select(ServerEvent).where(ServerEvent.server_id == sid))
                assert [e.action for e in events] == ["observe"]
            proxy.plan = ["before"] * 10
            with pytest.raises(AgentApiError) as err:
                flaky.heartbeat()
            assert err.value.status == 503
            assert proxy.seen == 4 + 6  # first try + 5 retries, then it gives up
    finally:
        proxy.close()


def test_busy_answers_are_retried_after_their_retry_after(
    client: TestClient, admin: dict[str, str], agent: Agent, api_url: str,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr("compute_agent.client.time.sleep", slept.append)
    proxy = _FlakyProxy(api_url)
    try:
        with AgentClient(proxy.url, agent.credential, backoff=0.01) as busy:
            proxy.plan = ["busy", "slow"]
            assert busy.heartbeat().host_id == agent.host_id
            assert proxy.seen == 3
            # Retry-After (1 s, plus up to half of it as jitter), not the 0.01 s backoff.
            assert len(slept) == 2 and all(1.0 <= s <= 1.5 for s in slept)
        # A refused enrollment did nothing: the same single-use token enrolls on the retry.
        proxy.plan = ["busy"]
        enrolled = AgentClient.enroll(proxy.url, enrollment_token(client, admin),
                                      name=unique("busy"), libvirt_uri="test:///default",
                                      virt_type="qemu")
        assert enrolled.host_id and proxy.seen == 5
        assert len(slept) == 3 and 1.0 <= slept[-1] <= 1.5
    finally:
        proxy.close()


def test_a_refused_heartbeat_with_a_spread_comes_back_within_the_interval(
    agent: Agent, api_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr("compute_agent.client.time.sleep", slept.append)
    monkeypatch.setattr("compute_agent.client.random.random", lambda: 0.9)
    proxy = _FlakyProxy(api_url)
    try:
        with AgentClient(proxy.url, agent.credential, backoff=0.01) as busy:
            proxy.plan = ["busy", "slow"]
            assert busy.heartbeat(busy_spread=10).host_id == agent.host_id
            assert proxy.seen == 3
            # Retry-After is 1 s: each retry at 1 s + 90 % of the 9 s left of the interval.
            assert slept == [pytest.approx(9.1)] * 2
            proxy.plan = ["busy"]
            assert busy.heartbeat().host_id == agent.host_id  # no spread: 1 s + 45 %
            assert slept[-1] == pytest.approx(1.45)
    finally:
        proxy.close()
