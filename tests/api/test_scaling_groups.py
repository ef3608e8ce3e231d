"""Scaling groups through HTTP: members are ordinary servers, manual scaling, scale-in policy
and protection, deletion, health replacement, refusals with backoff, tenant isolation.

The reconciler's pass is run explicitly (``run``), as the lease holder of the test app, so every
step is deterministic; its background loop in the app may run passes too, which changes
nothing a test asserts (passes are idempotent).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.db import utcnow
from api.models import Host, Lease
from api.scaling import reconciler
from tests.agent_factories import EnrolledHost, db, enroll_host, hold_silence, inventory, observe
from tests.catalog_rows import make_image_row
from tests.factories import Account, make_account, make_flavor, unique

pytestmark = pytest.mark.usefixtures("pool", "_tidy")

# Groups a test created (id, owner's headers) and the agents of hosts tests enrolled (name ->
# headers): ``_tidy`` deletes the groups after each test and confirms their servers gone, so
# no group of a finished test keeps its reconciler writing while later tests count rows.
_GROUPS: list[tuple[str, dict[str, str]]] = []
_AGENTS: dict[str, dict[str, str]] = {}


@pytest.fixture
def _tidy(client: TestClient, admin: dict[str, str], pool: dict[str, str]) -> Iterator[None]:
    _AGENTS["pool-host"] = pool
    yield
    for group_id, headers in _GROUPS:
        group = client.get(f"/v1/scaling-groups/{group_id}", headers=headers)
        if group.status_code != 200:
            continue
        client.delete(f"/v1/scaling-groups/{group_id}", headers=headers)
        ids = {m["server_id"] for m in group.json()["members"]} | {
            a for act in client.get(f"/v1/scaling-groups/{group_id}/activities",
                                    headers=headers, params={"limit": 1000}).json()[
                "activities"] for a in act["created"]}
        for server_id in ids:
            server = client.get(f"/v1/servers/{server_id}", headers=admin)
            if server.status_code != 200:
                continue
            if server.json()["host"] in _AGENTS:
                observe(client, _AGENTS[server.json()["host"]], server_id, "absent")
            else:  # placed on another test's host (shared pool), whose agent may be gone
                client.delete(f"/v1/servers/{server_id}", headers=admin,
                              params={"force": "true"})
    run(client)
    for group_id, headers in _GROUPS:
        gone = client.get(f"/v1/scaling-groups/{group_id}", headers=headers)
        assert gone.status_code == 404, gone.text
    _GROUPS.clear()


def run(client: TestClient, **settings: Any) -> reconciler.PassResult:
    """One reconciler pass as the app's lease holder (``settings`` override the app's)."""
    app_settings = client.app.state.settings  # type: ignore[attr-defined]
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    holder = client.app.state.scaling_holder  # type: ignore[attr-defined]
    merged = app_settings.model_copy(update=settings) if settings else app_settings
    result = reconciler.run_pass(factory, merged, holder)
    for _ in range(10):
        if result.leader:
            break
        # Another API process of this test session (live_api) leads: let its lease lapse.
        # It may take the lapsed lease back first (its own loop runs meanwhile): try again.
        with db(client) as s:
            s.execute(update(Lease).where(Lease.name == reconciler.LEASE)
                      .values(expires_at=utcnow() - timedelta(seconds=1)))
        result = reconciler.run_pass(factory, merged, holder)
    assert result.leader
    return result


def make_group(client: TestClient, acct: Account, database_url: str, *,
               flavor: str = "tiny", **body: Any) -> dict[str, Any]:
    launch = {"flavor": flavor, "image": make_image_row(database_url, acct.project_id)}
    launch |= body.pop("launch", {})
    r = client.post("/v1/scaling-groups", headers=acct.headers,
                    json={"name": unique("web"), "launch": launch, "max_size": 10} | body)
    assert r.status_code == 201, r.text
    group: dict[str, Any] = r.json()
    _GROUPS.append((group["id"], acct.headers))
    return group


def show(client: TestClient, acct: Account, group_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/scaling-groups/{group_id}", headers=acct.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def activities(client: TestClient, acct: Account, group_id: str) -> list[dict[str, Any]]:
    r = client.get(f"/v1/scaling-groups/{group_id}/activities", headers=acct.headers)
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["activities"]
    return found


def set_desired(client: TestClient, acct: Account, group_id: str, desired: int) -> None:
    r = client.patch(f"/v1/scaling-groups/{group_id}", headers=acct.headers,
                     json={"desired": desired})
    assert r.status_code == 200, r.text


def problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    return body


def test_members_are_ordinary_servers_named_after_the_group_and_spread_apart(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    group = make_group(client, acct, database_url, min_size=2, max_size=4)
    assert (group["desired"], group["members"], group["status"]) == (2, [], "active")
    assert group["launch"]["server_group_id"] is not None

    run(client)
    group = show(client, acct, group["id"])
    names = sorted(m["name"] for m in group["members"])
    assert names == [f"{group['name']}-1", f"{group['name']}-2"]
    # Ordinary servers of the project, in the group's soft anti-affinity server group, counted
    # by the quota.
    servers = client.get("/v1/servers", headers=acct.headers).json()["servers"]
    assert sorted(s["name"] for s in servers) == names
    assert {s["server_group_id"] for s in servers} == {group["launch"]["server_group_id"]}
    sg = client.get(f"/v1/server-groups/{group['launch']['server_group_id']}",
                    headers=acct.headers).json()
    assert sg["policy"] == "soft-anti-affinity"
    quota = client.get(f"/v1/quotas/{acct.project_id}", headers=acct.headers).json()
    assert quota["usage"]["instances"] == 2
    # Each launch is an activity naming the server it created.
    launches = [a for a in activities(client, acct, group["id"]) if a["kind"] == "launch"]
    assert sorted(a["created"][0] for a in launches) == sorted(
        m["server_id"] for m in group["members"])
    # A second pass changes nothing.
    run(client)
    assert len(show(client, acct, group["id"])["members"]) == 2


def test_manual_desired_scales_out_and_in_oldest_first_never_a_protected_member(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    group = make_group(client, acct, database_url, min_size=0, desired=4)
    run(client)
    members = sorted(show(client, acct, group["id"])["members"], key=lambda m: m["seq"])
    assert [m["seq"] for m in members] == [1, 2, 3, 4]
    oldest = members[0]["server_id"]
    r = client.patch(f"/v1/scaling-groups/{group['id']}/members/{oldest}",
                     headers=acct.headers, json={"protected": True})
    assert r.status_code == 200 and r.json()["protected"] is True

    set_desired(client, acct, group["id"], 2)
    run(client)
    left = sorted(m["seq"] for m in show(client, acct, group["id"])["members"])
    # Oldest first, but member 1 is protected: members 2 and 3 go.
    assert left == [1, 4]
    scale_in = next(a for a in activities(client, acct, group["id"]) if a["kind"] == "scale_in")
    assert sorted(scale_in["deleted"]) == sorted(m["server_id"] for m in members[1:3])
    assert scale_in["rule"] == "oldest_first"
    statuses = {s["id"]: s["status"] for s in
                client.get("/v1/servers", headers=acct.headers).json()["servers"]}
    assert statuses[members[1]["server_id"]] == "DELETING"

    # Down to 0: only the protected member stays, and the activity says so.
    set_desired(client, acct, group["id"], 0)
    run(client)
    assert [m["seq"] for m in show(client, acct, group["id"])["members"]] == [1]
    latest = activities(client, acct, group["id"])[0]
    assert latest["result"] == "partial"
    assert "1 protected member(s) kept" in latest["cause"]

    # Back up: new members get new sequence numbers, never a reused name.
    set_desired(client, acct, group["id"], 2)
    run(client)
    assert sorted(m["seq"] for m in show(client, acct, group["id"])["members"]) == [1, 5]


def test_newest_first_scale_in_policy(client: TestClient, admin: dict[str, str],
                                      database_url: str) -> None:
    acct = make_account(client, admin)
    group = make_group(client, acct, database_url, desired=3,
                       scale_in_policy="newest_first")
    run(client)
    set_desired(client, acct, group["id"], 1)
    run(client)
    assert [m["seq"] for m in show(client, acct, group["id"])["members"]] == [1]


def test_deleting_a_group_deletes_its_members_then_the_group(
    client: TestClient, admin: dict[str, str], database_url: str, pool: dict[str, str]
) -> None:
    acct = make_account(client, admin)
    group = make_group(client, acct, database_url, desired=2)
    run(client)
    ids = [m["server_id"] for m in show(client, acct, group["id"])["members"]]
    r = client.delete(f"/v1/scaling-groups/{group['id']}", headers=acct.headers)
    assert r.status_code == 202 and r.json()["status"] == "deleting"
    for sid in ids:
        assert client.get(f"/v1/servers/{sid}", headers=acct.headers).json()["status"] == \
            "DELETING"
    problem(client.patch(f"/v1/scaling-groups/{group['id']}", headers=acct.headers,
                         json={"desired": 1}), 409, "scaling_group_deleting")
    run(client)  # the members still exist: the group waits for them
    assert show(client, acct, group["id"])["status"] == "deleting"
    for sid in ids:
        observe(client, pool, sid, "absent")  # the agent confirms each delete
    run(client)
    problem(client.get(f"/v1/scaling-groups/{group['id']}", headers=acct.headers), 404,
            "scaling_group_not_found")
    problem(client.get(f"/v1/server-groups/{group['launch']['server_group_id']}",
                       headers=acct.headers), 404, "server_group_not_found")
    assert client.get("/v1/servers", headers=acct.headers).json()["servers"] == []


def test_bad_input_is_a_4xx_problem_and_writes_nothing(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    image = make_image_row(database_url, acct.project_id)
    base = {"name": "web", "launch": {"flavor": "tiny", "image": image}, "max_size": 3}
    url = "/v1/scaling-groups"
    problem(client.post(url, headers=acct.headers, json=base | {"min_size": 4}), 422,
            "scaling_size_invalid")
    problem(client.post(url, headers=acct.headers, json=base | {"desired": 5}), 422,
            "scaling_size_invalid")
    for bad in ({"name": "Web_1"}, {"max_size": -1}, {"scale_in_policy": "random"},
                {"policy": {"target": 0}}, {"policy": {"target": 50, "metric": "x"}},
                {"scheduled_actions": [{"name": "a", "cron": "0 9 * *", "desired": 1}]},
                {"scheduled_actions": [{"name": "a", "cron": "0 9 * * *"}]},
                {"scheduled_actions": [{"name": "a", "cron": "0 9 * * *", "min_size": 3,
                                        "max_size": 2}]},
                {"launch": {"flavor": "tiny"}}, {"surprise": 1}):
        problem(client.post(url, headers=acct.headers, json=base | bad), 422, "invalid_input")
    problem(client.post(url, headers=acct.headers,
                        json=base | {"launch": {"flavor": "no-such", "image": image}}),
            404, "flavor_not_found")
    problem(client.post(url, headers=acct.headers,
                        json=base | {"launch": {"flavor": "tiny", "image": image,
                                                "key_name": "nope"}}),
            404, "keypair_not_found")
    assert client.get(url, headers=acct.headers).json()["scaling_groups"] == []
    assert client.get("/v1/server-groups", headers=acct.headers).json()["server_groups"] == []

    created = client.post(url, headers=acct.headers, json=base)
    assert created.status_code == 201
    _GROUPS.append((created.json()["id"], acct.headers))
    problem(client.post(url, headers=acct.headers, json=base), 409,
            "scaling_group_name_in_use")
    gid = created.json()["id"]
    problem(client.patch(f"{url}/{gid}", headers=acct.headers, json={"desired": 4}), 422,
            "scaling_size_invalid")
    problem(client.patch(f"{url}/{gid}/members/{unique('x')}", headers=acct.headers,
                         json={"protected": True}), 404, "scaling_member_not_found")
    # Lowering max moves desired with it.
    r = client.patch(f"{url}/{gid}", headers=acct.headers, json={"max_size": 0})
    assert r.status_code == 200 and (r.json()["desired"], r.json()["max_size"]) == (0, 0)


def test_another_project_gets_404_and_readers_get_403(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    owner = make_account(client, admin)
    group = make_group(client, owner, database_url, desired=1)
    run(client)
    member = show(client, owner, group["id"])["members"][0]["server_id"]
    other = make_account(client, admin)
    url = f"/v1/scaling-groups/{group['id']}"
    for r in (client.get(url, headers=other.headers),
              client.patch(url, headers=other.headers, json={"desired": 0}),
              client.delete(url, headers=other.headers),
              client.get(f"{url}/activities", headers=other.headers),
              client.patch(f"{url}/members/{member}", headers=other.headers,
                           json={"protected": True})):
        problem(r, 404, "scaling_group_not_found")
    assert client.get("/v1/scaling-groups", headers=other.headers).json() == {
        "scaling_groups": []}
    reader = make_account(client, admin, role="reader", project_id=owner.project_id)
    assert client.get(url, headers=reader.headers).status_code == 200
    problem(client.patch(url, headers=reader.headers, json={"desired": 0}), 403,
            "read_only_role")
    assert show(client, owner, group["id"])["desired"] == 1


def zone_host(client: TestClient, admin: dict[str, str], zone: str, *,
              disk_gb: int) -> EnrolledHost:
    """A live host alone in ``zone`` with ``disk_gb`` of disk (the scarce resource)."""
    host = enroll_host(client, admin, availability_zone=zone)
    r = client.put("/v1/agent/inventory", headers=host.headers,
                   json=inventory(vcpus=64, ram_mb=65536, disk_gb=disk_gb))
    assert r.status_code == 200, r.text
    r = client.post("/v1/agent/heartbeat", headers=host.headers, json={"observed": []})
    assert r.status_code == 200, r.text
    _AGENTS[host.name] = host.headers
    return host


def test_capacity_exhausted_mid_scale_out_records_the_refusal_and_completes_later(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    # Two hosts in a zone of their own, each with room for two 10 GB members; one disabled.
    zone = unique("az")
    flavor = make_flavor(client, admin, disk_gb=10)
    first = zone_host(client, admin, zone, disk_gb=20)
    second = zone_host(client, admin, zone, disk_gb=20)
    r = client.patch(f"/v1/hosts/{second.id}", headers=admin, json={"enabled": False})
    assert r.status_code == 200, r.text
    acct = make_account(client, admin)
    group = make_group(client, acct, database_url, flavor=flavor["name"], desired=4,
                       launch={"availability_zone": zone})
    fast = {"scaling_retry_base_seconds": 0.001, "scaling_retry_max_seconds": 0.001}

    result = run(client, **fast)
    assert result.failures == 1
    group = show(client, acct, group["id"])
    assert len(group["members"]) == 2  # what fits
    assert group["retry_at"] is not None
    failure = next(a for a in activities(client, acct, group["id"]) if a["kind"] == "failure")
    assert failure["rule"] == "no_valid_host"
    assert failure["error"]["code"] == "no_valid_host"
    assert sum(failure["error"]["refusals_by_filter"].values()) >= 1
    assert failure["details"]["members"] == 2
    assert "Retry in" in failure["cause"]

    # Another pass fails the same way, one attempt later (the backoff grows).
    run(client, **fast)
    failures = [a for a in activities(client, acct, group["id"]) if a["kind"] == "failure"]
    assert [f["details"]["attempt"] for f in failures[:2]] == [2, 1]
    # Refusals repeat while room is short; the log keeps the newest (here 3) activities.
    run(client, **fast, scaling_activities_kept=3)
    kept = activities(client, acct, group["id"])
    assert [a["details"].get("attempt") for a in kept] == [3, 2, 1]

    # The admin enables the host: the next pass completes the scale-out.
    r = client.patch(f"/v1/hosts/{second.id}", headers=admin, json={"enabled": True})
    assert r.status_code == 200, r.text
    r = client.post("/v1/agent/heartbeat", headers=second.headers, json={"observed": []})
    assert r.status_code == 200
    run(client, **fast)
    group = show(client, acct, group["id"])
    assert len(group["members"]) == 4
    assert group["retry_at"] is None
    assert first.id != second.id


def test_quota_exhausted_mid_scale_out_says_the_numbers_and_completes_when_raised(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    r = client.put(f"/v1/quotas/{acct.project_id}", headers=admin, json={"instances": 2})
    assert r.status_code == 200, r.text
    group = make_group(client, acct, database_url, desired=3)
    fast = {"scaling_retry_base_seconds": 0.001, "scaling_retry_max_seconds": 0.001}
    run(client, **fast)
    assert len(show(client, acct, group["id"])["members"]) == 2
    failure = next(a for a in activities(client, acct, group["id"]) if a["kind"] == "failure")
    assert (failure["error"]["code"], failure["error"]["resource"], failure["error"]["used"],
            failure["error"]["limit"], failure["error"]["requested"]) == (
        "quota_exceeded", "instances", 2, 2, 1)
    r = client.put(f"/v1/quotas/{acct.project_id}", headers=admin, json={"instances": 3})
    assert r.status_code == 200, r.text
    run(client, **fast)
    assert len(show(client, acct, group["id"])["members"]) == 3


def test_unhealthy_members_are_replaced_and_the_activity_says_why(
    client: TestClient, admin: dict[str, str], database_url: str, pool: dict[str, str]
) -> None:
    zone = unique("az")
    host = zone_host(client, admin, zone, disk_gb=100)
    spare = zone_host(client, admin, zone, disk_gb=100)
    acct = make_account(client, admin)
    group = make_group(client, acct, database_url, desired=3,
                       launch={"availability_zone": zone})
    run(client)
    members = {m["seq"]: m["server_id"] for m in show(client, acct, group["id"])["members"]}
    on_host = {s["id"]: s for s in client.get("/v1/servers", headers=admin,
                                              params={"host": host.name}).json()["servers"]}

    # 1: its spawn failed (ERROR); 2: the user deleted it behind the group's back.
    first = host if members[1] in on_host else spare
    observe(client, first.headers, members[1], "error", message="boom")
    r = client.delete(f"/v1/servers/{members[2]}", headers=acct.headers)
    assert r.status_code == 202
    run(client)
    group_now = show(client, acct, group["id"])
    seqs = sorted(m["seq"] for m in group_now["members"])
    assert seqs == [3, 4, 5]
    replaced = {a["deleted"][0]: a for a in activities(client, acct, group["id"])
                if a["kind"] == "replace"}
    assert replaced[members[1]]["rule"] == "error"
    assert "is in ERROR" in replaced[members[1]]["cause"]
    assert replaced[members[2]]["rule"] == "deleted"
    # The broken server is being deleted by the group.
    assert client.get(f"/v1/servers/{members[1]}", headers=acct.headers).json()["status"] == \
        "DELETING"

    def agent_of(server_id: str) -> EnrolledHost:
        name = client.get(f"/v1/servers/{server_id}", headers=admin).json()["host"]
        return host if name == host.name else spare

    # 4: its guest shut off on the host (the agent reports it SHUTOFF).
    shut = members[3]
    observe(client, agent_of(shut).headers, shut, "running")
    observe(client, agent_of(shut).headers, shut, "shutoff")
    run(client)
    replaced = {a["deleted"][0]: a for a in activities(client, acct, group["id"])
                if a["kind"] == "replace"}
    assert replaced[shut]["rule"] == "shutoff"
    assert "is SHUTOFF" in replaced[shut]["cause"]
    assert len(show(client, acct, group["id"])["members"]) == 3

    # Its domain was killed on the host: the agent reports the unexpected stop and starts it
    # again (the server stays ACTIVE), and the group replaces it all the same.
    killed = next(m["server_id"] for m in show(client, acct, group["id"])["members"]
                  if m["seq"] == 4)
    observe(client, agent_of(killed).headers, killed, "running")
    r = observe(client, agent_of(killed).headers, killed, "shutoff", unexpected_stop="destroyed")
    assert r["status"] == "ACTIVE"
    run(client)
    replaced = {a["deleted"][0]: a for a in activities(client, acct, group["id"])
                if a["kind"] == "replace"}
    assert replaced[killed]["rule"] == "domain_stopped"
    assert "domain stopped without being asked (libvirt: destroyed)" in replaced[killed]["cause"]
    assert client.get(f"/v1/servers/{killed}", headers=acct.headers).json()["status"] == \
        "DELETING"
    live = show(client, acct, group["id"])["members"]
    assert len(live) == 3 and killed not in {m["server_id"] for m in live}

    # 5: its host goes down (no heartbeat for an hour): force-deleted and replaced.
    victim = show(client, acct, group["id"])["members"][0]["server_id"]
    victim_host = agent_of(victim)
    def silent() -> None:
        with db(client) as s:
            s.execute(update(Host).where(Host.id == victim_host.id)
                      .values(last_heartbeat_at=utcnow() - timedelta(hours=1)))
    hold_silence(victim_host.id, silent)
    run(client)
    replaced = {a["deleted"][0]: a for a in activities(client, acct, group["id"])
                if a["kind"] == "replace"}
    assert replaced[victim]["rule"] == "host_down"
    assert f"host {victim_host.name} is down" in replaced[victim]["cause"]
    problem(client.get(f"/v1/servers/{victim}", headers=acct.headers), 404, "server_not_found")
    live = show(client, acct, group["id"])["members"]
    assert len(live) == 3 and victim not in {m["server_id"] for m in live}


def test_usage_reports_group_by_scaling_group(
    client: TestClient, admin: dict[str, str], database_url: str, pool: dict[str, str]
) -> None:
    acct = make_account(client, admin)
    group = make_group(client, acct, database_url, desired=2)
    run(client)
    members = [m["server_id"] for m in show(client, acct, group["id"])["members"]]
    loose = client.post("/v1/servers", headers=acct.headers, json={
        "name": "loose", "flavor": "tiny", "image": make_image_row(database_url,
                                                                   acct.project_id)})
    assert loose.status_code == 202, loose.text
    for sid in [*members, loose.json()["id"]]:
        observe(client, pool, sid, "running")
    start = (utcnow() - timedelta(hours=1)).isoformat()
    end = (utcnow() + timedelta(hours=1)).isoformat()
    by_server = client.get("/v1/usage", headers=acct.headers,
                           params={"start": start, "end": end, "group_by": "server"}).json()
    r = client.get("/v1/usage", headers=acct.headers,
                   params={"start": start, "end": end, "group_by": "scaling_group"})
    assert r.status_code == 200, r.text
    [project] = r.json()["projects"]
    assert "servers" not in project
    groups = {g["name"]: g for g in project["scaling_groups"]}
    assert set(groups) == {group["name"], None}
    assert (groups[group["name"]]["servers"], groups[None]["servers"]) == (2, 1)
    assert groups[group["name"]]["scaling_group_id"] == group["id"]
    # The group's lines add up the servers' lines of the same report by server.
    servers = {s["server_id"]: s for s in by_server["projects"][0]["servers"]}
    fields = [k for k in groups[None] if k.endswith("_seconds")]
    assert "server_seconds" in fields
    for field in fields:
        assert groups[group["name"]][field] == sum(servers[s][field] for s in members)
    assert sum(Decimal(g["cost"]) for g in groups.values()) == Decimal(project["usage_cost"])
