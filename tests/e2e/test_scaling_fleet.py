"""Scaling groups end to end: a real API process, real agents on libvirt's test driver, the
guest metrics they report, and the reconciler deciding on them.

The agents' test-only simulated load file (``simulated_load_file``, docs/operations.md) gives
the members a CPU load; the reconciler's passes are run by the test as the lease holder
(tests/api/test_scaling_groups.py ``run``), so nothing waits for the 10 s pass interval. The
policy's windows are short so the whole cycle takes seconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from compute_agent.agent import Agent, ensure_enrolled
from compute_agent.hypervisor import Hypervisor, write_test_node_xml
from tests.api.test_scaling_groups import run
from tests.e2e.stack import (
    ADMIN,
    WAIT,
    ThreadAgent,
    agent_settings,
    create_server,
    enrollment_token,
    host,
    wait_status,
    wait_until,
)
from tests.factories import Account, unique

pytestmark = [pytest.mark.libvirt]


@pytest.fixture
def fleet(api: str, tmp_path: Path) -> Iterator[tuple[Path, list[ThreadAgent]]]:
    """Two agents in a zone of their own, reporting guest metrics every 0.5 s, both reading
    one simulated load file."""
    load_file = tmp_path / "load.json"
    az = unique("az")
    agents = []
    for i in range(2):
        home, name = tmp_path / f"host{i}", unique("sim")
        home.mkdir()
        uri = write_test_node_xml(home / "node.xml", 16, 32768)
        settings = agent_settings(api, home, name, uri, disk_gb=100, availability_zone=az,
                                  guest_metrics_interval=0.5, simulated_load_file=load_file)
        cred = ensure_enrolled(settings, "qemu", token=enrollment_token(api))
        a = Agent(settings, cred, Hypervisor(uri), "qemu")
        thread = threading.Thread(target=a.run, name=f"agent-{name}", daemon=True)
        thread.start()
        wait_until(lambda c=cred: host(api, c.host_id)["state"] == "up", WAIT, "host up")
        agents.append(ThreadAgent(a, thread, cred.host_id, name, az))
    yield load_file, agents
    for agent in agents:
        if agent.thread.is_alive():
            agent.stop()


def _group(api: str, member: Account, group_id: str) -> dict[str, Any]:
    r = httpx.get(f"{api}/v1/scaling-groups/{group_id}", headers=member.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _activities(api: str, member: Account, group_id: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{api}/v1/scaling-groups/{group_id}/activities", headers=member.headers,
                  params={"limit": 1000})
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["activities"]
    return found


def _reconcile_until(client: TestClient, check: Callable[[], bool], what: str,
                     **settings: Any) -> None:
    """Run reconciler passes (every 0.3 s) until ``check`` holds."""
    deadline = time.monotonic() + WAIT
    while True:
        run(client, **settings)
        if check():
            return
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.3)


def _stop_events(api: str, member: Account, server_id: str) -> list[dict[str, Any]]:
    """The server's ``domain_stopped_unexpectedly`` events, as its owner reads them."""
    r = httpx.get(f"{api}/v1/servers/{server_id}/events", headers=member.headers)
    assert r.status_code == 200, r.text
    return [e for e in r.json()["events"] if e["action"] == "domain_stopped_unexpectedly"]


def _create(api: str, member: Account, image_id: str, az: str, **body: Any) -> dict[str, Any]:
    r = httpx.post(f"{api}/v1/scaling-groups", headers=member.headers, json={
        "name": unique("web"), "launch": {"flavor": "tiny", "image": image_id,
                                          "availability_zone": az}} | body)
    assert r.status_code == 201, r.text
    group: dict[str, Any] = r.json()
    return group


def _active(group: dict[str, Any]) -> int:
    return sum(1 for m in group["members"] if m["status"] == "ACTIVE")


def test_target_tracking_scales_out_under_load_and_back_after_the_window(
    api: str, member: Account, image_id: str, client: TestClient,
    fleet: tuple[Path, list[ThreadAgent]],
) -> None:
    load_file, agents = fleet
    group = _create(api, member, image_id, agents[0].az, min_size=1, max_size=3, desired=1,
                    policy={"target": 50, "tolerance": 0.1, "warmup_s": 1, "window_s": 10,
                            "scale_out_cooldown_s": 0, "scale_in_stabilization_s": 5})
    gid, name = group["id"], group["name"]
    # Every member this group may have runs at 90 % of its vCPU.
    load_file.write_text(json.dumps({f"{name}-{i}": 90 for i in range(1, 10)}))
    _reconcile_until(client, lambda: _active(_group(api, member, gid)) == 3,
                     "3 ACTIVE members under load")
    outs = [a for a in _activities(api, member, gid) if a["kind"] == "scale_out"]
    assert outs and all(a["rule"] in ("target_tracking", "clamp_max") for a in outs), outs
    first = outs[-1]  # oldest first: 1 member at 90 %: ceil(1 x 90 / 50) = 2
    assert (first["from_desired"], first["to_desired"]) == (1, 2), first
    assert abs(first["details"]["observed"] - 90) < 2, first
    assert outs[0]["to_desired"] == 3

    # The load stops: the window's average falls, and after the stabilisation window the
    # group scales back to one member (oldest first: the last one launched stays).
    load_file.write_text("{}")
    _reconcile_until(client, lambda: len(_group(api, member, gid)["members"]) == 1,
                     "scale-in to one member")
    ins = [a for a in _activities(api, member, gid) if a["kind"] == "scale_in"]
    assert any(a["from_desired"] == 3 for a in ins), ins
    assert min(a["to_desired"] for a in ins) == 1, ins
    assert [m["seq"] for m in _group(api, member, gid)["members"]] == [3]

    r = httpx.delete(f"{api}/v1/scaling-groups/{gid}", headers=member.headers)
    assert r.status_code == 202
    _reconcile_until(client, lambda: httpx.get(f"{api}/v1/scaling-groups/{gid}",
                                               headers=member.headers).status_code == 404,
                     "the group gone")


def test_a_down_hosts_member_is_replaced_and_the_activity_says_why(
    api: str, member: Account, image_id: str, client: TestClient,
    fleet: tuple[Path, list[ThreadAgent]],
) -> None:
    _, agents = fleet
    group = _create(api, member, image_id, agents[0].az, min_size=2, max_size=2)
    gid = group["id"]
    _reconcile_until(client, lambda: _active(_group(api, member, gid)) == 2,
                     "2 ACTIVE members")
    members = _group(api, member, gid)["members"]
    by_host: dict[str, str] = {}
    for m in members:
        server = httpx.get(f"{api}/v1/servers/{m['server_id']}", headers=ADMIN).json()
        by_host[m["server_id"]] = server["host"]
    # Soft anti-affinity spread them over the two hosts.
    assert sorted(by_host.values()) == sorted(a.name for a in agents)

    # A domain killed on the host behind the agent's back (through the agent's own test
    # connection: the test driver's state is per connection). The agent's level-triggered
    # reconcile reports the unexpected stop before it starts it again: the server's events say
    # what happened (whether the agent's restart or the group's replacement comes first is a
    # race: a live API process may hold the reconciler lease while this test waits) ...
    killed = members[0]["server_id"]
    owner = next(a for a in agents if a.name == by_host[killed])
    owner.agent.hv.domain(killed).destroy()
    stops = wait_until(lambda: _stop_events(api, member, killed), WAIT,
                       "the unexpected stop in the member's events")
    assert [e["details"]["reason"] for e in stops] == ["destroyed"], stops
    assert "libvirt: destroyed" in stops[0]["message"] and "host_id" not in stops[0]["details"]

    # ... and the group, for which a member is cattle, replaces it on its next pass: the
    # activity names the rule and libvirt's reason; the killed server is deleted.
    _reconcile_until(
        client, lambda: any(a["kind"] == "replace" and a["deleted"] == [killed]
                            for a in _activities(api, member, gid)),
        "the killed member replaced")
    why = next(a for a in _activities(api, member, gid) if a["deleted"] == [killed])
    assert why["rule"] == "domain_stopped", why
    assert "domain stopped without being asked (libvirt: destroyed)" in why["cause"], why
    _reconcile_until(client, lambda: _active(_group(api, member, gid)) == 2
                     and killed not in {m["server_id"] for m in _group(api, member, gid)
                                        ["members"]},
                     "2 ACTIVE members again, without the killed one")
    wait_until(lambda: httpx.get(f"{api}/v1/servers/{killed}", headers=member.headers)
               .status_code == 404 or None, WAIT, "the killed member deleted")

    # A member's host goes down (its agent stops): its members are force-deleted and replaced
    # on the other host. Down here means 3 s without a heartbeat. The killed member's
    # replacement may have gone to either host (while the killed one was still deleting, soft
    # anti-affinity saw one member on each), so the victim is the host of a current member.
    victim, victim_host = next(
        (m["server_id"], httpx.get(f"{api}/v1/servers/{m['server_id']}",
                                   headers=ADMIN).json()["host"])
        for m in _group(api, member, gid)["members"])
    victim_agent = next(a for a in agents if a.name == victim_host)
    survivor = next(a for a in agents if a is not victim_agent)
    victim_agent.stop()
    fast_down = {"host_down_after_seconds": 3}
    _reconcile_until(
        client, lambda: any(a["kind"] == "replace" and a["deleted"] == [victim]
                            for a in _activities(api, member, gid)),
        "the down host's member replaced", **fast_down)
    _reconcile_until(client, lambda: _active(_group(api, member, gid)) == 2,
                     "2 ACTIVE members on the live host", **fast_down)
    why = next(a for a in _activities(api, member, gid) if a["deleted"] == [victim])
    assert why["rule"] == "host_down" and f"host {victim_agent.name} is down" in why["cause"]
    assert httpx.get(f"{api}/v1/servers/{victim}", headers=member.headers).status_code == 404
    for m in _group(api, member, gid)["members"]:
        server = httpx.get(f"{api}/v1/servers/{m['server_id']}", headers=ADMIN).json()
        assert server["host"] == survivor.name

    r = httpx.delete(f"{api}/v1/scaling-groups/{gid}", headers=member.headers)
    assert r.status_code == 202
    _reconcile_until(client, lambda: httpx.get(f"{api}/v1/scaling-groups/{gid}",
                                               headers=member.headers).status_code == 404,
                     "the group gone", **fast_down)


def test_an_ordinary_servers_killed_domain_is_restarted_in_place(
    api: str, member: Account, image_id: str, client: TestClient,
    fleet: tuple[Path, list[ThreadAgent]],
) -> None:
    _, agents = fleet
    sid = create_server(api, member.headers, "tiny", image_id,
                        availability_zone=agents[0].az)["id"]
    wait_status(api, member.headers, sid, "ACTIVE")
    name = httpx.get(f"{api}/v1/servers/{sid}", headers=ADMIN).json()["host"]
    owner = next(a for a in agents if a.name == name)

    # Killed behind the agent's back: reported (an event on the server), started again; a
    # server of no group is healed in place, whatever the reconciler's passes.
    owner.agent.hv.domain(sid).destroy()
    wait_until(lambda: _stop_events(api, member, sid) or None, WAIT, "the stop reported")
    wait_until(lambda: owner.agent.hv.domain(sid).isActive() == 1 or None, WAIT,
               "the killed domain running again")
    for _ in range(3):
        run(client)
    body = wait_status(api, member.headers, sid, "ACTIVE")
    assert body["id"] == sid
    assert [e["details"]["reason"] for e in _stop_events(api, member, sid)] == ["destroyed"]
    assert owner.agent.hv.domain(sid).isActive() == 1

    r = httpx.delete(f"{api}/v1/servers/{sid}", headers=member.headers)
    assert r.status_code == 202, r.text
    wait_until(lambda: httpx.get(f"{api}/v1/servers/{sid}", headers=member.headers)
               .status_code == 404 or None, WAIT, "the server deleted")
