"""Evacuation of a down host through HTTP: servers rebuilt elsewhere, the dead host fenced.

Hosts are enrolled through the agent API in a zone of their own, so only this test's hosts
are candidates; "down" is a last heartbeat older than ``host_down_after_seconds``.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from api.db import utcnow
from api.evacuation import service as evacuation
from api.models import Host
from tests.agent_factories import EnrolledHost, db, enroll_host, hold_silence, inventory, observe
from tests.factories import Account, make_account, make_flavor, make_image, unique

KEY = "ssh-ed25519 " + base64.b64encode(
    b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + b"k" * 32).decode() + " me@host"


@pytest.fixture
def zone() -> str:
    return unique("evac")


@pytest.fixture
def acct(client: TestClient, admin: dict[str, str]) -> Account:
    return make_account(client, admin)


def _up(client: TestClient, admin: dict[str, str], zone: str) -> EnrolledHost:
    host = enroll_host(client, admin, availability_zone=zone)
    assert client.put("/v1/agent/inventory", json=inventory(vcpus=8),
                      headers=host.headers).is_success
    assert client.post("/v1/agent/heartbeat", json={"observed": []},
                       headers=host.headers).is_success
    return host


def _down(client: TestClient, settings: Settings, host: EnrolledHost) -> None:
    def silent() -> None:
        with db(client) as s:
            h = s.get(Host, host.id)
            assert h is not None
            h.last_heartbeat_at = utcnow() - timedelta(
                seconds=settings.host_down_after_seconds + 5)
    hold_silence(host.id, silent)


def _create(client: TestClient, acct: Account, flavor: str, image: str, zone: str,
            **extra: Any) -> str:
    r = client.post("/v1/servers", headers=acct.headers, json={
        "name": unique("vm"), "flavor": flavor, "image": image, "availability_zone": zone,
        "user_data": "#cloud-config\n", "key_data": KEY, **extra})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _server(client: TestClient, headers: dict[str, str], sid: str) -> dict[str, Any]:
    r = client.get(f"/v1/servers/{sid}", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _allocated_vcpus(client: TestClient, admin: dict[str, str], host_id: str) -> int:
    r = client.get(f"/v1/hosts/{host_id}", headers=admin)
    return int(r.json()["resources"]["VCPU"]["allocated"])


def _events(client: TestClient, headers: dict[str, str], sid: str) -> list[dict[str, Any]]:
    r = client.get(f"/v1/servers/{sid}/events", headers=headers)
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


def test_only_a_down_host_can_be_evacuated_and_only_by_an_admin(
    client: TestClient, admin: dict[str, str], acct: Account, zone: str
) -> None:
    host = _up(client, admin, zone)
    r = client.post(f"/v1/hosts/{host.id}/evacuate", headers=admin)
    assert (r.status_code, r.json()["code"]) == (409, "host_not_down")
    assert r.headers["content-type"].startswith("application/problem+json")
    r = client.post(f"/v1/hosts/{host.id}/evacuate", headers=acct.headers)
    assert (r.status_code, r.json()["code"]) == (403, "admin_required")
    r = client.post("/v1/hosts/00000000-0000-4000-8000-000000000000/evacuate", headers=admin)
    assert (r.status_code, r.json()["code"]) == (404, "host_not_found")
    r = client.get(f"/v1/hosts/{host.id}/evacuation", headers=admin)
    assert (r.status_code, r.json()["code"]) == (404, "evacuation_not_found")
    assert client.get(f"/v1/hosts/{host.id}", headers=admin).json()["evacuation"] is None


def test_evacuation_rebuilds_servers_elsewhere_keeps_power_and_fences_the_dead_host(
    client: TestClient, admin: dict[str, str], acct: Account, zone: str, settings: Settings
) -> None:
    flavor = make_flavor(client, admin)["name"]
    image = make_image(client, acct.headers)["id"]
    group = client.post("/v1/server-groups", json={"name": "g", "policy": "anti-affinity"},
                        headers=acct.headers).json()["id"]
    dead = _up(client, admin, zone)
    running = _create(client, acct, flavor, image, zone)
    stopped = _create(client, acct, flavor, image, zone)
    member = _create(client, acct, flavor, image, zone, server_group=group)
    deleting = _create(client, acct, flavor, image, zone)
    for sid in (running, stopped, member, deleting):
        assert observe(client, dead.headers, sid, "running")["status"] == "ACTIVE"
    r = client.post(f"/v1/servers/{stopped}/actions", json={"action": "stop"},
                    headers=acct.headers)
    assert r.status_code == 202
    assert observe(client, dead.headers, stopped, "shutoff")["status"] == "SHUTOFF"
    assert client.delete(f"/v1/servers/{deleting}", headers=acct.headers).status_code == 202
    # A second host takes the other member of the anti-affinity group.
    other = _up(client, admin, zone)
    partner = _create(client, acct, flavor, image, zone, server_group=group)
    assert _server(client, admin, partner)["host"] == other.name
    _down(client, settings, dead)

    r = client.post(f"/v1/hosts/{dead.id}/evacuate", headers=admin)
    assert r.status_code == 202, r.text
    body = r.json()
    results = {s["server_id"]: s for s in body["servers"]}
    assert {sid: results[sid]["result"] for sid in results} == {
        running: "rebuilding", stopped: "rebuilding", member: "refused", deleting: "deleted"}
    assert (results[running]["status"], results[running]["target_host_id"]) == ("BUILD", other.id)
    assert (results[stopped]["status"], results[stopped]["target_host_id"]) == ("SHUTOFF", other.id)
    # The member cannot join its partner's host: the scheduler's explained refusal.
    refused = results[member]
    assert refused["code"] == "no_valid_host"
    assert refused["refusals"]["anti_affinity"] == 1
    assert refused["refusals_by_filter"]["server_group"] == 1
    assert "anti-affinity" in refused["detail"]

    # Same id, name, flavor, image, user data and key; rebuilding on the other host.
    before = _server(client, acct.headers, running)
    assert (before["status"], before["task_state"]) == ("BUILD", "rebuilding")
    desired = {d["server_id"]: d for d in client.get(
        "/v1/agent/servers", headers=other.headers).json()["servers"]}
    assert (desired[running]["name"], desired[running]["user_data"],
            desired[running]["key_data"], desired[running]["desired"]) == (
        before["name"], "#cloud-config\n", KEY, "running")
    assert desired[stopped]["desired"] == "shutoff"
    assert _server(client, acct.headers, stopped)["status"] == "SHUTOFF"
    assert _server(client, admin, member)["host"] == dead.name
    assert client.get(f"/v1/servers/{deleting}", headers=acct.headers).status_code == 404
    # Allocations moved: the dead host holds only the member left behind.
    assert _allocated_vcpus(client, admin, dead.id) == 1
    assert _allocated_vcpus(client, admin, other.id) == 3
    # The event says what was lost; tenants never see host names.
    event = next(e for e in _events(client, acct.headers, running) if e["action"] == "evacuate")
    assert "local disk content is lost" in event["message"]
    assert event["details"]["local_disk"] == "lost"
    assert "host_id" not in event["details"] and "host" not in event["details"]
    admin_event = next(e for e in _events(client, admin, running) if e["action"] == "evacuate")
    assert admin_event["details"]["host_id"] == other.id
    refusal = [e for e in _events(client, acct.headers, member) if e["action"] == "evacuate"]
    assert refusal[-1]["result"] == "error" and "anti-affinity" in refusal[-1]["message"]
    # The host shows the progress.
    progress = client.get(f"/v1/hosts/{dead.id}", headers=admin).json()["evacuation"]
    assert {k: progress[k] for k in ("servers", "rebuilding", "done", "refused", "deleted",
                                      "remaining", "fencing_pending", "automatic")} == {
        "servers": 4, "rebuilding": 2, "done": 0, "refused": 1, "deleted": 1,
        "remaining": 1, "fencing_pending": 2, "automatic": False}

    # The new host's agent builds them: ACTIVE, and SHUTOFF (defined, not started).
    assert observe(client, other.headers, running, "running")["status"] == "ACTIVE"
    after = observe(client, other.headers, stopped, "shutoff")
    assert (after["status"], after["task_state"]) == ("SHUTOFF", None)

    # Retried once a host that the group allows exists: the member moves too.
    third = _up(client, admin, zone)
    r = client.post(f"/v1/hosts/{dead.id}/evacuate", headers=admin)
    assert [(s["server_id"], s["result"], s["target_host_id"]) for s in r.json()["servers"]] \
        == [(member, "rebuilding", third.id)]
    assert _allocated_vcpus(client, admin, dead.id) == 0

    # The dead host comes back: every report is refused until its agent fenced.
    r = client.post("/v1/agent/heartbeat", headers=dead.headers, json={"observed": [
        {"server_id": running, "state": "running", "seen_at": datetime.now(UTC).isoformat()}]})
    assert (r.status_code, r.json()["code"]) == (409, "fencing_required")
    assert sorted(r.json()["server_ids"]) == sorted([running, stopped, member])
    for call in (client.get("/v1/agent/servers", headers=dead.headers),
                 client.put("/v1/agent/inventory", json=inventory(), headers=dead.headers),
                 client.post(f"/v1/agent/servers/{running}/observations", headers=dead.headers,
                             json={"state": "running", "seen_at": datetime.now(UTC).isoformat(),
                                   "idempotency_key": unique("k")})):
        assert (call.status_code, call.json()["code"]) == (409, "fencing_required")
    assert client.get(f"/v1/hosts/{dead.id}", headers=admin).json()["state"] == "down"
    orders = client.get("/v1/agent/fencing", headers=dead.headers).json()["server_ids"]
    assert orders == sorted([running, stopped, member])
    r = client.post("/v1/agent/fencing", headers=dead.headers, json={"fenced": [
        {"server_id": running, "domain": "destroyed", "files_removed": True},
        {"server_id": stopped, "domain": "undefined", "files_removed": True}]})
    assert r.json() == {"closed": 2, "pending": [member]}
    r = client.post("/v1/agent/fencing", headers=dead.headers, json={"fenced": [
        {"server_id": member, "domain": "absent", "files_removed": False}]})
    assert r.json() == {"closed": 1, "pending": []}

    # Fenced: the host is up again, and what it says of evacuated servers changes nothing.
    r = client.post("/v1/agent/heartbeat", headers=dead.headers, json={"observed": [
        {"server_id": running, "state": "shutoff", "seen_at": datetime.now(UTC).isoformat()}]})
    assert r.status_code == 200 and r.json()["ignored"] == [running]
    r = client.post(f"/v1/agent/servers/{running}/observations", headers=dead.headers,
                    json={"state": "absent", "seen_at": datetime.now(UTC).isoformat(),
                          "idempotency_key": unique("k")})
    assert (r.status_code, r.json()["code"]) == (404, "server_not_found")
    assert client.get("/v1/agent/servers", headers=dead.headers).json()["servers"] == []
    assert _server(client, acct.headers, running)["status"] == "ACTIVE"
    fence = [e for e in _events(client, acct.headers, running) if e["action"] == "fence"]
    assert len(fence) == 1 and "never started" in fence[0]["message"]
    assert fence[0]["details"]["domain"] == "destroyed"
    r = client.post(f"/v1/hosts/{dead.id}/evacuate", headers=admin)
    assert (r.status_code, r.json()["code"]) == (409, "host_not_down")

    # Billing: compute stopped at the dead host's last heartbeat, resumed when seen running.
    ledger = client.get(f"/v1/usage/servers/{running}", headers=acct.headers).json()
    kinds = [e["kind"] for e in ledger["entries"]]
    assert kinds[-2:] == ["host_down", "running"]


def test_automatic_evacuation_is_off_by_default_and_per_host_by_its_aggregate_tag(
    client: TestClient, admin: dict[str, str], acct: Account, zone: str, settings: Settings
) -> None:
    flavor = make_flavor(client, admin)["name"]
    image = make_image(client, acct.headers)["id"]
    dead = _up(client, admin, zone)
    sid = _create(client, acct, flavor, image, zone)
    other = _up(client, admin, zone)
    _down(client, settings, dead)
    later = utcnow() + timedelta(hours=1)
    with db(client) as s:
        hosts = [h for h in (s.get(Host, dead.id), s.get(Host, other.id)) if h is not None]
        assert evacuation.auto_sweep(s, settings, hosts, now=later) == 0  # off by default
    r = client.patch(f"/v1/hosts/{dead.id}", headers=admin,
                     json={"aggregates": {"auto_evacuate_after_seconds": "7200"}})
    assert r.status_code == 200, r.text
    with db(client) as s:
        hosts = [h for h in (s.get(Host, dead.id), s.get(Host, other.id)) if h is not None]
        assert evacuation.auto_sweep(s, settings, hosts, now=later) == 0  # within its grace
        assert evacuation.auto_sweep(s, settings, hosts,
                                     now=later + timedelta(hours=2)) == 1
        # Once per down period: a second sweep (another API process) does nothing.
        assert evacuation.auto_sweep(s, settings, hosts,
                                     now=later + timedelta(hours=2)) == 0
    moved = _server(client, admin, sid)
    assert (moved["host"], moved["task_state"]) == (other.name, "rebuilding")
    progress = client.get(f"/v1/hosts/{dead.id}/evacuation", headers=admin).json()
    assert progress["automatic"] is True and progress["rebuilding"] == 1
    # A zone-wide setting does the same for every host of the zone.
    zoned = settings.model_copy(update={"auto_evacuate_after_seconds": {zone: 60}})
    with db(client) as s:
        h = s.get(Host, other.id)
        assert h is not None
        assert evacuation.auto_grace(h, zoned) == 60
        assert evacuation.auto_grace(h, settings) is None
