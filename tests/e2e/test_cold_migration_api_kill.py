"""kill -9 of the API at each step of a cold migration, then the API restarted on the same
database and data directory: the move finishes, the server ends in one place (ACTIVE or
SHUTOFF on the destination, running there and nowhere else when ACTIVE), no allocation is
left on the source, the relayed files are removed and the migration record is ``completed``.

Two real agents (libvirt test-driver nodes) run in this process as ``GatedAgent``s
(tests/e2e/gated_agent.py): each test holds one agent at one point of the move, checks the
migration's step through the API, kills the API process with SIGKILL, starts it again and
lets the agent go. The last test does the same while a drain moves every server of a host.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.config import Settings
from compute_agent.spec import InstancePaths
from tests.e2e.gated_agent import GatedAgent
from tests.e2e.stack import (
    ADMIN,
    WAIT,
    ApiProcess,
    ThreadAgent,
    action,
    allocated,
    create_server,
    server,
    start_test_driver_agent,
    wait_status,
    wait_until,
)
from tests.e2e.two_hosts import TINY
from tests.factories import Account, unique

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]



@pytest.fixture(scope="module")
def api(api_process: ApiProcess) -> str:
    """The killable process is the module's API (``member`` and ``image_id`` use it)."""
    return api_process.url


@pytest.fixture(scope="module")
def pair(api_process: ApiProcess,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ThreadAgent]]:
    """Two gated agents in their own zone; every gate is released when the module ends."""
    zone = unique("az")
    home = tmp_path_factory.mktemp("hosts")
    agents = [start_test_driver_agent(api_process.url, home / name, network="none", az=zone,
                                      agent_class=GatedAgent) for name in ("a", "b")]
    yield agents
    for a in agents:
        gated(a).gate.release.set()
        a.agent.stop()
    for a in agents:
        a.stop()


def gated(a: ThreadAgent) -> GatedAgent:
    assert isinstance(a.agent, GatedAgent)
    return a.agent


def migration(api: str, sid: str) -> dict[str, Any]:
    r = httpx.get(f"{api}/v1/servers/{sid}/migrations", headers=ADMIN)
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["migrations"]
    assert len(found) == 1, found
    return found[0]


def running_on(pair: list[ThreadAgent], sid: str) -> list[str]:
    """The hosts whose agent last saw the server's domain running."""
    return [a.name for a in pair if (d := gated(a).last_seen.get(sid)) and d.state == "running"]


# point, the agent held there, the server's status, the migration's status and the server's
# task state then. The source's removal is held for a SHUTOFF server: an ACTIVE one may or
# may not be running on the destination by then (its task state is not settled).
STEPS = [
    ("export", "source", "ACTIVE", "preparing", "migrating-export"),
    ("upload", "source", "ACTIVE", "preparing", "migrating-export"),
    ("import", "destination", "ACTIVE", "migrating", "migrating-import"),
    ("imported", "destination", "ACTIVE", "migrating", "migrating-import"),
    ("start", "destination", "ACTIVE", "completed", "powering-on"),
    ("remove", "source", "SHUTOFF", "completed", None),
]


@pytest.mark.parametrize(("point", "side", "status", "step", "task_state"), STEPS,
                         ids=[s[0] for s in STEPS])
def test_the_api_killed_at_a_step_of_a_cold_migration_finishes_it(
        api_process: ApiProcess, member: Account, image_id: str, pair: list[ThreadAgent],
        settings: Settings, point: str, side: str, status: str, step: str,
        task_state: str | None) -> None:
    api = api_process.url
    s = create_server(api, member.headers, "tiny", image_id, availability_zone=pair[0].az)
    sid = s["id"]
    wait_status(api, member.headers, sid, "ACTIVE")
    if status == "SHUTOFF":
        action(api, member.headers, sid, "stop")
        wait_status(api, member.headers, sid, "SHUTOFF")
    host = server(api, ADMIN, sid)["host"]
    source, dest = pair if host == pair[0].name else pair[::-1]
    before = {a.name: allocated(api, a.host_id) for a in pair}
    held = source if side == "source" else dest
    gate = gated(held).arm(point, sid)
    try:
        r = httpx.post(f"{api}/v1/servers/{sid}/actions", headers=ADMIN,
                       json={"action": "migrate", "host": dest.name})
        assert r.status_code == 202, r.text
        assert gate.reached.wait(WAIT), f"the {side} never reached {point}"
        m = migration(api, sid)
        relayed = Path(settings.data_dir) / "migrations" / m["id"]
        if point == "upload":
            # The API is receiving the disk: its partial file is there.
            wait_until(lambda: (relayed / "disk.part").exists(), WAIT, "the upload in flight")
        assert m["status"] == step
        seen = server(api, ADMIN, sid)
        assert seen["task_state"] == task_state
        assert len(running_on(pair, sid)) <= 1

        api_process.kill()
        api_process.start()
    finally:
        gate.release.set()

    m = wait_until(lambda: (x := migration(api, sid))["status"] not in
                   ("preparing", "migrating") and x, WAIT, "the migration ended")
    assert (m["status"], m["fault"], m["progress"]) == ("completed", None, 100)
    moved = wait_status(api, ADMIN, sid, status)
    assert moved["host"] == dest.name and moved["fault"] is None
    # One place: on the destination (running when it was ACTIVE); the source removes its
    # domain and files.
    wait_until(lambda: sid not in gated(source).last_seen
               and not InstancePaths(source.agent.instances, sid).directory.exists(),
               WAIT, "the source's copy removed")
    power = "running" if status == "ACTIVE" else "shutoff"
    wait_until(lambda: (d := gated(dest).last_seen.get(sid)) and d.state == power, WAIT,
               f"{power} on the destination")
    assert running_on(pair, sid) == ([dest.name] if status == "ACTIVE" else [])
    # Allocations only on the destination: the server's sizes left the source (measured
    # with the server on it) and arrived on the destination.
    assert allocated(api, source.host_id) == {
        rc: before[source.name][rc] - n for rc, n in TINY.items()}
    assert allocated(api, dest.host_id) == {
        rc: before[dest.name][rc] + n for rc, n in TINY.items()}
    wait_until(lambda: not relayed.exists(), WAIT, "the relayed files removed")
    events = httpx.get(f"{api}/v1/servers/{sid}/events", headers=ADMIN).json()["events"]
    moves = [(e["action"], e["result"]) for e in events if e["action"] == "migrate"]
    assert moves == [("migrate", "accepted"), ("migrate", "success"), ("migrate", "success")]



def on_host(api: str, name: str) -> dict[str, str]:
    """{server id: status} of every server on a host (admin)."""
    r = httpx.get(f"{api}/v1/servers", headers=ADMIN, params={"host": name, "limit": 1000})
    assert r.status_code == 200, r.text
    return {x["id"]: x["status"] for x in r.json()["servers"]}


def test_the_api_killed_while_a_drain_moves_servers_finishes_the_drain(
        api_process: ApiProcess, member: Account, image_id: str, pair: list[ThreadAgent],
        settings: Settings) -> None:
    api = api_process.url
    s = create_server(api, member.headers, "tiny", image_id, availability_zone=pair[0].az)
    sid = s["id"]
    wait_status(api, member.headers, sid, "ACTIVE")
    host = server(api, ADMIN, sid)["host"]
    source, dest = pair if host == pair[0].name else pair[::-1]
    # Every server on the host moves (the earlier tests' too), each in its own power state.
    before = on_host(api, source.name)
    assert sid in before and set(before.values()) <= {"ACTIVE", "SHUTOFF"}
    gate = gated(source).arm("export", sid)
    try:
        r = httpx.post(f"{api}/v1/hosts/{source.host_id}/drain", headers=ADMIN)
        assert r.status_code == 202, r.text
        assert sorted(r.json()["moving"]) == sorted(before) and r.json()["refused"] == []
        assert gate.reached.wait(WAIT), "the source never reached export"
        assert migration(api, sid)["status"] == "preparing"
        api_process.kill()
        api_process.start()
    finally:
        gate.release.set()
    try:
        def drained() -> dict[str, Any] | None:
            view: dict[str, Any] = httpx.get(f"{api}/v1/hosts/{source.host_id}/drain",
                                             headers=ADMIN).json()
            return view if view["state"] == "drained" else None
        view = wait_until(drained, WAIT, "the host drained")
        assert (view["servers_left"], view["moving"], view["refused"]) == (0, [], [])
        for m, status in before.items():
            moved = wait_status(api, ADMIN, m, status)
            assert moved["host"] == dest.name and moved["fault"] is None
            last = httpx.get(f"{api}/v1/servers/{m}/migrations", headers=ADMIN).json()
            assert last["migrations"][0]["status"] == "completed"
            relayed = Path(settings.data_dir) / "migrations" / last["migrations"][0]["id"]
            wait_until(lambda r=relayed: not r.exists(), WAIT, "the relayed files removed")
        wait_until(lambda: not any(m in gated(source).last_seen for m in before), WAIT,
                   "the source emptied")
        assert allocated(api, source.host_id) == dict.fromkeys(TINY, 0)
        assert on_host(api, source.name) == {}
    finally:
        r = httpx.delete(f"{api}/v1/hosts/{source.host_id}/drain", headers=ADMIN)
        assert r.status_code == 200, r.text
