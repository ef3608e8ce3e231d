"""Servers through HTTP: create, list, show, delete, actions, events, validation, isolation."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.agent_factories import hold_silence, observe
from tests.catalog_rows import make_flavor_row, make_host_row, make_image_row, set_server_state
from tests.factories import Account, make_account, unique

# Servers created through the API need a host to be placed on.
pytestmark = pytest.mark.usefixtures("pool")

PROBLEM = "application/problem+json"


def ssh_key(kind: str = "ssh-ed25519") -> str:
    """A well-formed OpenSSH public key line (random-looking, never used to log in)."""
    blob = struct.pack(">I", len(kind)) + kind.encode() + struct.pack(">I", 32) + bytes(32)
    return f"{kind} {base64.b64encode(blob).decode()} test@minicloud"


def boot(client: TestClient, acct: Account, database_url: str, **body: Any) -> dict[str, Any]:
    """Create a server from a fresh private image of the account's project; assert 202."""
    body.setdefault("image", make_image_row(database_url, acct.project_id))
    body.setdefault("flavor", "tiny")
    body.setdefault("name", unique("vm"))
    r = client.post("/v1/servers", json=body, headers=acct.headers)
    assert r.status_code == 202, r.text
    server: dict[str, Any] = r.json()
    return server


def usage(client: TestClient, acct: Account) -> dict[str, int]:
    r = client.get(f"/v1/quotas/{acct.project_id}", headers=acct.headers)
    assert r.status_code == 200, r.text
    # The servers' usage (the project's images are counted under images/image_bytes).
    result: dict[str, int] = {k: v for k, v in r.json()["usage"].items()
                              if k not in ("images", "image_bytes")}
    return result


def server_ids(client: TestClient, acct: Account, query: str = "") -> list[str]:
    r = client.get(f"/v1/servers?limit=1000{query}", headers=acct.headers)
    assert r.status_code == 200, r.text
    return [s["id"] for s in r.json()["servers"]]


def problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    return body


# --- create -------------------------------------------------------------------------------


def test_create_answers_202_build_scheduling_with_flavor_sizes_copied(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    image = make_image_row(database_url, acct.project_id, name=unique("img"))
    r = client.post("/v1/servers", headers={**acct.headers, "X-Request-Id": "req-create-1"},
                    json={"name": "web 1", "flavor": "small", "image": image,
                          "key_data": ssh_key(), "user_data": "#cloud-config\n",
                          "availability_zone": "nova"})
    assert r.status_code == 202, r.text
    s = r.json()
    # Placed at once on the pool host; tenants never see host names.
    assert (s["status"], s["task_state"], s["host"]) == ("BUILD", "spawning", None)
    assert s["flavor"] == {"id": s["flavor"]["id"], "name": "small", "vcpus": 1,
                           "ram_mb": 2048, "disk_gb": 20}
    assert s["image"]["id"] == image
    assert (s["project_id"], s["user_id"]) == (acct.project_id, acct.user_id)
    assert s["availability_zone"] == "nova"
    assert s["fault"] is None
    events = client.get(f"/v1/servers/{s['id']}/events", headers=acct.headers).json()["events"]
    assert [(e["action"], e["result"], e["request_id"], e["user_id"]) for e in events] == [
        ("create", "accepted", "req-create-1", acct.user_id),
        ("schedule", "success", "req-create-1", None)]  # the scheduler acts, not the user
    assert events[1]["details"]["candidates"] >= 1
    assert "host" not in str(events[1]["details"]).replace("availability_zone", "")
    as_admin = client.get(f"/v1/servers/{s['id']}/events", headers=admin).json()["events"]
    assert as_admin[1]["details"]["host"] == "pool-host"
    assert as_admin[1]["details"]["decision"]["top"][0]["host"] == "pool-host"


def test_flavor_and_image_may_be_given_by_id_or_name(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    name = unique("img")
    image = make_image_row(database_url, acct.project_id, name=name)
    flavor = make_flavor_row(database_url, vcpus=2, ram_mb=1024, disk_gb=5)
    by_name = boot(client, acct, database_url, image=name, flavor=flavor["name"])
    by_id = boot(client, acct, database_url, image=image, flavor=flavor["id"])
    for s in (by_name, by_id):
        assert (s["image"]["id"], s["flavor"]["id"]) == (image, flavor["id"])
    public = make_image_row(database_url, admin_project(client, admin), visibility="public")
    assert boot(client, acct, database_url, image=public)["image"]["id"] == public


def admin_project(client: TestClient, admin: dict[str, str]) -> str:
    project_id: str = client.get("/v1/auth/tokens/current", headers=admin).json()["project"]["id"]
    return project_id


def test_bad_create_input_is_a_4xx_problem_and_writes_nothing(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    other = make_account(client, admin)
    image = make_image_row(database_url, acct.project_id)
    others_image = make_image_row(database_url, other.project_id)
    queued = make_image_row(database_url, acct.project_id, status="queued")
    big = make_image_row(database_url, acct.project_id, min_disk=40, min_ram=4096)
    private_flavor = make_flavor_row(database_url, is_public=False)
    others_group = client.post("/v1/server-groups", headers=other.headers,
                               json={"name": "g", "policy": "affinity"}).json()["id"]
    ok = {"name": "vm", "flavor": "tiny", "image": image}
    cases: list[tuple[Any, int, str]] = [
        ({**ok, "name": 123}, 422, "invalid_input"),
        ({**ok, "name": "x" * 10_000}, 422, "invalid_input"),
        ({**ok, "name": "bell\x07"}, 422, "invalid_input"),
        ({**ok, "name": ""}, 422, "invalid_input"),
        ({**ok, "name": " padded"}, 422, "invalid_input"),
        ({**ok, "flavor": None}, 422, "invalid_input"),
        ({**ok, "flavor": -1}, 422, "invalid_input"),
        ({**ok, "surprise": True}, 422, "invalid_input"),
        ({"name": "vm", "image": image}, 422, "invalid_input"),
        ({**ok, "flavor": "no-such-flavor"}, 404, "flavor_not_found"),
        ({**ok, "flavor": private_flavor["id"]}, 404, "flavor_not_found"),
        ({**ok, "image": "no-such-image"}, 404, "image_not_found"),
        ({**ok, "image": others_image}, 404, "image_not_found"),
        ({**ok, "image": queued}, 409, "image_not_active"),
        ({**ok, "image": big, "flavor": "small"}, 422, "flavor_too_small"),
        ({**ok, "user_data": "a" * (64 * 1024 + 1)}, 422, "invalid_input"),
        ({**ok, "user_data": base64.b64encode(bytes(64 * 1024 + 1)).decode()},
         422, "invalid_input"),
        ({**ok, "user_data": "nul\x00"}, 422, "invalid_input"),
        ({**ok, "key_data": "not a key"}, 422, "invalid_input"),
        ({**ok, "key_data": "ssh-rsa !!!notbase64"}, 422, "invalid_input"),
        ({**ok, "key_data": ssh_key().replace("ssh-ed25519 ", "ssh-rsa ", 1)},
         422, "invalid_input"),
        ({**ok, "server_group": others_group}, 404, "server_group_not_found"),
        ({**ok, "server_group": "no-such-group"}, 404, "server_group_not_found"),
        ({**ok, "availability_zone": "zone one"}, 422, "invalid_input"),
        ({**ok, "availability_zone": "z" * 1000}, 422, "invalid_input"),
        ([1, 2, 3], 422, "invalid_input"),
    ]
    for body, status, code in cases:
        problem(client.post("/v1/servers", json=body, headers=acct.headers), status, code)
    r = client.post("/v1/servers", content=b'{"name": "vm", "flavor":',
                    headers={**acct.headers, "Content-Type": "application/json"})
    problem(r, 400, "malformed_json")
    assert server_ids(client, acct) == []
    assert usage(client, acct) == {"instances": 0, "vcpus": 0, "ram_mb": 0, "disk_gb": 0}


def test_big_user_data_at_the_limit_and_every_key_type_are_accepted(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    boot(client, acct, database_url, user_data="a" * (64 * 1024))
    boot(client, acct, database_url, user_data=base64.b64encode(bytes(64 * 1024)).decode())
    for kind in ("ssh-rsa", "ecdsa-sha2-nistp256", "ssh-ed25519"):
        boot(client, acct, database_url, key_data=ssh_key(kind))


# --- show, list, pagination, filters -------------------------------------------------------


def test_pagination_with_marker_is_stable_without_duplicates_or_misses(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    client.put(f"/v1/quotas/{acct.project_id}", json={"instances": 20}, headers=admin)
    image = make_image_row(database_url, acct.project_id)
    created = [boot(client, acct, database_url, image=image)["id"] for _ in range(7)]
    seen: list[str] = []
    marker: str | None = None
    pages = 0
    while True:
        query = "/v1/servers?limit=3" + (f"&marker={marker}" if marker else "")
        body = client.get(query, headers=acct.headers).json()
        seen += [s["id"] for s in body["servers"]]
        pages += 1
        marker = body["next_marker"]
        if marker is None:
            break
        # A delete between pages shifts nothing: the marker still works once deleted.
        if pages == 1:
            assert client.delete(f"/v1/servers/{marker}",
                                 headers=acct.headers).status_code == 202
            created.remove(marker)
            seen.remove(marker)
    assert seen == created  # creation order, no duplicates, nothing missed
    assert pages == 3  # 3 + 3 + 1


def test_marker_must_name_a_server_of_the_listing(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    other = make_account(client, admin)
    theirs = boot(client, other, database_url)["id"]
    for marker in ("nope", theirs):
        r = client.get(f"/v1/servers?marker={marker}", headers=acct.headers)
        problem(r, 400, "invalid_marker")
    for limit in ("0", "1001", "-1", "many"):
        problem(client.get(f"/v1/servers?limit={limit}", headers=acct.headers),
                422, "invalid_input")


def test_filters_by_status_and_name_substring(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    web = boot(client, acct, database_url, name="Web-Frontend")["id"]
    db = boot(client, acct, database_url, name="database_1")["id"]
    set_server_state(database_url, db, status="ACTIVE", task_state=None)
    assert server_ids(client, acct, "&name=frontend") == [web]  # case-insensitive substring
    assert server_ids(client, acct, "&name=%25") == []  # LIKE wildcards are literal
    assert server_ids(client, acct, "&name=_1") == [db]
    assert server_ids(client, acct, "&status=ACTIVE") == [db]
    assert server_ids(client, acct, "&status=BUILD") == [web]
    problem(client.get("/v1/servers?status=DELETED", headers=acct.headers),
            422, "invalid_input")
    problem(client.get("/v1/servers?name=%07", headers=acct.headers), 422, "invalid_input")


def test_admin_lists_all_projects_and_by_host_and_sees_host_names(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    a = make_account(client, admin)
    b = make_account(client, admin)
    tag = unique("tag")
    sa = boot(client, a, database_url, name=f"{tag}-a")["id"]
    sb = boot(client, b, database_url, name=f"{tag}-b")["id"]
    host = make_host_row(database_url)
    set_server_state(database_url, sb, host_id=host["id"], status="ACTIVE", task_state=None)
    r = client.get(f"/v1/servers?all_projects=true&name={tag}", headers=admin)
    assert [s["id"] for s in r.json()["servers"]] == [sa, sb]
    for query in (f"all_projects=true&host={host['name']}", f"host={host['name']}"):
        r = client.get(f"/v1/servers?{query}", headers=admin)
        assert [(s["id"], s["host"]) for s in r.json()["servers"]] == [(sb, host["name"])]
    assert client.get("/v1/servers?host=no-such-host", headers=admin).json() == {
        "servers": [], "next_marker": None}
    assert client.get(f"/v1/servers/{sb}", headers=b.headers).json()["host"] is None
    assert client.get(f"/v1/servers/{sb}", headers=admin).json()["host"] == host["name"]
    for query in ("all_projects=true", f"host={host['name']}"):
        problem(client.get(f"/v1/servers?{query}", headers=a.headers), 403, "admin_required")


# --- delete -------------------------------------------------------------------------------


def test_a_delete_confirmed_by_the_agent_finishes_and_frees_quota(
    client: TestClient, admin: dict[str, str], database_url: str, pool: dict[str, str]
) -> None:
    acct = make_account(client, admin)
    server = boot(client, acct, database_url, flavor="small")
    assert usage(client, acct)["instances"] == 1
    r = client.delete(f"/v1/servers/{server['id']}", headers=acct.headers)
    assert r.status_code == 202
    assert (r.json()["status"], r.json()["task_state"]) == ("DELETING", "deleting")
    observe(client, pool, server["id"], "absent")
    problem(client.get(f"/v1/servers/{server['id']}", headers=acct.headers),
            404, "server_not_found")
    problem(client.delete(f"/v1/servers/{server['id']}", headers=acct.headers),
            404, "server_not_found")
    assert server_ids(client, acct) == []
    assert usage(client, acct) == {"instances": 0, "vcpus": 0, "ram_mb": 0, "disk_gb": 0}
    events = client.get(f"/v1/servers/{server['id']}/events", headers=admin).status_code
    assert events == 404  # deleted servers are gone for everyone's reads


def test_deleting_a_placed_server_waits_for_its_agent_and_is_idempotent(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    sid = boot(client, acct, database_url)["id"]
    host = make_host_row(database_url)
    set_server_state(database_url, sid, host_id=host["id"], status="ACTIVE", task_state=None)
    for _ in range(2):  # the second delete answers the same and changes nothing
        r = client.delete(f"/v1/servers/{sid}", headers=acct.headers)
        assert r.status_code == 202
        assert (r.json()["status"], r.json()["task_state"]) == ("DELETING", "deleting")
    assert usage(client, acct)["instances"] == 1  # still held until the agent confirms
    assert server_ids(client, acct) == [sid]
    events = client.get(f"/v1/servers/{sid}/events", headers=acct.headers).json()["events"]
    assert [(e["action"], e["result"]) for e in events] == [
        ("create", "accepted"), ("schedule", "success"), ("delete", "accepted")]
    problem(client.post(f"/v1/servers/{sid}/actions", json={"action": "stop"},
                        headers=acct.headers), 409, "invalid_state")


# --- actions and the state machine --------------------------------------------------------


def act(client: TestClient, acct: Account, sid: str, **body: Any) -> Any:
    return client.post(f"/v1/servers/{sid}/actions", json=body, headers=acct.headers)


def test_actions_follow_the_state_machine(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    sid = boot(client, acct, database_url)["id"]
    host = make_host_row(database_url)

    # BUILD accepts nothing but delete.
    for action in ({"action": "stop"}, {"action": "start"}, {"action": "reboot"}):
        body = problem(act(client, acct, sid, **action), 409, "invalid_state")
        assert (body["server_status"], body["task_state"]) == ("BUILD", "spawning")

    set_server_state(database_url, sid, host_id=host["id"], status="ACTIVE", task_state=None)
    problem(act(client, acct, sid, action="start"), 409, "invalid_state")
    r = act(client, acct, sid, action="stop")
    assert r.status_code == 202
    assert (r.json()["status"], r.json()["task_state"]) == ("ACTIVE", "powering-off")
    body = problem(act(client, acct, sid, action="reboot"), 409, "invalid_state")
    assert body["task_state"] == "powering-off"  # a transition in flight blocks others

    set_server_state(database_url, sid, status="SHUTOFF", task_state=None)
    problem(act(client, acct, sid, action="stop"), 409, "invalid_state")
    problem(act(client, acct, sid, action="reboot", type="hard"), 409, "invalid_state")
    r = act(client, acct, sid, action="start")
    assert (r.status_code, r.json()["status"], r.json()["task_state"]) == (
        202, "SHUTOFF", "powering-on")

    set_server_state(database_url, sid, status="ACTIVE", task_state=None)
    r = act(client, acct, sid, action="reboot")
    assert (r.json()["status"], r.json()["task_state"]) == ("REBOOT", "rebooting")
    problem(act(client, acct, sid, action="reboot", type="soft"), 409, "invalid_state")
    r = act(client, acct, sid, action="reboot", type="hard")  # escalates a stuck soft reboot
    assert (r.status_code, r.json()["task_state"]) == (202, "rebooting-hard")
    problem(act(client, acct, sid, action="reboot", type="hard"), 409, "invalid_state")

    events = client.get(f"/v1/servers/{sid}/events", headers=acct.headers).json()["events"]
    accepted = [(e["action"], e["details"]) for e in events if e["result"] == "accepted"]
    assert accepted == [
        ("create", events[0]["details"]), ("stop", {}), ("start", {}),
        ("reboot", {"type": "soft"}), ("reboot", {"type": "hard"})]
    # Every refusal is in the history too, in order, with its code.
    refused = [(e["action"], e["details"]) for e in events if e["result"] == "error"]
    assert refused == [(a, {"code": "invalid_state"}) for a in (
        "stop", "start", "reboot", "start", "reboot", "stop", "reboot", "reboot", "reboot")]
    assert all(e["request_id"] and e["user_id"] == acct.user_id
               for e in events if e["action"] != "schedule")


def test_pause_and_unpause_follow_what_the_agent_sees(
    client: TestClient, admin: dict[str, str], pool: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    sid = boot(client, acct, database_url)["id"]
    problem(act(client, acct, sid, action="pause"), 409, "invalid_state")  # BUILD

    def desired() -> str:
        servers = client.get("/v1/agent/servers", headers=pool).json()["servers"]
        value: str = next(d["desired"] for d in servers if d["server_id"] == sid)
        return value

    def shown() -> tuple[str, str | None, str | None]:
        s = client.get(f"/v1/servers/{sid}", headers=acct.headers).json()
        return s["status"], s["task_state"], s["power_state"]

    observe(client, pool, sid, "running")
    r = act(client, acct, sid, action="pause")
    assert (r.status_code, r.json()["status"], r.json()["task_state"]) == (
        202, "ACTIVE", "pausing")
    assert desired() == "paused"
    body = problem(act(client, acct, sid, action="stop"), 409, "invalid_state")
    assert body["task_state"] == "pausing"  # a transition in flight blocks others
    observe(client, pool, sid, "running")  # not paused yet: nothing changes
    assert shown() == ("ACTIVE", "pausing", "running")
    observe(client, pool, sid, "paused")
    assert shown() == ("PAUSED", None, "paused")
    assert [s["id"] for s in client.get("/v1/servers?status=PAUSED",
                                         headers=acct.headers).json()["servers"]] == [sid]
    for action in ({"action": "pause"}, {"action": "start"}, {"action": "reboot"},
                   {"action": "resize", "flavor": "medium"}):
        body = problem(act(client, acct, sid, **action), 409, "invalid_state")
        assert (body["server_status"], body["task_state"]) == ("PAUSED", None)

    r = act(client, acct, sid, action="unpause")
    assert (r.status_code, r.json()["status"], r.json()["task_state"]) == (
        202, "PAUSED", "unpausing")
    assert desired() == "running"
    observe(client, pool, sid, "running")
    assert shown() == ("ACTIVE", None, "running")
    problem(act(client, acct, sid, action="unpause"), 409, "invalid_state")

    # Stop from PAUSED: the agent powers the frozen guest off (it cannot see ACPI).
    act(client, acct, sid, action="pause")
    observe(client, pool, sid, "paused")
    r = act(client, acct, sid, action="stop")
    assert (r.status_code, r.json()["status"], r.json()["task_state"]) == (
        202, "PAUSED", "powering-off")
    assert desired() == "shutoff"
    observe(client, pool, sid, "shutoff")
    assert shown() == ("SHUTOFF", None, "shutoff")

    # Delete from PAUSED, and a guest paused from inside the host (virsh suspend).
    act(client, acct, sid, action="start")
    observe(client, pool, sid, "running")
    observe(client, pool, sid, "paused")
    assert shown() == ("PAUSED", None, "paused")
    r = client.delete(f"/v1/servers/{sid}", headers=acct.headers)
    assert (r.status_code, r.json()["status"]) == (202, "DELETING")
    assert desired() == "absent"
    events = client.get(f"/v1/servers/{sid}/events", headers=acct.headers).json()["events"]
    assert [e["action"] for e in events if e["result"] == "accepted"] == [
        "create", "pause", "unpause", "pause", "stop", "start", "delete"]
    observe(client, pool, sid, "absent")
    assert client.get(f"/v1/servers/{sid}", headers=acct.headers).status_code == 404


def test_a_hard_reboot_over_a_soft_one_is_a_new_operation(
    client: TestClient, admin: dict[str, str], pool: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    sid = boot(client, acct, database_url)["id"]
    observe(client, pool, sid, "running")

    def operation() -> dict[str, Any]:
        servers = client.get("/v1/agent/servers", headers=pool).json()["servers"]
        op: dict[str, Any] = next(d["operation"] for d in servers if d["server_id"] == sid)
        return op

    def done(op: dict[str, Any]) -> dict[str, Any]:
        return {"operation_id": op["id"], "result": "success"}

    act(client, acct, sid, action="reboot", type="soft")
    soft = operation()
    assert (soft["kind"], soft["params"]) == ("reboot", {"type": "soft"})
    act(client, acct, sid, action="reboot", type="hard")
    hard = operation()
    assert (hard["kind"], hard["params"]) == ("reboot", {"type": "hard"})
    assert hard["id"] != soft["id"]
    # The agent's late report of the soft reboot settles nothing; the hard one's does.
    observe(client, pool, sid, "running", operation=done(soft))
    shown = client.get(f"/v1/servers/{sid}", headers=acct.headers).json()
    assert (shown["status"], shown["task_state"]) == ("REBOOT", "rebooting-hard")
    observe(client, pool, sid, "running", operation=done(hard))
    shown = client.get(f"/v1/servers/{sid}", headers=acct.headers).json()
    assert (shown["status"], shown["task_state"]) == ("ACTIVE", None)
    servers = client.get("/v1/agent/servers", headers=pool).json()["servers"]
    assert next(d["operation"] for d in servers if d["server_id"] == sid) is None


def test_bad_action_bodies_are_422(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    sid = boot(client, acct, database_url)["id"]
    for body in ({}, {"action": "resize"}, {"action": "explode"}, {"action": 1},
                 {"action": "reboot", "type": "medium"}, {"action": "stop", "force": True}):
        problem(client.post(f"/v1/servers/{sid}/actions", json=body, headers=acct.headers),
                422, "invalid_input")
    r = client.post(f"/v1/servers/{sid}/actions", content=b"{",
                    headers={**acct.headers, "Content-Type": "application/json"})
    problem(r, 400, "malformed_json")
    problem(act(client, acct, "no-such-server", action="stop"), 404, "server_not_found")


# --- isolation and roles ------------------------------------------------------------------


def test_another_project_gets_404_on_every_read_and_action(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    a = make_account(client, admin)
    b = make_account(client, admin)
    sid = boot(client, a, database_url)["id"]
    set_server_state(database_url, sid, status="ACTIVE", task_state=None)
    calls = [
        ("GET", f"/v1/servers/{sid}", None),
        ("GET", f"/v1/servers/{sid}/events", None),
        ("DELETE", f"/v1/servers/{sid}", None),
        ("POST", f"/v1/servers/{sid}/actions", {"action": "stop"}),
        ("POST", f"/v1/servers/{sid}/actions", {"action": "reboot", "type": "hard"}),
    ]
    for method, url, body in calls:
        problem(client.request(method, url, json=body, headers=b.headers),
                404, "server_not_found")
    assert sid not in server_ids(client, b)
    shown = client.get(f"/v1/servers/{sid}", headers=a.headers).json()
    assert (shown["status"], shown["task_state"]) == ("ACTIVE", None)  # untouched
    events = client.get(f"/v1/servers/{sid}/events", headers=a.headers).json()["events"]
    assert [e["action"] for e in events] == ["create", "schedule"]


def test_readers_read_but_never_write(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    member = make_account(client, admin)
    reader = make_account(client, admin, role="reader", project_id=member.project_id)
    sid = boot(client, member, database_url)["id"]
    image = make_image_row(database_url, member.project_id)
    assert client.get(f"/v1/servers/{sid}", headers=reader.headers).status_code == 200
    assert server_ids(client, reader) == [sid]
    assert client.get(f"/v1/servers/{sid}/events", headers=reader.headers).status_code == 200
    writes = [
        ("POST", "/v1/servers", {"name": "vm", "flavor": "tiny", "image": image}),
        ("DELETE", f"/v1/servers/{sid}", None),
        ("POST", f"/v1/servers/{sid}/actions", {"action": "stop"}),
    ]
    for method, url, body in writes:
        problem(client.request(method, url, json=body, headers=reader.headers),
                403, "read_only_role")
    assert server_ids(client, member) == [sid]


def test_unauthenticated_requests_are_401(client: TestClient) -> None:
    for method, url in (("GET", "/v1/servers"), ("POST", "/v1/servers"),
                        ("GET", "/v1/servers/x"), ("DELETE", "/v1/servers/x")):
        problem(client.request(method, url, json={}), 401, "missing_token")


def test_malformed_ids_in_paths_and_markers_are_422_never_500(
    client: TestClient, admin: dict[str, str]
) -> None:
    # PostgreSQL rejects NUL bytes in text parameters: they must be stopped before SQL.
    for url in ("/v1/servers/%00", "/v1/servers/a%00/events", "/v1/servers?marker=%00",
                f"/v1/servers/{'x' * 10_000}", "/v1/quotas/%00", "/v1/server-groups/%00",
                "/v1/servers?host=%00"):
        problem(client.get(url, headers=admin), 422, "invalid_input")
    problem(client.post("/v1/servers/%00/actions", json={"action": "stop"}, headers=admin),
            422, "invalid_input")
    problem(client.delete("/v1/server-groups/a%01b", headers=admin), 422, "invalid_input")


def test_admin_force_delete_frees_a_down_hosts_server_and_is_refused_while_it_is_up(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    from datetime import UTC, datetime, timedelta

    from api.models import Host
    from tests.agent_factories import db, enroll_host, inventory

    acct = make_account(client, admin)
    zone = unique("az")
    host = enroll_host(client, admin, availability_zone=zone)
    client.put("/v1/agent/inventory", headers=host.headers, json=inventory())
    client.post("/v1/agent/heartbeat", headers=host.headers, json={"observed": []})
    sid = boot(client, acct, database_url, availability_zone=zone)["id"]
    # Host up: only its agent may delete (a forced delete would leak the running domain).
    problem(client.delete(f"/v1/servers/{sid}?force=true", headers=admin), 409, "host_up")
    problem(client.delete(f"/v1/servers/{sid}?force=true", headers=acct.headers),
            403, "admin_required")
    def stopped() -> None:
        with db(client) as s:  # the host stops sending heartbeats
            h = s.get(Host, host.id)
            assert h is not None
            h.last_heartbeat_at = datetime.now(UTC) - timedelta(hours=1)
    hold_silence(host.id, stopped)
    r = client.delete(f"/v1/servers/{sid}?force=true", headers=admin)
    assert r.status_code == 202, r.text
    problem(client.get(f"/v1/servers/{sid}", headers=acct.headers), 404, "server_not_found")
    assert usage(client, acct)["instances"] == 0
    shown = client.get(f"/v1/hosts/{host.id}", headers=admin).json()
    assert all(rc["allocated"] == 0 for rc in shown["resources"].values()), shown
