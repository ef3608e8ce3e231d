"""kill -9 of the API during a live migration of a real guest, alone or with the source's
or the destination's agent dead at the same step, then the API (and the agent) restarted on
the same database and data directory: the server always ends in exactly one place, never
stopped. Either the move completes (the agents carry their step out and report it to the new
process: ACTIVE on the destination in the same boot, the source's domain and files gone,
allocations only on the destination) or, when the destination never reports ready, the step
timeout reverts it (ACTIVE on the source with a ``migration_timeout`` fault, the
destination's files removed, allocations only on the source). Neither libvirt daemon ever
holds a second domain.

Two libvirt daemons, two real agents in this process as ``LiveGatedAgent``s: each test holds
one agent at one step of the move, checks the step through the API and both daemons, kills
the API process with SIGKILL (and stops the held agent where it is, as if killed) and lets
go. Waits are bounded only so a broken move fails instead of hanging; nothing asserts a
duration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from compute_agent.agent import Agent
from compute_agent.client import DesiredServer, Operation
from compute_agent.spec import InstancePaths
from tests.db import backend
from tests.e2e.gated_agent import Gate
from tests.e2e.libvirt_hosts import LibvirtHost
from tests.e2e.stack import (
    ADMIN,
    WAIT,
    ApiProcess,
    ThreadAgent,
    allocated,
    create_server,
    server,
    wait_status,
    wait_until,
)
from tests.e2e.test_live_migration_qemu import (
    BOOTED,
    console,
    domains,
    guest_image,
    ledger,
    ticked_past,
    ticks,
)
from tests.e2e.test_qemu_boot import wait_for
from tests.e2e.two_hosts import (
    NOTHING,
    TINY,
    restart_agent,
    source_first,
    start_qemu_agent,
    wait_active_on,
)
from tests.factories import unique

# Real guests (about 2.5 minutes): these run in the PostgreSQL pass only, so that CI keeps under
# its 30 minutes; the API's kill and restart on SQLite is exercised at every step of a cold move
# in tests/e2e/test_cold_migration_api_kill.py.
pytestmark = [pytest.mark.qemu, pytest.mark.slow,
              pytest.mark.skipif(backend() != "postgresql",
                                 reason="real guests: the PostgreSQL pass")]

# Where a ``LiveGatedAgent`` can be held (``Gate.hold`` blocks its reconcile thread):
# ``prepared``: the destination made the incoming guest's files and recorded its
#   ``live_prepare`` as done, not reported yet;
# ``copy``: the source is about to ask libvirt for the migration (its ``live_migrate``).
POINTS = ("prepared", "copy")


class Killed(BaseException):
    """Ends a stopped agent's held thread on release, reporting nothing (a killed process)."""


class LiveGatedAgent(Agent):
    """The real agent, with the gates above at its live-migration steps. An agent stopped
    while held ends there when released, as if it had been killed at that point."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = Gate("", "")

    def arm(self, point: str, server_id: str) -> Gate:
        """Hold the agent at ``point`` for ``server_id`` (replacing any earlier gate)."""
        assert point in POINTS, point
        self.gate.release.set()
        self.gate = Gate(point, server_id)
        return self.gate

    def run(self) -> None:
        with contextlib.suppress(Killed):
            super().run()

    def _operation_performed(self, server: DesiredServer, op: Operation) -> None:
        super()._operation_performed(server, op)
        if op.kind == "live_prepare":
            self.gate.hold("prepared", server.server_id)
            if self._stop.is_set():
                raise Killed

    def _live_migrate(self, server: DesiredServer, op: Operation) -> None:
        self.gate.hold("copy", server.server_id)
        if self._stop.is_set():
            raise Killed
        super()._live_migrate(server, op)


@pytest.fixture
def agents(api_process: ApiProcess,
           two_libvirt_hosts: list[LibvirtHost]) -> Iterator[list[ThreadAgent]]:
    """One gated agent per libvirt daemon, each registering its migration endpoint; every
    gate is released when the test ends."""
    api = api_process.url
    zone = unique("az")
    started = [start_qemu_agent(api, lh, zone, endpoint=True, agent_class=LiveGatedAgent)
               for lh in two_libvirt_hosts]
    # The tests may replace an agent in the list by its restarted self.
    yield started
    for a in started:
        gated(a).gate.release.set()
    for a in started:
        a.stop()


def gated(a: ThreadAgent) -> LiveGatedAgent:
    assert isinstance(a.agent, LiveGatedAgent)
    return a.agent


def migrations(api: str, sid: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{api}/v1/servers/{sid}/migrations", headers=ADMIN)
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["migrations"]
    return found


@dataclass
class Guest:
    """A ticking real guest on host A (its agent ``a``, its daemon ``lh_a``), B the other."""

    sid: str
    a: ThreadAgent
    b: ThreadAgent
    lh_a: LibvirtHost
    lh_b: LibvirtHost
    last_tick: tuple[int, float]  # the last (tick, uptime) the API showed before the move
    billed: list[dict[str, Any]]  # the ledger before the move


def ticking_guest(api: str, agents: list[ThreadAgent], hosts: list[LibvirtHost]) -> Guest:
    s = create_server(api, ADMIN, "tiny", guest_image(api), availability_zone=agents[0].az)
    sid = s["id"]
    wait_status(api, ADMIN, sid, "ACTIVE")
    a, b, lh_a, lh_b = source_first(api, sid, agents, hosts)
    wait_until(lambda: len(ticks(console(api, sid).split(BOOTED)[-1])) >= 3, WAIT,
               "the guest ticking, seen through the API")
    return Guest(sid, a, b, lh_a, lh_b, ticks(console(api, sid))[-1], ledger(api, sid))


def assert_moved_in_one_place(api: str, g: Guest) -> None:
    """The move completed: ACTIVE on B in the same boot, on B's daemon only, A's files gone,
    allocations only on B, one billed run; then the server is deleted."""
    sid, a, b = g.sid, g.a, g.b
    moved = wait_active_on(api, sid, b.name)
    assert moved["fault"] is None
    [m] = migrations(api, sid)
    assert (m["kind"], m["status"], m["progress"], m["fault"]) == ("live", "completed", 100,
                                                                  None)
    assert (m["source_host_id"], m["dest_host_id"]) == (a.host_id, b.host_id)

    # Same boot: B's console, through the API, goes on from what A showed, no new boot.
    shown = wait_until(lambda: ticked_past(api, sid, g.last_tick[0] + 3), WAIT,
                       "B's console ticking through the API")
    after = ticks(shown)
    assert BOOTED not in shown
    assert after[0][0] > g.last_tick[0] and after[0][1] > g.last_tick[1]
    assert wait_for(InstancePaths(b.agent.instances, sid), "minicloud-guest: tick",
                    1).count(BOOTED) == 0

    # Exactly one place: B's daemon runs it, A's has no domain and A's agent no files.
    wait_until(lambda: domains(g.lh_a) == []
               and not InstancePaths(a.agent.instances, sid).directory.exists(), WAIT,
               "A's copy removed")
    assert domains(g.lh_b) == [sid]
    assert allocated(api, a.host_id) == NOTHING
    assert allocated(api, b.host_id) == TINY
    events = httpx.get(f"{api}/v1/servers/{sid}/events", headers=ADMIN).json()["events"]
    assert [(e["action"], e["result"]) for e in events if e["action"] == "migrate"] == [
        ("migrate", "accepted"), ("migrate", "success"), ("migrate", "success")]
    # One billed run: no stop and no second start.
    assert ledger(api, sid) == g.billed

    assert httpx.delete(f"{api}/v1/servers/{sid}", headers=ADMIN).status_code == 202
    wait_until(lambda: domains(g.lh_b) == [], WAIT, "the server deleted")


# point, the agent held there, the server's task state then
STEPS = [("prepared", "destination", "live-preparing"), ("copy", "source", "live-migrating")]


@pytest.mark.parametrize(("point", "side", "task_state"), STEPS, ids=[s[0] for s in STEPS])
def test_the_api_killed_during_a_live_migration_the_move_completes_in_one_place(
        api_process: ApiProcess, agents: list[ThreadAgent],
        two_libvirt_hosts: list[LibvirtHost], point: str, side: str, task_state: str) -> None:
    api = api_process.url
    g = ticking_guest(api, agents, two_libvirt_hosts)
    sid, a, b, lh_a, lh_b = g.sid, g.a, g.b, g.lh_a, g.lh_b

    gate = gated(a if side == "source" else b).arm(point, sid)
    try:
        r = httpx.post(f"{api}/v1/servers/{sid}/actions", headers=ADMIN,
                       json={"action": "migrate", "live": True})
        assert r.status_code == 202, r.text
        assert gate.reached.wait(WAIT), f"the {side} never reached {point}"
        seen = server(api, ADMIN, sid)
        assert (seen["status"], seen["task_state"], seen["host"]) == ("MIGRATING", task_state,
                                                                      a.name)
        # Held before libvirt moves anything: the guest runs on A only.
        assert (domains(lh_a), domains(lh_b)) == ([sid], [])
        assert allocated(api, a.host_id) == TINY and allocated(api, b.host_id) == TINY

        api_process.kill()
        if point == "copy":
            # The copy runs while no API process is there: libvirt moves the guest to B,
            # the source's agent cannot report it.
            gate.release.set()
            wait_until(lambda: (domains(lh_a), domains(lh_b)) == ([], [sid]), WAIT,
                       "libvirt moved the guest with the API down")
        api_process.start()
    finally:
        gate.release.set()

    assert_moved_in_one_place(api, g)


def restart(old: ThreadAgent) -> ThreadAgent:
    """The same host's gated agent as a new process would be: same settings and credential."""
    return restart_agent(old, LiveGatedAgent)


def kill_agent_then_api(api_process: ApiProcess, g: Guest, dying: ThreadAgent, step: str,
                        never: str) -> None:
    """Start the live move of ``g``, let ``dying``'s agent die where it is held at ``step``
    (``never``: the failure if it never gets there), then kill and restart the API."""
    api = api_process.url
    gate = gated(dying).arm(step, g.sid)
    try:
        r = httpx.post(f"{api}/v1/servers/{g.sid}/actions", headers=ADMIN,
                       json={"action": "migrate", "live": True})
        assert r.status_code == 202, r.text
        assert gate.reached.wait(WAIT), never
        dying.agent.stop()  # the agent dies where it is held
    finally:
        gate.release.set()
    dying.stop()
    api_process.kill()
    api_process.start()


def assert_waiting_on_the_source(api: str, g: Guest, task_state: str) -> None:
    """The move waits in ``task_state``: the guest only on A, the sizes held on both hosts."""
    seen = server(api, ADMIN, g.sid)
    assert (seen["status"], seen["task_state"], seen["host"]) == ("MIGRATING", task_state,
                                                                  g.a.name)
    assert (domains(g.lh_a), domains(g.lh_b)) == ([g.sid], [])
    assert allocated(api, g.a.host_id) == TINY and allocated(api, g.b.host_id) == TINY


def test_a_source_dead_before_the_copy_and_the_api_killed_the_move_completes_once_back(
        api_process: ApiProcess, agents: list[ThreadAgent],
        two_libvirt_hosts: list[LibvirtHost]) -> None:
    """The source's agent dies about to ask libvirt for the copy, then the API is killed and
    restarted: the move waits in its copy step with the guest running on A only (only the
    source can tell whether libvirt copied); the source's agent, once back, carries the copy
    out."""
    api = api_process.url
    g = ticking_guest(api, agents, two_libvirt_hosts)
    a = g.a

    kill_agent_then_api(api_process, g, a, "copy", "the source never reached the copy")
    assert_waiting_on_the_source(api, g, "live-migrating")

    revived = restart(a)
    agents[agents.index(a)] = revived
    g.a = revived
    assert_moved_in_one_place(api, g)


def test_a_destination_dead_after_preparing_and_the_api_killed_the_move_completes_once_back(
        api_process: ApiProcess, agents: list[ThreadAgent],
        two_libvirt_hosts: list[LibvirtHost]) -> None:
    """The destination's agent dies with the incoming files made and its step recorded but
    not reported, then the API is killed and restarted: the move waits in its preparing step;
    the destination's agent, once back, reports what it recorded and the source copies."""
    api = api_process.url
    g = ticking_guest(api, agents, two_libvirt_hosts)
    b = g.b

    kill_agent_then_api(api_process, g, b, "prepared", "the destination never prepared")
    assert_waiting_on_the_source(api, g, "live-preparing")

    revived = restart(b)
    agents[agents.index(b)] = revived
    g.b = revived
    assert_moved_in_one_place(api, g)


def test_a_destination_dead_while_preparing_reverts_the_move_to_the_running_source(
        api_process: ApiProcess, agents: list[ThreadAgent],
        two_libvirt_hosts: list[LibvirtHost], monkeypatch: pytest.MonkeyPatch) -> None:
    """The destination's agent dies with the incoming files made and its step unreported,
    and the API is killed too; the API, restarted with a short step timeout, reverts the
    move: the guest never stopped on the source, and the destination's agent, once back,
    removes the files it made and defines nothing."""
    api = api_process.url
    g = ticking_guest(api, agents, two_libvirt_hosts)
    sid, a, b, lh_a, lh_b, last_a = g.sid, g.a, g.b, g.lh_a, g.lh_b, g.last_tick
    paths_b = InstancePaths(b.agent.instances, sid)

    gate = gated(b).arm("prepared", sid)
    try:
        r = httpx.post(f"{api}/v1/servers/{sid}/actions", headers=ADMIN,
                       json={"action": "migrate", "live": True})
        assert r.status_code == 202, r.text
        assert gate.reached.wait(WAIT), "the destination never prepared"
        assert server(api, ADMIN, sid)["task_state"] == "live-preparing"
        assert paths_b.disk.exists()
        # B's agent dies where it is held (it reports nothing more), then the API.
        b.agent.stop()
    finally:
        gate.release.set()
    b.stop()
    api_process.kill()
    monkeypatch.setenv("MINICLOUD_MIGRATION_STEP_TIMEOUT_SECONDS", "5")
    api_process.start()
    try:
        back = wait_until(lambda: (x := server(api, ADMIN, sid))["status"] != "MIGRATING"
                          and x, WAIT, "the move ended")
        [m] = migrations(api, sid)
        assert (m["kind"], m["status"]) == ("live", "reverted")
        assert m["fault"]["code"] == "migration_timeout"
        # The server is where it was, ACTIVE, with the fault saying why it did not move.
        assert (back["status"], back["task_state"], back["host"]) == ("ACTIVE", None, a.name)
        assert back["fault"]["code"] == "migration_timeout"
        assert allocated(api, a.host_id) == TINY and allocated(api, b.host_id) == NOTHING

        # B's agent comes back: B no longer lists the server, so it removes the files it
        # made; it never defined a domain.
        revived = restart(b)
        agents[agents.index(b)] = revived
        wait_until(lambda: not paths_b.directory.exists(), WAIT, "B's prepared files removed")
        assert (domains(lh_a), domains(lh_b)) == ([sid], [])
        # The guest never stopped: A's console goes on in the same boot.
        shown = wait_until(lambda: ticked_past(api, sid, last_a[0] + 3), WAIT,
                           "A's console ticking through the API")
        seen = [n for n, _ in ticks(shown)]
        assert last_a[0] in seen  # (a new boot would count from 1 again)
        assert seen[seen.index(last_a[0]):] == list(range(last_a[0], seen[-1] + 1))
        assert ledger(api, sid) == g.billed
        assert allocated(api, a.host_id) == TINY and allocated(api, b.host_id) == NOTHING
        assert httpx.delete(f"{api}/v1/servers/{sid}", headers=ADMIN).status_code == 202
        wait_until(lambda: domains(lh_a) == [], WAIT, "the server deleted")
    finally:
        # The module's API goes on with the default step timeout.
        api_process.kill()
        monkeypatch.delenv("MINICLOUD_MIGRATION_STEP_TIMEOUT_SECONDS")
        api_process.start()
