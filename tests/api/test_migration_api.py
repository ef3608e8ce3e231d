"""Cold migration through HTTP, with hosts played through the agent API: refusals explained,
allocations held on both hosts while moving, anti-affinity kept, the relay limited to the
migration's two hosts at their step, a full move and a delete in the middle of one.

Every test enrolls its own hosts in a zone of its own, so the arithmetic is exact whatever
else the session database holds.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from api.db import utcnow
from api.mobility import service as mobility
from tests.agent_factories import EnrolledHost, db, enroll_host, inventory, observe
from tests.conftest import ADMIN_TOKEN
from tests.factories import Account, bearer, make_account, make_flavor, make_image, unique

ADMIN = bearer(ADMIN_TOKEN)

PROBLEM = "application/problem+json"
NOTHING = {"VCPU": 0, "MEMORY_MB": 0, "DISK_GB": 0}
TINY = {"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1}


@pytest.fixture
def member(client: TestClient, admin: dict[str, str]) -> Account:
    return make_account(client, admin)


@pytest.fixture
def image(client: TestClient, member: Account) -> str:
    return str(make_image(client, member.headers)["id"])


def hosts_in_zone(client: TestClient, admin: dict[str, str], sizes: list[int]
                  ) -> tuple[list[EnrolledHost], str]:
    """Fresh, heartbeated hosts (``sizes``: MiB of RAM each) alone in a new zone."""
    zone = unique("mz").replace("-", "_")
    hosts = []
    for ram in sizes:
        host = enroll_host(client, admin, availability_zone=zone)
        r = client.put("/v1/agent/inventory", headers=host.headers,
                       json=inventory(vcpus=8, ram_mb=ram, disk_gb=100))
        assert r.status_code == 200, r.text
        r = client.post("/v1/agent/heartbeat", headers=host.headers, json={"observed": []})
        assert r.status_code == 200, r.text
        hosts.append(host)
    return hosts, zone


def active_server(client: TestClient, acct: Account, zone: str, image: str,
                  **fields: Any) -> tuple[str, str]:
    """A new server (BUILD) in ``zone``; returns its id and the name of its host."""
    r = client.post("/v1/servers", headers=acct.headers, json={
        "name": unique("vm"), "flavor": "tiny", "image": image, "availability_zone": zone,
        **fields})
    assert r.status_code == 202, r.text
    sid: str = r.json()["id"]
    shown = client.get(f"/v1/servers/{sid}", headers=ADMIN).json()
    return sid, str(shown["host"])


def by_id(hosts: list[EnrolledHost], name: str) -> EnrolledHost:
    return next(h for h in hosts if h.name == name)


def allocated(client: TestClient, admin: dict[str, str], host: EnrolledHost) -> dict[str, int]:
    r = client.get(f"/v1/hosts/{host.id}", headers=admin)
    assert r.status_code == 200, r.text
    return {rc: v["allocated"] for rc, v in r.json()["resources"].items()}


def migrate(client: TestClient, headers: dict[str, str], sid: str, **extra: Any) -> Any:
    return client.post(f"/v1/servers/{sid}/actions", headers=headers,
                       json={"action": "migrate", **extra})


def problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    return body


def desired(client: TestClient, host: EnrolledHost, sid: str) -> dict[str, Any] | None:
    r = client.get("/v1/agent/servers", headers=host.headers)
    assert r.status_code == 200, r.text
    return next((s for s in r.json()["servers"] if s["server_id"] == sid), None)


def put_file(client: TestClient, host: EnrolledHost, sid: str, name: str, data: bytes,
             sha: str | None = None) -> Any:
    return client.put(f"/v1/agent/servers/{sid}/migration/{name}", content=data,
                      headers=host.headers | {
                          "X-Content-Sha256": sha or hashlib.sha256(data).hexdigest()})


def test_refusals_are_explained_and_write_nothing(client: TestClient, admin: dict[str, str],
                                                  member: Account, image: str) -> None:
    (small, big), zone = hosts_in_zone(client, admin, [1024, 8192])
    sid, src_id = active_server(client, member, zone, image)
    source = small if src_id == small.name else big
    observe(client, source.headers, sid, "running")
    other = big if source is small else small

    problem(migrate(client, member.headers, sid, host=other.name), 403, "admin_required")
    problem(migrate(client, admin, sid, host=unique("nohost")), 404, "host_not_found")
    problem(migrate(client, admin, sid, host=source.name), 409, "migration_same_host")
    # Another project's server does not exist for a tenant.
    stranger = make_account(client, admin)
    problem(migrate(client, stranger.headers, sid), 404, "server_not_found")
    # Fill the other host: nothing fits, and the refusal says why, per host for an admin.
    for _ in range(20):
        r = client.post("/v1/servers", headers=member.headers, json={
            "name": unique("fill"), "flavor": "tiny", "image": image, "availability_zone": zone})
        if r.status_code != 202:
            break
    before = (allocated(client, admin, source), allocated(client, admin, other))
    full = other.name
    body = problem(migrate(client, admin, sid, host=full), 409, "no_valid_host")
    assert body["per_host"][0]["host"] == full
    assert "not enough" in body["detail"] and "MEMORY_MB" in body["detail"]
    body = problem(migrate(client, member.headers, sid), 409, "no_valid_host")
    assert "per_host" not in body and full not in body["detail"]
    assert (allocated(client, admin, source), allocated(client, admin, other)) == before
    r = client.get(f"/v1/servers/{sid}/migrations", headers=admin)
    assert r.status_code == 200 and r.json()["migrations"] == []
    shown = client.get(f"/v1/servers/{sid}", headers=member.headers).json()
    assert (shown["status"], shown["task_state"]) == ("ACTIVE", None)


def test_a_building_server_cannot_migrate(client: TestClient, admin: dict[str, str],
                                          member: Account, image: str) -> None:
    _, zone = hosts_in_zone(client, admin, [8192, 8192])
    sid, _ = active_server(client, member, zone, image)
    body = problem(migrate(client, member.headers, sid), 409, "invalid_state")
    assert body["server_status"] == "BUILD"


def test_a_full_cold_move_through_the_agent_api(client: TestClient, admin: dict[str, str],
                                                member: Account, image: str) -> None:
    hosts, zone = hosts_in_zone(client, admin, [8192, 8192])
    sid, src_id = active_server(client, member, zone, image)
    source = by_id(hosts, src_id)
    dest = next(h for h in hosts if h is not source)
    observe(client, source.headers, sid, "running")

    r = migrate(client, member.headers, sid)
    assert r.status_code == 202, r.text
    assert (r.json()["status"], r.json()["task_state"]) == ("MIGRATING", "migrating-export")
    # Held on both hosts while it moves.
    assert allocated(client, admin, source) == TINY
    assert allocated(client, admin, dest) == TINY
    [m] = client.get(f"/v1/servers/{sid}/migrations", headers=admin).json()["migrations"]
    assert (m["status"], m["dest_host_id"]) == ("preparing", dest.id)
    # The source stops the guest and sends its files; the destination is not told yet.
    mine = desired(client, source, sid)
    assert mine is not None and mine["desired"] == "shutoff"
    assert mine["operation"]["kind"] == "migrate_export"
    assert desired(client, dest, sid) is None
    # Only the source may upload, and only the announced bytes are kept.
    assert put_file(client, dest, sid, "disk", b"x").status_code == 404
    problem(put_file(client, source, sid, "disk", b"disk-bytes", sha="0" * 64), 400,
            "migration_file_checksum")
    assert put_file(client, source, sid, "disk", b"disk-bytes").status_code == 204
    assert put_file(client, source, sid, "seed", b"seed-bytes").status_code == 204
    # Nobody downloads before the source reported its step done.
    assert client.get(f"/v1/agent/servers/{sid}/migration/disk",
                      headers=dest.headers).status_code == 404
    observe(client, source.headers, sid, "shutoff",
            operation={"operation_id": mine["operation"]["id"], "result": "success"})
    shown = client.get(f"/v1/servers/{sid}", headers=member.headers).json()
    assert (shown["status"], shown["task_state"]) == ("MIGRATING", "migrating-import")
    theirs = desired(client, dest, sid)
    assert theirs is not None and theirs["operation"]["kind"] == "migrate_import"
    assert desired(client, source, sid)["operation"] is None  # type: ignore[index]
    assert client.get(f"/v1/agent/servers/{sid}/migration/disk",
                      headers=source.headers).status_code == 404
    got = client.get(f"/v1/agent/servers/{sid}/migration/disk", headers=dest.headers)
    assert got.status_code == 200 and got.content == b"disk-bytes"
    assert got.headers["X-Content-Sha256"] == hashlib.sha256(b"disk-bytes").hexdigest()
    # The destination's plain reports change nothing until its step is done.
    assert observe(client, dest.headers, sid, "shutoff")["applied"] is False
    done = observe(client, dest.headers, sid, "shutoff",
                   operation={"operation_id": theirs["operation"]["id"], "result": "success"})
    assert done["applied"] is True
    shown = client.get(f"/v1/servers/{sid}", headers=admin).json()
    assert (shown["status"], shown["task_state"], shown["host"]) == (
        "SHUTOFF", "powering-on", dest.name)
    assert allocated(client, admin, source) == NOTHING
    assert allocated(client, admin, dest) == TINY
    assert desired(client, source, sid) is None  # its agent removes its copy
    assert desired(client, dest, sid)["desired"] == "running"  # type: ignore[index]
    observe(client, dest.headers, sid, "running")
    shown = client.get(f"/v1/servers/{sid}", headers=member.headers).json()
    assert (shown["status"], shown["task_state"], shown["fault"]) == ("ACTIVE", None, None)
    [m] = client.get(f"/v1/servers/{sid}/migrations", headers=member.headers).json()[
        "migrations"]
    assert (m["status"], m["progress"], m["dest_host_id"]) == ("completed", 100, None)
    # The source's late reports are not its business any more.
    r = client.post(f"/v1/agent/servers/{sid}/observations", headers=source.headers, json={
        "state": "absent", "seen_at": "2030-01-01T00:00:00Z", "idempotency_key": unique("k")})
    problem(r, 404, "server_not_found")


def test_an_error_on_the_destination_reverts_and_frees_it(
        client: TestClient, admin: dict[str, str], member: Account, image: str) -> None:
    hosts, zone = hosts_in_zone(client, admin, [8192, 8192])
    sid, src_id = active_server(client, member, zone, image)
    source = by_id(hosts, src_id)
    dest = next(h for h in hosts if h is not source)
    observe(client, source.headers, sid, "running")
    observe(client, source.headers, sid, "shutoff")  # (the guest powered itself off)
    r = migrate(client, member.headers, sid)
    assert r.status_code == 202, r.text
    op = desired(client, source, sid)["operation"]  # type: ignore[index]
    for name in ("disk", "seed"):
        assert put_file(client, source, sid, name, b"bytes").status_code == 204
    observe(client, source.headers, sid, "shutoff",
            operation={"operation_id": op["id"], "result": "success"})
    observe(client, dest.headers, sid, "error", message="disk does not match")
    shown = client.get(f"/v1/servers/{sid}", headers=admin).json()
    assert (shown["status"], shown["task_state"], shown["host"]) == ("SHUTOFF", None,
                                                                      source.name)
    assert shown["fault"]["code"] == "migration_failed"
    assert "destination" in shown["fault"]["message"]
    assert allocated(client, admin, dest) == NOTHING
    assert allocated(client, admin, source) == TINY
    assert desired(client, dest, sid) is None
    [m] = client.get(f"/v1/servers/{sid}/migrations", headers=admin).json()["migrations"]
    assert m["status"] == "reverted"


def test_anti_affinity_holds_for_the_destination(client: TestClient, admin: dict[str, str],
                                                 member: Account, image: str) -> None:
    hosts, zone = hosts_in_zone(client, admin, [8192, 8192, 8192])
    r = client.post("/v1/server-groups", headers=member.headers,
                    json={"name": unique("g"), "policy": "anti-affinity"})
    assert r.status_code == 201, r.text
    group = r.json()["id"]
    first, h1 = active_server(client, member, zone, image, server_group=group)
    _, h2 = active_server(client, member, zone, image, server_group=group)
    observe(client, by_id(hosts, h1).headers, first, "running")
    free = next(h for h in hosts if h.name not in (h1, h2))
    # The only valid destination is the third host; naming the second one is refused.
    body = problem(migrate(client, admin, first, host=by_id(hosts, h2).name), 409,
                   "no_valid_host")
    assert body["refusals"] == {"anti_affinity": 1}
    r = migrate(client, member.headers, first)
    assert r.status_code == 202, r.text
    assert allocated(client, admin, free) == TINY
    # While it moves it holds both hosts: a third member finds no host in the zone.
    r = client.post("/v1/servers", headers=member.headers, json={
        "name": unique("vm"), "flavor": "tiny", "image": image, "availability_zone": zone,
        "server_group": group})
    # (hosts of other zones, in the session's database, are refused for their zone)
    assert problem(r, 409, "no_valid_host")["refusals"]["anti_affinity"] == 3


def test_deleting_a_moving_server_aborts_the_move_and_frees_both_hosts(
        client: TestClient, admin: dict[str, str], member: Account, image: str,
        settings: Settings) -> None:
    hosts, zone = hosts_in_zone(client, admin, [8192, 8192])
    sid, src_id = active_server(client, member, zone, image)
    source = by_id(hosts, src_id)
    dest = next(h for h in hosts if h is not source)
    observe(client, source.headers, sid, "running")
    assert migrate(client, member.headers, sid).status_code == 202
    for name in ("disk", "seed"):
        assert put_file(client, source, sid, name, b"bytes").status_code == 204
    [moving] = client.get(f"/v1/servers/{sid}/migrations", headers=admin).json()["migrations"]
    relayed = Path(settings.data_dir) / "migrations" / moving["id"]
    assert relayed.is_dir()  # the relayed files of the open move
    assert client.delete(f"/v1/servers/{sid}", headers=member.headers).status_code == 202
    [m] = client.get(f"/v1/servers/{sid}/migrations", headers=admin).json()["migrations"]
    assert (m["status"], m["fault"]["code"]) == ("aborted", "server_deleted")
    assert desired(client, dest, sid) is None
    observe(client, source.headers, sid, "absent")
    assert client.get(f"/v1/servers/{sid}", headers=member.headers).status_code == 404
    assert allocated(client, admin, source) == NOTHING
    assert allocated(client, admin, dest) == NOTHING
    # The relayed files of the aborted move go with the next sweep (the app's own host
    # monitor may have swept already).
    with db(client) as s:
        mobility.sweep_stuck(s, settings)
    assert not relayed.exists()


def play_move(client: TestClient, hosts: list[EnrolledHost], sid: str) -> EnrolledHost:
    """Play both agents of the server's open cold migration to its end; returns the host it
    moved to."""
    [m, *_] = client.get(f"/v1/servers/{sid}/migrations", headers=ADMIN).json()["migrations"]
    source = next(h for h in hosts if h.id == m["source_host_id"])
    dest = next(h for h in hosts if h.id == m["dest_host_id"])
    op = desired(client, source, sid)["operation"]  # type: ignore[index]
    for name in ("disk", "seed"):
        assert put_file(client, source, sid, name, name.encode()).status_code == 204
    observe(client, source.headers, sid, "shutoff",
            operation={"operation_id": op["id"], "result": "success"})
    op = desired(client, dest, sid)["operation"]  # type: ignore[index]
    observe(client, dest.headers, sid, "shutoff",
            operation={"operation_id": op["id"], "result": "success"})
    return dest


def test_drain_moves_every_server_keeps_anti_affinity_and_explains_what_cannot_move(
        client: TestClient, admin: dict[str, str], member: Account, image: str) -> None:
    # Host A is alone in its zone while its servers are created, then B and C join (smaller:
    # the big server fits only on A).
    [a], zone = hosts_in_zone(client, admin, [16384])
    big = make_flavor(client, admin, ram_mb=8192)
    r = client.post("/v1/server-groups", headers=member.headers,
                    json={"name": unique("g"), "policy": "anti-affinity"})
    group = r.json()["id"]
    placed = [active_server(client, member, zone, image),
              active_server(client, member, zone, image),
              active_server(client, member, zone, image, server_group=group)]
    r = client.post("/v1/servers", headers=member.headers, json={
        "name": unique("big"), "flavor": big["name"], "image": image,
        "availability_zone": zone})
    assert r.status_code == 202, r.text
    stuck = r.json()["id"]
    for sid, host in placed:
        assert host == a.name
        observe(client, a.headers, sid, "running")
    observe(client, a.headers, stuck, "running")
    observe(client, a.headers, placed[1][0], "shutoff")  # one SHUTOFF server
    others = []
    for _ in range(2):
        h = enroll_host(client, admin, availability_zone=zone)
        client.put("/v1/agent/inventory", headers=h.headers,
                   json=inventory(vcpus=8, ram_mb=4096, disk_gb=100))
        client.post("/v1/agent/heartbeat", headers=h.headers, json={"observed": []})
        others.append(h)
    hosts = [a, *others]
    _, partner_host = active_server(client, member, zone, image, server_group=group)
    assert partner_host != a.name

    r = client.post(f"/v1/hosts/{a.id}/drain", headers=admin)
    assert r.status_code == 202, r.text
    view = r.json()
    assert (view["state"], view["servers_left"]) == ("draining", 4)
    assert sorted(view["moving"]) == sorted(sid for sid, _ in placed)
    [refusal] = view["refused"]
    assert (refusal["server_id"], refusal["code"]) == (stuck, "no_valid_host")
    assert "not enough MEMORY_MB" in refusal["reason"]
    shown = client.get(f"/v1/hosts/{a.id}", headers=admin).json()
    assert (shown["enabled"], shown["maintenance"]) == (False, "draining")
    # No new placement lands on a draining host.
    r = client.post("/v1/servers", headers=member.headers, json={
        "name": unique("vm"), "flavor": big["name"], "image": image, "availability_zone": zone})
    problem(r, 409, "no_valid_host")

    landed = {sid: play_move(client, hosts, sid).name for sid, _ in placed}
    assert a.name not in landed.values()
    assert landed[placed[2][0]] != partner_host  # anti-affinity still holds
    statuses = {sid: client.get(f"/v1/servers/{sid}", headers=member.headers).json()
                for sid, _ in placed}
    assert statuses[placed[1][0]]["status"] == "SHUTOFF"
    assert statuses[placed[1][0]]["task_state"] is None
    assert statuses[placed[0][0]]["task_state"] == "powering-on"  # started where it landed
    view = client.get(f"/v1/hosts/{a.id}/drain", headers=admin).json()
    assert (view["state"], view["servers_left"], view["completed"], view["moving"]) == (
        "draining", 1, 3, [])
    assert [x["server_id"] for x in view["refused"]] == [stuck]
    problem(client.delete(f"/v1/hosts/{a.id}", headers=admin), 409, "host_not_empty")

    # Once the last server is gone the host is drained and can be decommissioned.
    client.delete(f"/v1/servers/{stuck}", headers=member.headers)
    observe(client, a.headers, stuck, "absent")
    view = client.get(f"/v1/hosts/{a.id}/drain", headers=admin).json()
    assert (view["state"], view["servers_left"], view["refused"]) == ("drained", 0, [])
    assert client.delete(f"/v1/hosts/{a.id}", headers=admin).status_code == 204
    r = client.post("/v1/agent/heartbeat", headers=a.headers, json={"observed": []})
    problem(r, 401, "invalid_host_credential")


def test_a_step_without_progress_reverts_to_the_source(
        client: TestClient, admin: dict[str, str], member: Account, image: str,
        settings: Settings) -> None:
    hosts, zone = hosts_in_zone(client, admin, [8192, 8192])
    sid, src = active_server(client, member, zone, image)
    source = by_id(hosts, src)
    dest = next(h for h in hosts if h is not source)
    observe(client, source.headers, sid, "running")
    assert migrate(client, member.headers, sid).status_code == 202
    limit = settings.migration_step_timeout_seconds

    def sweep(after: int) -> int:
        with db(client) as s:
            return mobility.sweep_stuck(s, settings, now=utcnow() + timedelta(seconds=after))

    sweep(limit - 60)  # (other tests' moves, in the session's database, may go)
    shown = client.get(f"/v1/servers/{sid}", headers=admin).json()
    assert (shown["status"], shown["task_state"]) == ("MIGRATING", "migrating-export")
    assert sweep(limit + 1) >= 1
    assert sweep(limit + 1) == 0  # nothing left for another sweeper
    shown = client.get(f"/v1/servers/{sid}", headers=admin).json()
    assert (shown["status"], shown["task_state"], shown["host"]) == (
        "SHUTOFF", "powering-on", source.name)
    assert shown["fault"]["code"] == "migration_timeout"
    assert "migrating-export" in shown["fault"]["message"]
    assert allocated(client, admin, dest) == NOTHING
    assert allocated(client, admin, source) == TINY
