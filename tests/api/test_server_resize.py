"""Resize: a SHUTOFF server takes another flavor on the same host, through the race-free claim.

Every test enrolls its own host in a zone of its own and creates servers into that zone, so
the host's arithmetic is exact whatever else the session database holds.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from fastapi.testclient import TestClient

from tests.agent_factories import EnrolledHost, enroll_host, inventory, observe
from tests.factories import Account, make_account, make_flavor, make_image, unique

PROBLEM = "application/problem+json"


def own_host(client: TestClient, admin: dict[str, str], *, vcpus: int = 4,
             ram_mb: int = 4096, disk_gb: int = 100) -> tuple[EnrolledHost, str]:
    """A fresh, heartbeated host alone in a new zone; returns it and the zone."""
    zone = unique("rz").replace("-", "_")
    host = enroll_host(client, admin, availability_zone=zone)
    r = client.put("/v1/agent/inventory", headers=host.headers,
                   json=inventory(vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb))
    assert r.status_code == 200, r.text
    r = client.post("/v1/agent/heartbeat", headers=host.headers, json={"observed": []})
    assert r.status_code == 200, r.text
    return host, zone


def shutoff_server(client: TestClient, acct: Account, host: EnrolledHost, zone: str,
                   flavor: str, image: str) -> str:
    """Create a server in ``zone`` and walk it to SHUTOFF as its agent would report."""
    r = client.post("/v1/servers", headers=acct.headers, json={
        "name": unique("vm"), "flavor": flavor, "image": image, "availability_zone": zone})
    assert r.status_code == 202, r.text
    sid: str = r.json()["id"]
    observe(client, host.headers, sid, "running")
    r = client.post(f"/v1/servers/{sid}/actions", headers=acct.headers, json={"action": "stop"})
    assert r.status_code == 202, r.text
    observe(client, host.headers, sid, "shutoff")
    assert client.get(f"/v1/servers/{sid}", headers=acct.headers).json()["status"] == "SHUTOFF"
    return sid


def resize(client: TestClient | httpx.Client, acct: Account, sid: str,
           flavor: str) -> httpx.Response:
    return client.post(f"/v1/servers/{sid}/actions", headers=acct.headers,
                       json={"action": "resize", "flavor": flavor})


def allocated(client: TestClient, admin: dict[str, str], host: EnrolledHost) -> dict[str, int]:
    r = client.get(f"/v1/hosts/{host.id}", headers=admin)
    assert r.status_code == 200, r.text
    return {rc: v["allocated"] for rc, v in r.json()["resources"].items()}


def problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    return body


def test_resize_reclaims_on_the_same_host_counting_the_old_allocation_as_freed(
        client: TestClient, admin: dict[str, str]) -> None:
    host, zone = own_host(client, admin, vcpus=4, ram_mb=4096, disk_gb=100)
    acct = make_account(client, admin)
    image = make_image(client, acct.headers)["id"]
    small = make_flavor(client, admin, vcpus=1, ram_mb=1024, disk_gb=10)
    big = make_flavor(client, admin, vcpus=2, ram_mb=3072, disk_gb=20)
    neighbour = shutoff_server(client, acct, host, zone, small["id"], image)
    sid = shutoff_server(client, acct, host, zone, small["id"], image)
    assert allocated(client, admin, host)["MEMORY_MB"] == 2048

    # 1024 (neighbour) + 3072 = 4096 <= 4096 fits only with this server's 1024 freed
    # (counting it would make 5120).
    r = resize(client, acct, sid, big["name"])
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["status"], body["task_state"]) == ("SHUTOFF", "resizing")
    assert body["flavor"] == {"id": big["id"], "name": big["name"], "vcpus": 2,
                              "ram_mb": 3072, "disk_gb": 20}
    assert allocated(client, admin, host) == {"VCPU": 3, "MEMORY_MB": 4096, "DISK_GB": 30}
    usage = client.get(f"/v1/quotas/{acct.project_id}", headers=acct.headers).json()["usage"]
    used = {k: v for k, v in usage.items() if k not in ("images", "image_bytes")}
    assert used == {"instances": 2, "vcpus": 3, "ram_mb": 4096, "disk_gb": 30}
    events = client.get(f"/v1/servers/{sid}/events", headers=acct.headers).json()["events"]
    resized = [e for e in events if e["action"] == "resize"]
    assert [e["result"] for e in resized] == ["accepted"]
    assert resized[0]["details"]["from"]["ram_mb"] == 1024
    assert resized[0]["details"]["to"]["ram_mb"] == 3072

    # The agent sees the new sizes and a resize id; nothing else may start meanwhile.
    r = client.get("/v1/agent/servers", headers=host.headers)
    desired = {s["server_id"]: s for s in r.json()["servers"]}[sid]
    assert desired["flavor"] == {"vcpus": 2, "ram_mb": 3072, "disk_gb": 20}
    assert desired["desired"] == "shutoff" and desired["operation"]["kind"] == "resize"
    problem(client.post(f"/v1/servers/{sid}/actions", headers=acct.headers,
                        json={"action": "start"}), 409, "invalid_state")
    # A plain "shutoff" is not a confirmation; the echo of the resize id is.
    observe(client, host.headers, sid, "shutoff")
    assert client.get(f"/v1/servers/{sid}", headers=acct.headers).json()["task_state"] == (
        "resizing")
    observe(client, host.headers, sid, "shutoff",
            operation={"operation_id": desired["operation"]["id"], "result": "success"})
    shown = client.get(f"/v1/servers/{sid}", headers=acct.headers).json()
    assert (shown["status"], shown["task_state"]) == ("SHUTOFF", None)
    r = client.post(f"/v1/servers/{sid}/actions", headers=acct.headers, json={"action": "start"})
    assert r.status_code == 202, r.text
    del neighbour


def test_resize_without_room_is_no_valid_host_and_changes_nothing(
        client: TestClient, admin: dict[str, str]) -> None:
    host, zone = own_host(client, admin, vcpus=4, ram_mb=4096, disk_gb=100)
    acct = make_account(client, admin)
    image = make_image(client, acct.headers)["id"]
    small = make_flavor(client, admin, vcpus=1, ram_mb=1024, disk_gb=10)
    huge = make_flavor(client, admin, vcpus=1, ram_mb=3584, disk_gb=10)
    shutoff_server(client, acct, host, zone, small["id"], image)
    sid = shutoff_server(client, acct, host, zone, small["id"], image)
    before = allocated(client, admin, host)

    # 1024 (neighbour) + 3584 = 4608 > 4096, even with this server's 1024 freed.
    body = problem(resize(client, acct, sid, huge["id"]), 409, "no_valid_host")
    assert body["refusals"] == {"not_enough_MEMORY_MB": 1} and body["hosts"] == 1
    assert "per_host" not in body
    assert allocated(client, admin, host) == before
    shown = client.get(f"/v1/servers/{sid}", headers=acct.headers).json()
    assert (shown["flavor"]["id"], shown["task_state"]) == (small["id"], None)
    # The admin is told which host.
    body = problem(resize(client, admin_account(client, admin, acct), sid, huge["id"]),
                   409, "no_valid_host")
    assert body["per_host"][0]["host_id"] == host.id
    events = client.get(f"/v1/servers/{sid}/events", headers=acct.headers).json()["events"]
    assert not [e for e in events if e["action"] == "resize" and e["result"] == "accepted"]


def admin_account(client: TestClient, admin: dict[str, str], acct: Account) -> Account:
    """An admin of the tenant's project (admins act on any project's servers)."""
    return make_account(client, admin, role="admin", project_id=acct.project_id)


def test_disks_never_shrink_and_only_shutoff_servers_resize(
        client: TestClient, admin: dict[str, str]) -> None:
    host, zone = own_host(client, admin)
    acct = make_account(client, admin)
    image = make_image(client, acct.headers)["id"]
    mid = make_flavor(client, admin, vcpus=1, ram_mb=512, disk_gb=20)
    smaller_disk = make_flavor(client, admin, vcpus=2, ram_mb=1024, disk_gb=10)
    sid = shutoff_server(client, acct, host, zone, mid["id"], image)

    body = problem(resize(client, acct, sid, smaller_disk["id"]), 409, "resize_disk_shrink")
    assert (body["disk_gb"], body["flavor_disk_gb"]) == (20, 10)
    problem(resize(client, acct, sid, mid["id"]), 409, "resize_same_flavor")
    problem(resize(client, acct, sid, "no-such-flavor"), 404, "flavor_not_found")
    r = client.post(f"/v1/servers/{sid}/actions", headers=acct.headers,
                    json={"action": "resize"})
    problem(r, 422, "invalid_input")

    client.post(f"/v1/servers/{sid}/actions", headers=acct.headers, json={"action": "start"})
    observe(client, host.headers, sid, "running")
    body = problem(resize(client, acct, sid, "small"), 409, "invalid_state")
    assert body["server_status"] == "ACTIVE"


def test_resize_checks_the_quota_for_the_growth_only(
        client: TestClient, admin: dict[str, str]) -> None:
    host, zone = own_host(client, admin, vcpus=8, ram_mb=16384, disk_gb=200)
    acct = make_account(client, admin)
    image = make_image(client, acct.headers)["id"]
    small = make_flavor(client, admin, vcpus=1, ram_mb=1024, disk_gb=10)
    bigger = make_flavor(client, admin, vcpus=1, ram_mb=3072, disk_gb=10)
    sid = shutoff_server(client, acct, host, zone, small["id"], image)
    # Usage 1024 MB; growth 2048 -> needs 3072 in total.
    r = client.put(f"/v1/quotas/{acct.project_id}", headers=admin, json={"ram_mb": 3071})
    assert r.status_code == 200, r.text
    body = problem(resize(client, acct, sid, bigger["id"]), 409, "quota_exceeded")
    assert (body["resource"], body["requested"], body["used"]) == ("ram_mb", 2048, 1024)
    r = client.put(f"/v1/quotas/{acct.project_id}", headers=admin, json={"ram_mb": 3072})
    assert r.status_code == 200, r.text
    assert resize(client, acct, sid, bigger["id"]).status_code == 202


def test_concurrent_resizes_never_overcommit_the_host(
        client: TestClient, admin: dict[str, str],
        live_api: Any) -> None:
    host, zone = own_host(client, admin, vcpus=8, ram_mb=4096, disk_gb=200)
    acct = make_account(client, admin)
    image = make_image(client, acct.headers)["id"]
    small = make_flavor(client, admin, vcpus=1, ram_mb=1024, disk_gb=10)
    grown = make_flavor(client, admin, vcpus=1, ram_mb=2560, disk_gb=10)
    first = shutoff_server(client, acct, host, zone, small["id"], image)
    second = shutoff_server(client, acct, host, zone, small["id"], image)
    # Either resize alone fits (1024 + 2560 = 3584 <= 4096), both do not (5120): whatever the
    # interleaving across two API processes, exactly one wins.
    urls = live_api(2)
    with httpx.Client(timeout=60) as http, ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(pool.map(
            lambda job: http.post(f"{job[0]}/v1/servers/{job[1]}/actions",
                                  headers=acct.headers,
                                  json={"action": "resize", "flavor": grown["id"]}),
            [(urls[0], first), (urls[1], second)]))
    assert sorted(r.status_code for r in responses) == [202, 409], [r.text for r in responses]
    assert [r.json()["code"] for r in responses if r.status_code == 409] == ["no_valid_host"]
    assert allocated(client, admin, host)["MEMORY_MB"] == 1024 + 2560
