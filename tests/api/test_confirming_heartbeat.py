"""Heartbeats whose observations only confirm what is stored, seen from a real API process.

An up host's heartbeat whose every observation confirms the stored state (the power state it
reports, no pending operation, no transition, nothing for billing to record) is answered by
the fast path (``api.agent.fastpath``) after one read of the host's servers: one statement, no
lock, no write. Any other heartbeat (a state change, an unknown server, a server billing must
hear again after its host was reported down) goes to the full path, which applies it.

The evidence is what the agent sees (status, ``applied``, ``ignored``), the statements the
process publishes on ``/metrics`` for the heartbeat route, and the stored server and ledger.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
from fastapi.testclient import TestClient

from api.models import Host, Server, UsageServer
from api.servers import lifecycle
from tests.agent_factories import EnrolledHost, db, enroll_host, inventory, make_server, observe
from tests.factories import make_account, unique
from tests.scrape import Samples, scrape, value

HEARTBEAT = "/v1/agent/heartbeat"


def _statements(s: Samples) -> float:
    return value(s, "minicloud_db_statements_total", route=HEARTBEAT)


def _beat(url: str, host: EnrolledHost, observed: dict[str, str]) -> httpx.Response:
    now = datetime.now(UTC).isoformat()
    return httpx.post(f"{url}{HEARTBEAT}", headers=host.headers, timeout=30, json={
        "observed": [{"server_id": sid, "state": state, "seen_at": now}
                     for sid, state in observed.items()],
        "full": False})


def _running_host(client: TestClient, admin: dict[str, str], url: str,
                  count: int) -> tuple[EnrolledHost, list[str]]:
    """An up host (remembered by the process at ``url``) with ``count`` ACTIVE servers its
    agent saw running (billed as running)."""
    host = enroll_host(client, admin, availability_zone=unique("az"))
    assert client.put("/v1/agent/inventory", headers=host.headers,
                      json=inventory()).status_code == 200
    acct = make_account(client, admin)
    sids = [make_server(client, acct.project_id, host.id) for _ in range(count)]
    for sid in sids:
        assert observe(client, host.headers, sid, "running")["status"] == "ACTIVE"
    r = httpx.post(f"{url}{HEARTBEAT}", headers=host.headers, timeout=30,
                   json={"observed": [], "full": True})
    assert (r.status_code, r.json()["full_report"]) == (200, False)
    return host, sids


def test_a_heartbeat_that_only_confirms_runs_one_statement_whatever_its_size(
        client: TestClient, admin: dict[str, str],
        live_api: Callable[[int], list[str]]) -> None:
    [url] = live_api(1)
    host, sids = _running_host(client, admin, url, 5)
    for observed in ({sids[0]: "running"}, dict.fromkeys(sids, "running")):
        before = scrape(url)
        r = _beat(url, host, observed)
        after = scrape(url)
        assert r.status_code == 200, r.text
        assert (r.json()["applied"], r.json()["ignored"], r.json()["full_report"]) \
            == (len(observed), [], False)
        assert _statements(after) - _statements(before) == 1  # one read, no lock, no write
    with db(client) as s:
        assert [s.get(Server, sid).status for sid in sids] == ["ACTIVE"] * 5  # type: ignore[union-attr]


def test_a_change_or_an_unknown_server_takes_the_full_path_and_is_applied(
        client: TestClient, admin: dict[str, str],
        live_api: Callable[[int], list[str]]) -> None:
    [url] = live_api(1)
    host, sids = _running_host(client, admin, url, 2)
    before = scrape(url)
    r = _beat(url, host, {sids[0]: "running", sids[1]: "shutoff"})
    after = scrape(url)
    assert (r.status_code, r.json()["applied"], r.json()["ignored"]) == (200, 2, [])
    assert _statements(after) - _statements(before) > 1  # the full path, with its locks
    with db(client) as s:
        assert [(s.get(Server, sid).status, s.get(Server, sid).power_state)  # type: ignore[union-attr]
                for sid in sids] == [("ACTIVE", "running"), ("SHUTOFF", "shutoff")]
    stranger = str(uuid.uuid4())
    r = _beat(url, host, {sids[0]: "running", stranger: "running"})
    assert (r.status_code, r.json()["applied"], r.json()["ignored"]) == (200, 1, [stranger])


def test_after_host_down_a_confirming_report_goes_to_the_full_path(
        client: TestClient, admin: dict[str, str],
        live_api: Callable[[int], list[str]]) -> None:
    [url] = live_api(1)
    host, [sid] = _running_host(client, admin, url, 1)
    before = scrape(url)
    assert _beat(url, host, {sid: "running"}).json()["applied"] == 1
    assert _statements(scrape(url)) - _statements(before) == 1
    with db(client) as s:
        stored = s.get(Host, host.id)
        assert stored is not None
        assert lifecycle.host_down(s, stored) == 1  # billing stops the server's compute
    with db(client) as s:
        assert s.get(UsageServer, sid).state != "running"  # type: ignore[union-attr]
    # Billing would record "running" again: the process does not answer it from one read.
    before = scrape(url)
    r = _beat(url, host, {sid: "running"})
    assert (r.status_code, r.json()["applied"]) == (200, 1)
    assert _statements(scrape(url)) - _statements(before) > 1
