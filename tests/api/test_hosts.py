"""Admin host management and enrollment through HTTP."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from api.db import utcnow
from api.models import EnrollmentToken, Host
from api.security import digest
from tests.agent_factories import (
    db,
    enroll_host,
    enrollment_token,
    hold_silence,
    inventory,
    make_server,
)
from tests.factories import bearer, make_account, unique


def _enroll(client: TestClient, token: str, name: str | None = None,
            **over: str) -> httpx.Response:
    body = {"token": token, "name": unique("node") if name is None else name,
            "availability_zone": "nova", "libvirt_uri": "qemu:///system",
            "virt_type": "kvm", "architecture": "x86_64"}
    body.update(over)
    r: httpx.Response = client.post("/v1/agent/enroll", json=body)
    return r


def test_enrollment_token_is_admin_only_and_single_use(
    client: TestClient, admin: dict[str, str]
) -> None:
    member = make_account(client, admin)
    r = client.post("/v1/hosts/enrollment-tokens", headers=member.headers)
    assert (r.status_code, r.json()["code"]) == (403, "admin_required")
    token = enrollment_token(client, admin)
    with db(client) as s:  # only the digest is stored
        assert s.scalar(select(EnrollmentToken).where(EnrollmentToken.digest == digest(token)))
    first = _enroll(client, token)
    assert first.status_code == 201, first.text
    assert first.json()["credential"].startswith("mch_")
    again = _enroll(client, token)
    assert (again.status_code, again.json()["code"]) == (401, "invalid_enrollment_token")
    bogus = _enroll(client, "mce_bogus")
    assert (bogus.status_code, bogus.json()["code"]) == (401, "invalid_enrollment_token")


def test_expired_enrollment_token_is_refused(client: TestClient, admin: dict[str, str]) -> None:
    token = enrollment_token(client, admin)
    with db(client) as s:
        s.execute(update(EnrollmentToken).where(EnrollmentToken.digest == digest(token))
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
    r = _enroll(client, token)
    assert (r.status_code, r.json()["code"]) == (401, "invalid_enrollment_token")


def test_one_token_enrolls_exactly_one_host_under_concurrency(
    client: TestClient, admin: dict[str, str]
) -> None:
    token = enrollment_token(client, admin)
    codes: list[int] = []
    barrier = threading.Barrier(6)

    def attempt() -> None:
        barrier.wait()
        codes.append(_enroll(client, token).status_code)

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(codes) == [201, 401, 401, 401, 401, 401]


def test_enrollment_validates_name_uri_zone_and_virt_type(
    client: TestClient, admin: dict[str, str]
) -> None:
    token = enrollment_token(client, admin)
    for bad in ({"name": "../etc"}, {"name": "a b"}, {"name": "-x"}, {"name": ""},
                {"libvirt_uri": "qemu:///system\n<x/>"}, {"libvirt_uri": "not a uri"},
                {"availability_zone": "zone/1"}, {"virt_type": "xen"},
                {"architecture": "X86 64"}):
        r = _enroll(client, token, **bad)
        assert (r.status_code, r.json().get("code")) == (422, "invalid_input"), (bad, r.text)
    assert _enroll(client, token).status_code == 201  # the failures did not use it up


def test_re_enrolling_a_name_is_refused_and_an_admin_rotation_replaces_the_credential(
    client: TestClient, admin: dict[str, str]
) -> None:
    # Replacing a host's credential is an admin action, never a side effect of enrollment
    # (tests/api/test_host_identity.py has the rest).
    host = enroll_host(client, admin)
    r = _enroll(client, enrollment_token(client, admin), name=host.name,
                libvirt_uri="qemu+ssh://other/system")
    assert (r.status_code, r.json()["code"]) == (409, "host_exists")
    r = client.post(f"/v1/hosts/{host.id}/credential", headers=admin)
    assert r.status_code == 201
    assert r.json()["host_id"] == host.id
    assert client.put("/v1/agent/inventory", json=inventory(),
                      headers=host.headers).status_code == 401
    assert client.put("/v1/agent/inventory", json=inventory(),
                      headers=bearer(r.json()["credential"])).status_code == 200
    shown = client.get(f"/v1/hosts/{host.id}", headers=admin).json()
    assert shown["libvirt_uri"] == "test:///default"


def test_host_list_shows_capacity_allocated_servers_and_state(
    client: TestClient, admin: dict[str, str]
) -> None:
    host = enroll_host(client, admin)
    body = {"VCPU": {"total": 16, "reserved": 2}, "MEMORY_MB": {"total": 32768, "reserved": 512},
            "DISK_GB": {"total": 500}}
    assert client.put("/v1/agent/inventory", json=body, headers=host.headers).status_code == 200
    r = client.patch(f"/v1/hosts/{host.id}", json={"allocation_ratios": {"VCPU": 2.0}},
                     headers=admin)
    assert r.status_code == 200, r.text
    project = make_account(client, admin).project_id
    make_server(client, project, host.id, vcpus=4, ram_mb=2048, disk_gb=20)
    make_server(client, project, host.id, vcpus=1, ram_mb=512, disk_gb=1)
    listed = {h["id"]: h for h in client.get("/v1/hosts", headers=admin).json()}
    h = listed[host.id]
    assert h["state"] == "down"  # no heartbeat yet
    assert h["servers"] == 2
    # VCPU: (16 - 2) * 2.0 = 28; MEMORY_MB: (32768 - 512) * 1.0 = 32256; DISK_GB: 500 * 1.0
    assert h["resources"]["VCPU"] | {} == {
        "total": 16, "reserved": 2, "allocation_ratio": 2.0, "capacity": 28, "allocated": 5,
        "min_unit": 1, "max_unit": None}
    assert (h["resources"]["MEMORY_MB"]["capacity"],
            h["resources"]["MEMORY_MB"]["allocated"]) == (32256, 2560)
    assert (h["resources"]["DISK_GB"]["capacity"], h["resources"]["DISK_GB"]["allocated"]) \
        == (500, 21)
    assert client.post("/v1/agent/heartbeat", json={}, headers=host.headers).status_code == 200
    assert client.get(f"/v1/hosts/{host.id}", headers=admin).json()["state"] == "up"
    def silent() -> None:
        with db(client) as s:
            s.execute(update(Host).where(Host.id == host.id)
                      .values(last_heartbeat_at=utcnow() - timedelta(seconds=61)))
    hold_silence(host.id, silent)
    assert client.get(f"/v1/hosts/{host.id}", headers=admin).json()["state"] == "down"


def test_patch_changes_host_and_validates(client: TestClient, admin: dict[str, str]) -> None:
    host = enroll_host(client, admin)
    url = f"/v1/hosts/{host.id}"
    r = client.patch(url, json={"reserved": {"VCPU": 1}}, headers=admin)
    assert (r.status_code, r.json()["code"]) == (409, "inventory_missing")
    client.put("/v1/agent/inventory", json=inventory(vcpus=8), headers=host.headers)
    for bad in ({"allocation_ratios": {"VCPU": 0}}, {"allocation_ratios": {"VCPU": 1000}},
                {"allocation_ratios": {"GPU": 1}}, {"reserved": {"VCPU": -1}},
                {"availability_zone": "a b"}, {"aggregates": {"": "x"}}, {"colour": "red"},
                {"enabled": "maybe"}):
        r = client.patch(url, json=bad, headers=admin)
        assert (r.status_code, r.json()["code"]) == (422, "invalid_input"), bad
    r = client.patch(url, json={"reserved": {"VCPU": 9}}, headers=admin)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_reserved")
    r = client.patch(url, json={"enabled": False, "disabled_reason": "maintenance",
                                "availability_zone": "az-2", "aggregates": {"ssd": "true"},
                                "reserved": {"VCPU": 2}}, headers=admin)
    assert r.status_code == 200, r.text
    h = r.json()
    assert (h["enabled"], h["disabled_reason"], h["availability_zone"], h["aggregates"]) == (
        False, "maintenance", "az-2", {"ssd": "true"})
    assert h["resources"]["VCPU"]["capacity"] == (8 - 2) * 4  # pool default cpu ratio 4.0
    r = client.patch(url, json={"allocation_ratios": {"VCPU": None}}, headers=admin)
    assert r.json()["resources"]["VCPU"]["allocation_ratio"] == 4.0
    member = make_account(client, admin)
    r = client.patch(url, json={"enabled": True}, headers=member.headers)
    assert (r.status_code, r.json()["code"]) == (403, "admin_required")
    assert client.get("/v1/hosts/" + "0" * 8, headers=admin).json()["code"] == "host_not_found"


def test_delete_host_only_when_empty(client: TestClient, admin: dict[str, str]) -> None:
    host = enroll_host(client, admin)
    project = make_account(client, admin).project_id
    server_id = make_server(client, project, host.id)
    r = client.delete(f"/v1/hosts/{host.id}", headers=admin)
    assert (r.status_code, r.json()["code"]) == (409, "host_not_empty")
    from api.models import Server
    from api.servers.lifecycle import force_delete

    with db(client) as s:
        server = s.get(Server, server_id)
        assert server is not None
        force_delete(s, server)
    assert client.delete(f"/v1/hosts/{host.id}", headers=admin).status_code == 204
    assert client.get(f"/v1/hosts/{host.id}", headers=admin).status_code == 404
    r = client.post("/v1/agent/heartbeat", json={}, headers=host.headers)
    assert (r.status_code, r.json()["code"]) == (401, "invalid_host_credential")


def test_availability_zones_for_users_and_admins(
    client: TestClient, admin: dict[str, str]
) -> None:
    zone, idle = unique("az"), unique("az")
    up = enroll_host(client, admin, availability_zone=zone)
    enroll_host(client, admin, availability_zone=idle)
    client.post("/v1/agent/heartbeat", json={}, headers=up.headers)
    member = make_account(client, admin, role="reader")
    zones = {z["name"]: z for z in client.get("/v1/availability-zones",
                                              headers=member.headers).json()}
    assert zones[zone] == {"name": zone, "available": True}
    assert zones[idle] == {"name": idle, "available": False}
    zones = {z["name"]: z for z in client.get("/v1/availability-zones", headers=admin).json()}
    assert zones[zone]["hosts"] == [up.name]
    client.patch(f"/v1/hosts/{up.id}", json={"enabled": False}, headers=admin)
    zones = {z["name"]: z for z in client.get("/v1/availability-zones", headers=admin).json()}
    assert zones[zone]["available"] is False


def test_quarantined_foreign_domains_reach_the_admins_host_view(
    client: TestClient, admin: dict[str, str]
) -> None:
    host = enroll_host(client, admin)
    theirs = {"server_id": str(uuid.uuid4()), "host_id": str(uuid.uuid4())}

    def beat(**body: object) -> None:
        r = client.post("/v1/agent/heartbeat", json={"observed": [], **body},
                        headers=host.headers)
        assert r.status_code == 200, r.text

    def shown() -> object:
        return client.get(f"/v1/hosts/{host.id}", headers=admin).json()["foreign_domains"]

    assert shown() == []
    beat(foreign=[theirs])
    assert shown() == [theirs]
    assert [h["foreign_domains"] for h in client.get("/v1/hosts", headers=admin).json()
            if h["id"] == host.id] == [[theirs]]
    beat()  # an agent that does not report foreign domains changes nothing
    assert shown() == [theirs]
    beat(foreign=[])
    assert shown() == []
    r = client.post("/v1/agent/heartbeat", headers=host.headers,
                    json={"observed": [], "foreign": [{"server_id": "../x", "host_id": "y"}]})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")
    member = make_account(client, admin)
    assert client.get(f"/v1/hosts/{host.id}", headers=member.headers).status_code in (403, 404)
