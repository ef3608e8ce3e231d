"""Agent endpoints through HTTP: isolation, inventory, long-poll, observations, console."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.db import utcnow
from api.models import Allocation, Server, ServerEvent
from api.servers.lifecycle import force_delete
from tests.agent_factories import (
    EnrolledHost,
    db,
    enroll_host,
    inventory,
    make_server,
    set_server,
)
from tests.factories import make_account, unique


@pytest.fixture
def host(client: TestClient, admin: dict[str, str]) -> EnrolledHost:
    """A fresh enrolled host with an inventory."""
    h = enroll_host(client, admin)
    assert client.put("/v1/agent/inventory", json=inventory(),
                      headers=h.headers).status_code == 200
    return h


@pytest.fixture
def project(client: TestClient, admin: dict[str, str]) -> str:
    """A fresh project id."""
    return make_account(client, admin).project_id


def _observe(client: TestClient, host: EnrolledHost, server_id: str, state: str,
             key: str | None = None, **extra: Any) -> Any:
    body = {"state": state, "seen_at": utcnow().isoformat(),
            "idempotency_key": key or unique("obs"), **extra}
    return client.post(f"/v1/agent/servers/{server_id}/observations", json=body,
                       headers=host.headers)


def _server(client: TestClient, server_id: str) -> Server:
    with db(client) as s:
        server = s.get(Server, server_id)
        assert server is not None
        return server


def _desired(client: TestClient, host: EnrolledHost, **params: Any) -> Any:
    r = client.get("/v1/agent/servers", params=params, headers=host.headers)
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------- who may call what

def test_host_credential_reaches_only_its_own_agent_endpoints(
    client: TestClient, admin: dict[str, str], host: EnrolledHost, project: str
) -> None:
    other = enroll_host(client, admin)
    theirs = make_server(client, project, other.id)
    # Tenant and admin endpoints do not know host credentials at all.
    for method, path in [("GET", "/v1/projects"), ("GET", "/v1/auth/tokens/current"),
                         ("GET", "/v1/hosts"), ("POST", "/v1/hosts/enrollment-tokens"),
                         ("GET", "/v1/availability-zones"),
                         ("GET", f"/v1/servers/{theirs}/console")]:
        r = client.request(method, path, headers=host.headers)
        assert (r.status_code, r.json()["code"]) == (401, "invalid_token"), path
    # Another host's servers are invisible.
    assert theirs not in [s["server_id"] for s in _desired(client, host)["servers"]]
    r = _observe(client, host, theirs, "running")
    assert (r.status_code, r.json()["code"]) == (404, "server_not_found")
    r = client.put(f"/v1/agent/servers/{theirs}/console", content=b"x", headers=host.headers)
    assert r.status_code == 404
    assert _server(client, theirs).status == "BUILD"
    # And a user token is not a host credential.
    member = make_account(client, admin)
    r = client.get("/v1/agent/servers", headers=member.headers)
    assert (r.status_code, r.json()["code"]) == (401, "invalid_host_credential")


# ---------------------------------------------------------------- inventory

def test_inventory_upsert_keeps_admin_ratio_and_flags_overcommit(
    client: TestClient, admin: dict[str, str], host: EnrolledHost, project: str
) -> None:
    client.patch(f"/v1/hosts/{host.id}", json={"allocation_ratios": {"VCPU": 2.0},
                                              "reserved": {"MEMORY_MB": 1024}}, headers=admin)
    make_server(client, project, host.id, vcpus=8, ram_mb=4096, disk_gb=10)
    body = {"VCPU": {"total": 4, "max_unit": 4}, "MEMORY_MB": {"total": 8192}}
    r = client.put("/v1/agent/inventory", json=body, headers=host.headers)
    assert r.status_code == 200, r.text
    res = r.json()["resources"]
    # VCPU: 4 * 2.0 = 8 >= 8 allocated; MEMORY_MB: reserved stays 1024 (null means keep).
    assert (res["VCPU"]["total"], res["VCPU"]["allocation_ratio"], res["VCPU"]["capacity"],
            res["VCPU"]["max_unit"]) == (4, 2.0, 8, 4)
    assert (res["MEMORY_MB"]["reserved"], res["MEMORY_MB"]["capacity"]) == (1024, 7168)
    assert res["DISK_GB"]["total"] == 500  # absent class unchanged
    assert r.json()["overcommitted"] == []
    r = client.put("/v1/agent/inventory", json={"VCPU": {"total": 2, "reserved": 0}},
                   headers=host.headers)
    assert r.status_code == 200
    assert r.json()["overcommitted"] == ["VCPU"]  # 8 allocated > 2 * 2.0
    for bad in ({"VCPU": {"total": -1}}, {"VCPU": {"total": 4, "reserved": 5}},
                {"VCPU": {"total": 4, "min_unit": 2, "max_unit": 1}}, {"GPU": {"total": 1}}):
        r = client.put("/v1/agent/inventory", json=bad, headers=host.headers)
        assert (r.status_code, r.json()["code"]) == (422, "invalid_input"), bad


# ---------------------------------------------------------------- desired state

def test_desired_state_lists_the_hosts_servers(
    client: TestClient, host: EnrolledHost, project: str
) -> None:
    sid = make_server(client, project, host.id, name="Web <01>/../x", vcpus=2, ram_mb=1024,
                      disk_gb=5, image_properties={"kernel_id": "k1", "ramdisk_id": "r1",
                                                   "kernel_cmdline": "console=ttyS0"})
    body = _desired(client, host)
    [s] = [s for s in body["servers"] if s["server_id"] == sid]
    assert s["hostname"] == "web-01-x"
    assert s["flavor"] == {"vcpus": 2, "ram_mb": 1024, "disk_gb": 5}
    assert (s["image"]["kernel_id"], s["image"]["ramdisk_id"], s["image"]["kernel_cmdline"]) \
        == ("k1", "r1", "console=ttyS0")
    assert (s["desired"], s["operation"], s["project_id"]) == ("running", None, project)
    assert s["key_data"] == "ssh-ed25519 AAA"
    set_server(client, sid, status="REBOOT", task_state="rebooting-hard")
    [s] = _desired(client, host)["servers"]
    assert s["operation"] == {"id": f"reboot-{s['generation']}", "kind": "reboot",
                              "params": {"type": "hard"}}
    set_server(client, sid, status="DELETING", task_state="deleting")
    [s] = _desired(client, host)["servers"]
    assert s["desired"] == "absent"


def test_long_poll_answers_not_modified_when_the_cursor_is_unchanged_after_the_wait(
    client: TestClient, host: EnrolledHost
) -> None:
    cursor = _desired(client, host)["cursor"]
    again = client.get("/v1/agent/servers", params={"since": cursor, "wait": 0.3},
                       headers=host.headers)
    assert (again.status_code, again.content) == (304, b"")
    assert again.headers["X-Request-Id"]
    assert _desired(client, host)["cursor"] == cursor
    r = client.get("/v1/agent/servers", params={"wait": 31}, headers=host.headers)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")


def _wait_in_thread(client: TestClient, host: EnrolledHost, cursor: str,
                    wait: float = 30) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        out["body"] = _desired(client, host, since=cursor, wait=wait)

    t = threading.Thread(target=run)
    t.start()
    return t, out


@pytest.mark.parametrize("change", ["new_server", "action", "delete", "unnotified_new_server"])
def test_long_poll_wakes_up_when_a_server_changes(
    client: TestClient, host: EnrolledHost, project: str, change: str
) -> None:
    sid = make_server(client, project, host.id, status="ACTIVE", task_state=None)
    cursor = _desired(client, host)["cursor"]
    # A change nobody announced wakes no poll: the answer at the end of the wait reads it.
    t, out = _wait_in_thread(client, host, cursor,
                             wait=1 if change == "unnotified_new_server" else 30)
    if change == "new_server":
        sid = make_server(client, project, host.id)
    elif change == "unnotified_new_server":  # the cursor counts servers too
        sid = make_server(client, project, host.id, notify=False)
    elif change == "action":
        set_server(client, sid, task_state="powering-off")
    else:
        set_server(client, sid, status="DELETING", task_state="deleting")
    # Generous, yet shorter than the 30 s wait: only a wake-up on the change ends it in time.
    t.join(timeout=20)
    assert not t.is_alive(), "the long-poll did not wake up on the change"
    body = out["body"]
    assert body["cursor"] != cursor
    [s] = [s for s in body["servers"] if s["server_id"] == sid]
    expected = {"new_server": "running", "unnotified_new_server": "running",
                "action": "shutoff", "delete": "absent"}[change]
    assert s["desired"] == expected


# ---------------------------------------------------------------- observations

def _events(client: TestClient, server_id: str) -> list[str]:
    with db(client) as s:
        return list(s.scalars(select(ServerEvent.action).where(ServerEvent.server_id == server_id)))


def test_observations_follow_the_state_machine_and_are_idempotent(
    client: TestClient, host: EnrolledHost, project: str
) -> None:
    sid = make_server(client, project, host.id)
    cursor = _desired(client, host)["cursor"]
    r = _observe(client, host, sid, "running", key="k-1",
                 addresses=[{"ip": "192.0.2.10", "mac": "52:54:00:aa:bb:cc",
                             "network": "default"}])
    assert r.status_code == 200, r.text
    assert r.json() == {"server_id": sid, "status": "ACTIVE", "task_state": None,
                        "power_state": "running", "applied": True}
    assert _server(client, sid).addresses == [
        {"ip": "192.0.2.10", "mac": "52:54:00:aa:bb:cc", "network": "default"}]
    assert _desired(client, host)["cursor"] != cursor  # an observed transition notifies too
    # The same key again (a retry) changes nothing, even with another state.
    r = _observe(client, host, sid, "shutoff", key="k-1")
    assert (r.json()["status"], r.json()["applied"]) == ("ACTIVE", False)
    assert _events(client, sid) == ["observe"]
    # stop: ACTIVE/powering-off --shutoff--> SHUTOFF
    set_server(client, sid, task_state="powering-off")
    assert _observe(client, host, sid, "shutoff").json()["status"] == "SHUTOFF"
    # reboot settles only with the current reboot id
    set_server(client, sid, status="REBOOT", task_state="rebooting")
    [spec] = [s for s in _desired(client, host)["servers"] if s["server_id"] == sid]
    r = _observe(client, host, sid, "running",
                 operation={"operation_id": "reboot-0", "result": "success"})
    assert r.json()["status"] == "REBOOT"
    r = _observe(client, host, sid, "running",
                 operation={"operation_id": spec["operation"]["id"], "result": "success"})
    assert (r.json()["status"], r.json()["task_state"]) == ("ACTIVE", None)
    for bad in ({"state": "sleeping"}, {"operation": {"operation_id": "x", "result": "ok"}},
                {"seen_at": "2026-01-01T00:00:00"}, {"idempotency_key": ""},
                {"addresses": [{"ip": "not-an-ip"}]}):
        body = {"state": "running", "seen_at": utcnow().isoformat(), "idempotency_key": "z"}
        r = client.post(f"/v1/agent/servers/{sid}/observations", json=body | bad,
                        headers=host.headers)
        assert (r.status_code, r.json()["code"]) == (422, "invalid_input"), bad


def test_a_failed_build_becomes_error_with_a_fault(
    client: TestClient, host: EnrolledHost, project: str
) -> None:
    sid = make_server(client, project, host.id)
    r = _observe(client, host, sid, "error", message="qemu: no such file")
    assert r.json()["status"] == "ERROR"
    server = _server(client, sid)
    assert (server.fault_code, server.fault_message) == ("spawn_failed", "qemu: no such file")


def test_an_unexpected_stop_is_an_event_and_changes_no_state(
    client: TestClient, host: EnrolledHost, project: str
) -> None:
    sid = make_server(client, project, host.id)
    assert _observe(client, host, sid, "running").json()["status"] == "ACTIVE"
    # The agent found the domain of an ACTIVE server killed and is starting it again.
    r = _observe(client, host, sid, "shutoff", key="stop-1", unexpected_stop="destroyed")
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["power_state"], r.json()["applied"]) == (
        "ACTIVE", "running", True)
    assert _events(client, sid) == ["observe", "domain_stopped_unexpectedly"]
    with db(client) as s:
        event = s.scalars(select(ServerEvent).where(
            ServerEvent.server_id == sid,
            ServerEvent.action == "domain_stopped_unexpectedly")).one()
        assert (event.result, event.details["reason"]) == ("error", "destroyed")
        assert "libvirt: destroyed" in event.message
    # A retry of the same report records nothing more.
    assert _observe(client, host, sid, "shutoff", key="stop-1",
                    unexpected_stop="destroyed").json()["applied"] is False
    # A crash (libvirt's crashed state) is reported with the state error: still no change.
    r = _observe(client, host, sid, "error", unexpected_stop="crashed")
    assert (r.json()["status"], r.json()["task_state"]) == ("ACTIVE", None)
    assert _events(client, sid).count("domain_stopped_unexpectedly") == 2
    # A server with a task in flight (a user's stop raced with it): nothing is recorded.
    set_server(client, sid, task_state="powering-off")
    r = _observe(client, host, sid, "shutoff", unexpected_stop="destroyed")
    assert (r.json()["status"], r.json()["task_state"]) == ("ACTIVE", "powering-off")
    assert _events(client, sid).count("domain_stopped_unexpectedly") == 2
    for bad in ({"unexpected_stop": "shutdown"}, {"unexpected_stop": "destroyed",
                                                  "state": "running"}):
        body = {"state": "shutoff", "seen_at": utcnow().isoformat(), "idempotency_key": "z"}
        r = client.post(f"/v1/agent/servers/{sid}/observations", json=body | bad,
                        headers=host.headers)
        assert (r.status_code, r.json()["code"]) == (422, "invalid_input"), bad


def test_a_stale_observation_cannot_undo_a_newer_one(
    client: TestClient, host: EnrolledHost, project: str
) -> None:
    sid = make_server(client, project, host.id)
    assert _observe(client, host, sid, "running").json()["status"] == "ACTIVE"
    old = (utcnow() - timedelta(minutes=5)).isoformat()
    r = client.post(f"/v1/agent/servers/{sid}/observations", headers=host.headers,
                    json={"state": "shutoff", "seen_at": old, "idempotency_key": unique("k")})
    assert (r.json()["status"], r.json()["applied"]) == ("ACTIVE", False)


def test_a_stale_report_does_not_burn_its_idempotency_key(
    client: TestClient, host: EnrolledHost, project: str
) -> None:
    sid = make_server(client, project, host.id, status="ACTIVE", task_state=None)
    assert _observe(client, host, sid, "running").json()["applied"] is True
    set_server(client, sid, status="DELETING", task_state="deleting")
    key = unique("k")
    old = (utcnow() - timedelta(minutes=5)).isoformat()
    r = client.post(f"/v1/agent/servers/{sid}/observations", headers=host.headers,
                    json={"state": "absent", "seen_at": old, "idempotency_key": key})
    assert (r.json()["status"], r.json()["applied"]) == ("DELETING", False)
    # The agent retries with a fresh seen_at under the same key: the delete completes.
    r = _observe(client, host, sid, "absent", key=key)
    assert (r.json()["status"], r.json()["applied"]) == ("DELETED", True)
    assert _server(client, sid).status == "DELETED"


def test_delete_frees_allocations_only_when_the_agent_confirms(
    client: TestClient, host: EnrolledHost, project: str
) -> None:
    sid = make_server(client, project, host.id, status="ACTIVE", task_state=None)
    set_server(client, sid, status="DELETING", task_state="deleting")

    def allocations() -> int:
        with db(client) as s:
            return int(s.scalar(select(func.count()).where(Allocation.server_id == sid)) or 0)

    assert _observe(client, host, sid, "running").json()["status"] == "DELETING"
    assert allocations() == 3
    r = _observe(client, host, sid, "absent")
    assert r.json()["status"] == "DELETED"
    assert allocations() == 0
    server = _server(client, sid)
    assert server.deleted_at is not None
    assert sid not in [s["server_id"] for s in _desired(client, host)["servers"]]
    assert _observe(client, host, sid, "absent").status_code == 404  # gone for the agent


def test_force_delete_does_what_confirmation_does(
    client: TestClient, host: EnrolledHost, project: str
) -> None:
    sid = make_server(client, project, host.id, status="DELETING", task_state="deleting")
    cursor = _desired(client, host)["cursor"]
    with db(client) as s:
        server = s.get(Server, sid)
        assert server is not None
        force_delete(s, server, user_id="admin")
    server = _server(client, sid)
    assert (server.status, server.deleted_at is not None) == ("DELETED", True)
    with db(client) as s:
        assert s.scalar(select(func.count()).where(Allocation.server_id == sid)) == 0
    assert _desired(client, host)["cursor"] != cursor
    assert "force_delete" in _events(client, sid)


def test_heartbeat_applies_own_observations_and_ignores_others(
    client: TestClient, admin: dict[str, str], host: EnrolledHost, project: str
) -> None:
    mine = make_server(client, project, host.id)
    theirs = make_server(client, project, enroll_host(client, admin).id)
    now = utcnow().isoformat()
    r = client.post("/v1/agent/heartbeat", headers=host.headers, json={"observed": [
        {"server_id": mine, "state": "running", "seen_at": now},
        {"server_id": theirs, "state": "running", "seen_at": now},
        {"server_id": "nope", "state": "running", "seen_at": now}]})
    assert r.status_code == 200, r.text
    assert (r.json()["applied"], sorted(r.json()["ignored"])) == (1, sorted([theirs, "nope"]))
    assert _server(client, mine).status == "ACTIVE"
    assert _server(client, theirs).status == "BUILD"


# ---------------------------------------------------------------- console

def test_console_is_bounded_and_isolated(
    client: TestClient, admin: dict[str, str], host: EnrolledHost
) -> None:
    owner = make_account(client, admin)
    stranger = make_account(client, admin)
    sid = make_server(client, owner.project_id, host.id)
    url = f"/v1/servers/{sid}/console"
    assert client.get(url, headers=owner.headers).json() == {"output": ""}
    lines = [f"line {i}\n".encode() for i in range(20000)]  # ~190 KB
    r = client.put(f"/v1/agent/servers/{sid}/console", content=b"".join(lines),
                   headers=host.headers | {"Content-Type": "text/plain"})
    assert r.status_code == 204, r.text
    out = client.get(url, headers=owner.headers).json()["output"]
    assert len(out.encode()) == 64 * 1024
    assert out.endswith("line 19999\n")
    assert client.get(url, params={"lines": 2}, headers=owner.headers).json() == {
        "output": "line 19998\nline 19999\n"}
    assert client.get(url, headers=admin).status_code == 200
    r = client.get(url, headers=stranger.headers)
    assert (r.status_code, r.json()["code"]) == (404, "server_not_found")
    r = client.put("/v1/agent/servers/..%2F..%2Fetc/console", content=b"x",
                   headers=host.headers)
    assert r.status_code == 404
    r = client.get(url, params={"lines": -1}, headers=owner.headers)
    assert r.status_code == 422


def test_concurrent_observations_move_a_server_once(
    client: TestClient, host: EnrolledHost, project: str
) -> None:
    sid = make_server(client, project, host.id)
    results: list[Any] = []
    barrier = threading.Barrier(5)

    def attempt() -> None:
        barrier.wait()
        results.append(_observe(client, host, sid, "running").json())

    threads = [threading.Thread(target=attempt) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [r["status"] for r in results] == ["ACTIVE"] * 5
    assert _events(client, sid) == ["observe"]  # one transition, however many reports


def test_subscribers_see_every_agent_driven_status_change(
    client: TestClient, host: EnrolledHost, project: str
) -> None:
    from api.servers.changes import Change
    from api.servers.subscribers import SUBSCRIBERS, Subscriber

    seen: list[tuple[str, str, str]] = []

    def hook(_s: Any, change: Change) -> bool:
        if change.kind == "transition":
            seen.append((change.server.id, change.old_status, change.server.status))
        return False

    sid = make_server(client, project, host.id)
    subscriber = Subscriber(hook)
    SUBSCRIBERS.append(subscriber)
    try:
        _observe(client, host, sid, "running")
        _observe(client, host, sid, "running")  # no change, no call
        _observe(client, host, sid, "shutoff")
    finally:
        SUBSCRIBERS.remove(subscriber)
    assert seen == [(sid, "BUILD", "ACTIVE"), (sid, "ACTIVE", "SHUTOFF")]
