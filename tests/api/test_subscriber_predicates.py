"""Each lifecycle subscriber declares whether a confirming observation records anything.

A heartbeat whose observations only confirm the stored state is answered after one read of the
host's servers (``api.agent.service.confirmed``) only when every subscriber's
``records_nothing`` says it would record nothing. A subscriber registered without one may
record something: the heartbeat takes the full path, where that subscriber hears it.

The evidence is the heartbeat's answer, the statements the in-process app publishes on
``/metrics`` for the heartbeat route, and what the extra subscriber heard.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.servers.changes import Change
from api.servers.subscribers import SUBSCRIBERS, Subscriber
from tests.agent_factories import EnrolledHost, enroll_host, inventory, make_server, observe
from tests.factories import make_account, unique
from tests.scrape import parse, value

HEARTBEAT = "/v1/agent/heartbeat"


def _statements(client: TestClient, admin: dict[str, str]) -> float:
    r = client.get("/metrics", headers=admin)
    assert r.status_code == 200, r.text
    return value(parse(r.text), "minicloud_db_statements_total", route=HEARTBEAT)


def _confirming_beat(client: TestClient, admin: dict[str, str], host: EnrolledHost,
                     sid: str) -> tuple[int, float]:
    """A heartbeat that reports ``sid`` running, as stored; (applied, statements it ran)."""
    before = _statements(client, admin)
    r = client.post(HEARTBEAT, headers=host.headers, json={"full": False, "observed": [
        {"server_id": sid, "state": "running", "seen_at": datetime.now(UTC).isoformat()}]})
    assert (r.status_code, r.json()["ignored"], r.json()["full_report"]) == (200, [], False)
    return r.json()["applied"], _statements(client, admin) - before


@pytest.fixture
def running(client: TestClient, admin: dict[str, str]) -> tuple[EnrolledHost, str]:
    """An up host (remembered by the app) with one ACTIVE server billed as running."""
    host = enroll_host(client, admin, availability_zone=unique("az"))
    assert client.put("/v1/agent/inventory", headers=host.headers,
                      json=inventory()).status_code == 200
    sid = make_server(client, make_account(client, admin).project_id, host.id)
    assert observe(client, host.headers, sid, "running")["status"] == "ACTIVE"
    r = client.post(HEARTBEAT, headers=host.headers, json={"observed": [], "full": True})
    assert (r.status_code, r.json()["full_report"]) == (200, False)
    # A first confirmation: on PostgreSQL the wake-up of the server's changes reaches the
    # process's memory of the host asynchronously; whichever path answers this one, the
    # process remembers the host as it now is.
    assert _confirming_beat(client, admin, host, sid)[0] == 1
    return host, sid


@contextmanager
def _registered(subscriber: Subscriber) -> Iterator[None]:
    """``subscriber`` listens while the block runs."""
    SUBSCRIBERS.append(subscriber)
    try:
        yield
    finally:
        SUBSCRIBERS.remove(subscriber)


def test_a_subscriber_without_a_predicate_sends_a_confirming_heartbeat_to_the_full_path(
        client: TestClient, admin: dict[str, str], running: tuple[EnrolledHost, str]) -> None:
    host, sid = running
    heard: list[Change] = []
    # Billing alone: the confirmation is answered after one read.
    assert _confirming_beat(client, admin, host, sid) == (1, 1)

    def listener(_session: Any, change: Change) -> bool:
        heard.append(change)
        return False

    with _registered(Subscriber(listener)):
        applied, statements = _confirming_beat(client, admin, host, sid)
    assert applied == 1
    assert statements > 1  # the full path: it hears every report
    assert [(c.kind, c.server.id, c.observed) for c in heard] == [("observed", sid, "running")]


def test_a_subscriber_whose_predicate_says_nothing_keeps_the_one_read_answer(
        client: TestClient, admin: dict[str, str], running: tuple[EnrolledHost, str]) -> None:
    host, sid = running
    heard: list[Change] = []
    asked: list[tuple[Any, ...]] = []

    def listener(_session: Any, change: Change) -> bool:
        heard.append(change)
        return False

    def records_nothing(*args: Any) -> bool:
        asked.append(args)
        return True

    with _registered(Subscriber(listener, records_nothing)):
        assert _confirming_beat(client, admin, host, sid) == (1, 1)
    assert [(status, observed) for status, observed, *_ in asked] == [("ACTIVE", "running")]
    assert heard == []  # answered from the one read: no change was published
