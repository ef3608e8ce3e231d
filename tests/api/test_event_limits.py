"""Server events: refused actions are recorded at a bounded rate; tenants never see hosts."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.agent_factories import enroll_host, inventory, observe
from tests.factories import make_account, make_flavor, make_image, unique

PER_MINUTE = 10  # Settings.rejected_action_events_per_minute's default


def _events(client: TestClient, headers: dict[str, str], sid: str) -> list[dict[str, Any]]:
    r = client.get(f"/v1/servers/{sid}/events", headers=headers)
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


def _server(client: TestClient, admin: dict[str, str]) -> tuple[Any, Any, str]:
    """A tenant, its server ACTIVE on a host of its own zone, and the host."""
    zone = unique("ez").replace("-", "_")
    host = enroll_host(client, admin, availability_zone=zone)
    assert client.put("/v1/agent/inventory", headers=host.headers,
                      json=inventory()).status_code == 200
    assert client.post("/v1/agent/heartbeat", headers=host.headers,
                       json={"observed": []}).status_code == 200
    acct = make_account(client, admin)
    flavor = make_flavor(client, admin)
    image = make_image(client, acct.headers)
    r = client.post("/v1/servers", headers=acct.headers, json={
        "name": unique("vm"), "flavor": flavor["id"], "image": image["id"],
        "availability_zone": zone})
    assert r.status_code == 202, r.text
    sid = r.json()["id"]
    observe(client, host.headers, sid, "running")
    return acct, host, sid


def test_a_hundred_refused_actions_leave_a_bounded_history(
        client: TestClient, admin: dict[str, str]) -> None:
    acct, _, sid = _server(client, admin)
    before = len(_events(client, acct.headers, sid))
    for _ in range(100):
        r = client.post(f"/v1/servers/{sid}/actions", headers=acct.headers,
                        json={"action": "start"})  # ACTIVE: start is refused
        assert (r.status_code, r.json()["code"]) == (409, "invalid_state")
    events = _events(client, acct.headers, sid)
    refused = [e for e in events if e["result"] == "error"]
    assert len(refused) == PER_MINUTE
    assert all(e["details"] == {"code": "invalid_state"} for e in refused)
    assert len(events) == before + PER_MINUTE
    # Accepted actions are still recorded.
    r = client.post(f"/v1/servers/{sid}/actions", headers=acct.headers, json={"action": "stop"})
    assert r.status_code == 202, r.text
    assert _events(client, acct.headers, sid)[-1]["action"] == "stop"


def _mentions(value: Any, needle: str) -> bool:
    if isinstance(value, dict):
        return any(_mentions(k, needle) or _mentions(v, needle) for k, v in value.items())
    if isinstance(value, list):
        return any(_mentions(v, needle) for v in value)
    return needle in str(value)


def test_tenants_never_see_host_ids_in_events_admins_do(
        client: TestClient, admin: dict[str, str]) -> None:
    acct, host, sid = _server(client, admin)
    assert client.post(f"/v1/servers/{sid}/actions", headers=acct.headers,
                       json={"action": "stop"}).status_code == 202
    observe(client, host.headers, sid, "shutoff")
    bigger = make_flavor(client, admin, vcpus=2)
    r = client.post(f"/v1/servers/{sid}/actions", headers=acct.headers,
                    json={"action": "resize", "flavor": bigger["id"]})
    assert r.status_code == 202, r.text

    seen = _events(client, acct.headers, sid)
    actions = {e["action"] for e in seen}
    assert {"schedule", "observe", "resize"} <= actions
    for event in seen:
        assert not _mentions(event, host.id), event
        assert not _mentions(event, host.name), event
        assert not {"host_id", "host"} & set(event["details"]), event

    # An admin sees where each step happened.
    full = {e["action"]: e["details"] for e in _events(client, admin, sid)}
    assert full["observe"]["host_id"] == host.id
    assert full["resize"]["host_id"] == host.id
    assert full["schedule"]["host_id"] == host.id


def test_events_are_listed_completely_page_by_page(
        client: TestClient, admin: dict[str, str]) -> None:
    acct, _, sid = _server(client, admin)
    for _ in range(8):
        assert client.post(f"/v1/servers/{sid}/actions", headers=acct.headers,
                           json={"action": "start"}).status_code == 409
    everything = _events(client, acct.headers, sid)
    assert len(everything) > 9
    seen: list[str] = []
    marker = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"marker": marker} if marker else {})
        r = client.get(f"/v1/servers/{sid}/events", headers=acct.headers, params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["events"]) <= 3
        seen += [e["id"] for e in page["events"]]
        pages += 1
        marker = page["next_marker"]
        if marker is None:
            break
    assert pages > 3
    assert len(seen) == len(set(seen))
    assert seen == [e["id"] for e in everything]

    # A marker that is not one of this server's events is refused.
    _, _, other = _server(client, admin)
    foreign = _events(client, admin, other)[0]["id"]
    for bad in (foreign, "00000000-0000-0000-0000-000000000000"):
        r = client.get(f"/v1/servers/{sid}/events", headers=acct.headers,
                       params={"marker": bad})
        assert (r.status_code, r.json()["code"]) == (400, "invalid_marker")
