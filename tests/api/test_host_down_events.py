"""The host monitor publishes ``host_down`` once per silence of a host, not once per sweep.

Each publication records a ``host_down`` event on the server (its events, through HTTP):
however many sweeps (of however many API processes) see the host down, one event; the host
comes back and falls silent again, a second one.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from api.agent import liveness
from api.config import Settings
from api.models import Host
from api.usage import host_monitor
from tests.agent_factories import db, enroll_host, inventory, make_server
from tests.factories import Account, make_account, unique


def _host_down_events(client: TestClient, acct: Account, sid: str) -> list[dict[str, object]]:
    r = client.get(f"/v1/servers/{sid}/events", headers=acct.headers)
    assert r.status_code == 200, r.text
    return [e for e in r.json()["events"] if e["action"] == "host_down"]


def _silence_seen_by_sweeps(client: TestClient, settings: Settings, host_id: str,
                            sweeps: int) -> None:
    """Several sweeps (each its own unit of work, as several API processes) once the host's
    last heartbeat is older than ``host_down_after_seconds``."""
    with db(client) as s:
        heartbeat = s.get(Host, host_id).last_heartbeat_at  # type: ignore[union-attr]
    assert heartbeat is not None
    later = heartbeat + timedelta(seconds=settings.host_down_after_seconds + 1)
    for _ in range(sweeps):
        with db(client) as s:
            host_monitor.sweep(s, settings, now=later)


def test_host_down_is_published_once_per_silence(
        client: TestClient, admin: dict[str, str], settings: Settings) -> None:
    host = enroll_host(client, admin, availability_zone=unique("az"))
    assert client.put("/v1/agent/inventory", headers=host.headers,
                      json=inventory()).status_code == 200
    assert client.post("/v1/agent/heartbeat", headers=host.headers,
                       json={"observed": []}).status_code == 200
    acct = make_account(client, admin)
    sid = make_server(client, acct.project_id, host.id, status="ACTIVE", task_state=None)
    assert _host_down_events(client, acct, sid) == []

    _silence_seen_by_sweeps(client, settings, host.id, sweeps=4)
    (event,) = _host_down_events(client, acct, sid)
    assert event["result"] == "error"
    assert host.id not in str(event) and host.name not in str(event)

    # Back, then silent again: a new silence, one more event. (By the wall clock the host
    # never went silent, so its heartbeat is coalesced: flush it, as the process does.)
    assert client.post("/v1/agent/heartbeat", headers=host.headers,
                       json={"observed": []}).status_code == 200
    liveness.flush(client.app.state.sessionmaker)  # type: ignore[attr-defined]
    with db(client) as s:
        host_monitor.sweep(s, settings)  # up now: nothing for this host
    assert len(_host_down_events(client, acct, sid)) == 1
    _silence_seen_by_sweeps(client, settings, host.id, sweeps=3)
    assert len(_host_down_events(client, acct, sid)) == 2
