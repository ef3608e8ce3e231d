"""Acceptance: live migration of a real guest through the whole stack: a real API process,
two libvirt daemons, two real agents that registered their migration endpoints. The guest
keeps running through the move (its console, read through the API, goes on ticking in the
same boot), its disk arrives with what was written on it, the source keeps no domain and no
files, only the destination holds allocations, and the ledger bills one run.

Waits are bounded only so a broken migration fails instead of hanging; nothing asserts a
duration.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import libvirt
import pytest

from compute_agent.hypervisor import Hypervisor
from compute_agent.migration import live_migrate, migratable_xml, rewrite_paths, set_host_id
from compute_agent.spec import InstancePaths
from tests.e2e.guest_image import upload_tiny_guest
from tests.e2e.libvirt_hosts import LibvirtHost
from tests.e2e.stack import (
    ADMIN,
    WAIT,
    ThreadAgent,
    action,
    allocated,
    create_server,
    host,
    server,
    wait_status,
    wait_until,
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

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

PATTERN = "0x6b"
TICK = re.compile(r"minicloud-guest: tick (\d+) uptime=([0-9.]+)")
BOOTED = "userspace started"


@pytest.fixture(scope="module")
def api(live_api: Callable[[int], list[str]]) -> str:
    return live_api(1)[0]


@pytest.fixture
def agents(api: str, two_libvirt_hosts: list[LibvirtHost]) -> Iterator[list[ThreadAgent]]:
    """One agent per libvirt daemon, each registering its daemon's TCP listener and QEMU
    migration port range as its migration endpoint."""
    zone = unique("az")
    started = [start_qemu_agent(api, lh, zone, endpoint=True) for lh in two_libvirt_hosts]
    yield started
    for a in started:
        a.stop()


def domains(lh: LibvirtHost) -> list[str]:
    conn = libvirt.open(lh.uri)
    try:
        return sorted(d.UUIDString() for d in conn.listAllDomains(0))
    finally:
        conn.close()


def pattern_ok(disk: str) -> bool:
    done = subprocess.run(["qemu-io", "-U", "-r", "-f", "qcow2", "-c",
                           f"read -P {PATTERN} 2M 64k", disk],
                          capture_output=True, text=True, check=False)
    return done.returncode == 0 and "Pattern verification failed" not in done.stdout


def console(api: str, sid: str) -> str:
    r = httpx.get(f"{api}/v1/servers/{sid}/console", headers=ADMIN)
    assert r.status_code == 200, r.text
    return str(r.json()["output"])


def ticks(text: str) -> list[tuple[int, float]]:
    return [(int(n), float(up)) for n, up in TICK.findall(text)]


def ticked_past(api: str, sid: str, tick: int) -> str | None:
    """The console through the API once it shows tick number ``tick`` or a later one."""
    text = console(api, sid)
    seen = ticks(text)
    return text if seen and seen[-1][0] >= tick else None


def ledger(api: str, sid: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{api}/v1/usage/servers/{sid}", headers=ADMIN,
                  params={"start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"})
    assert r.status_code == 200, r.text
    entries: list[dict[str, Any]] = r.json()["entries"]
    return entries


def guest_image(api: str) -> str:
    """The tiny guest's disk image (with its kernel and initrd) uploaded to the API."""
    return upload_tiny_guest(api, ADMIN).disk_id


def test_live_migration_of_a_real_guest_through_the_api(
        api: str, agents: list[ThreadAgent], two_libvirt_hosts: list[LibvirtHost]) -> None:
    s = create_server(api, ADMIN, "tiny", guest_image(api), availability_zone=agents[0].az)
    sid = s["id"]
    wait_status(api, ADMIN, sid, "ACTIVE")
    a, b, lh_a, lh_b = source_first(api, sid, agents, two_libvirt_hosts)
    paths_a, paths_b = InstancePaths(a.agent.instances, sid), InstancePaths(b.agent.instances, sid)
    # Data on the disk before the move: written while the guest is off, then it runs again.
    action(api, ADMIN, sid, "stop")
    wait_status(api, ADMIN, sid, "SHUTOFF")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {PATTERN} 2M 64k",
                    str(paths_a.disk)], check=True, stdout=subprocess.DEVNULL)
    action(api, ADMIN, sid, "start")
    wait_status(api, ADMIN, sid, "ACTIVE")
    wait_until(lambda: len(ticks(console(api, sid).split(BOOTED)[-1])) >= 3, WAIT,
               "the guest ticking, seen through the API")
    # The last tick the API showed before the move.
    last_a = ticks(console(api, sid))[-1]
    billed_before = ledger(api, sid)
    assert [e["kind"] for e in billed_before][-1] == "running"

    r = httpx.post(f"{api}/v1/servers/{sid}/actions", headers=ADMIN,
                   json={"action": "migrate", "live": True})
    assert r.status_code == 202, r.text
    moving = server(api, ADMIN, sid)
    assert (moving["status"], moving["task_state"]) == ("MIGRATING", "live-preparing")
    # While it moves the server holds allocations on both hosts.
    assert allocated(api, a.host_id) == TINY and allocated(api, b.host_id) == TINY

    moved = wait_active_on(api, sid, b.name)
    assert moved["fault"] is None

    # Same boot: the console, through the API (B's agent ships it now), goes on ticking after
    # what it showed before the move, with the kernel's uptime going on, and shows no new
    # boot (a new boot would count its ticks from 1 again).
    shown = wait_until(lambda: ticked_past(api, sid, last_a[0] + 3), WAIT,
                       "B's console ticking through the API")
    after = ticks(shown)
    assert BOOTED not in shown
    assert after[0][0] > last_a[0] and after[0][1] > last_a[1]
    assert [n for n, _ in after] == list(range(after[0][0], after[-1][0] + 1))
    assert wait_for(paths_b, "minicloud-guest: tick", 1).count(BOOTED) == 0

    # B runs it, defined with B's paths; A keeps no domain and no files.
    assert b.agent.hv.observed(sid) == "running"
    wait_until(lambda: domains(lh_a) == [] and not paths_a.directory.exists(), WAIT,
               "A's copy removed")
    assert domains(lh_b) == [sid]
    assert allocated(api, a.host_id) == NOTHING
    assert allocated(api, b.host_id) == TINY
    # The disk arrived with what was written on it.
    assert pattern_ok(str(paths_b.disk))

    # The migration record and its progress.
    r = httpx.get(f"{api}/v1/servers/{sid}/migrations", headers=ADMIN)
    [m] = r.json()["migrations"]
    assert (m["kind"], m["status"], m["progress"], m["fault"]) == ("live", "completed", 100,
                                                                  None)
    assert (m["source_host_id"], m["dest_host_id"]) == (a.host_id, b.host_id)
    events = httpx.get(f"{api}/v1/servers/{sid}/events", headers=ADMIN).json()["events"]
    progress = [e["details"] for e in events if e["action"] == "migration_progress"]
    assert progress and all(p["data_remaining"] <= p["data_total"] for p in progress)
    assert [(e["action"], e["result"]) for e in events if e["action"] == "migrate"] == [
        ("migrate", "accepted"), ("migrate", "success"), ("migrate", "success")]

    # One billed run: the move added no ledger entry (no stop, no second start).
    assert ledger(api, sid) == billed_before

    assert httpx.delete(f"{api}/v1/servers/{sid}", headers=ADMIN).status_code == 202
    wait_until(lambda: domains(lh_b) == [], WAIT, "the server deleted")


def test_a_source_agent_back_after_libvirt_finished_the_copy_completes_the_move(
        api: str, agents: list[ThreadAgent], two_libvirt_hosts: list[LibvirtHost]) -> None:
    s = create_server(api, ADMIN, "tiny", guest_image(api), availability_zone=agents[0].az)
    sid = s["id"]
    wait_status(api, ADMIN, sid, "ACTIVE")
    a, b, lh_a, lh_b = source_first(api, sid, agents, two_libvirt_hosts)
    wait_until(lambda: len(ticks(console(api, sid))) >= 3, WAIT, "the guest ticking")
    last_a = ticks(console(api, sid))[-1]
    billed_before = ledger(api, sid)

    # The source's agent is gone when the move starts; the destination prepares its files.
    a.stop()
    r = httpx.post(f"{api}/v1/servers/{sid}/actions", headers=ADMIN,
                   json={"action": "migrate", "live": True})
    assert r.status_code == 202, r.text
    wait_until(lambda: server(api, ADMIN, sid)["task_state"] == "live-migrating", WAIT,
               "the destination ready")
    # What a copy started by the dead agent leaves once libvirtd finished it: the guest runs
    # on B, gone from A (the same call the agent makes, with what B registered).
    endpoint = host(api, b.host_id)["migration_endpoint"]
    path_map = {str(a.agent.instances): endpoint["instances_dir"],
                str(lh_a.images_dir.resolve()): endpoint["image_cache_dir"]}
    with Hypervisor(lh_a.uri) as hv_a:
        live, persistent = migratable_xml(hv_a, sid)
        live_migrate(hv_a, sid, dest_libvirt_uri=endpoint["libvirt_uri"],
                     migrate_uri=endpoint["migrate_uri"],
                     dest_xml=set_host_id(rewrite_paths(live, path_map), b.host_id),
                     persist_xml=set_host_id(rewrite_paths(persistent, path_map), b.host_id),
                     max_downtime_ms=300, timeout_s=WAIT)
    assert server(api, ADMIN, sid)["status"] == "MIGRATING"

    # A's agent comes back: it finds the domain gone and running on B, and reports the move
    # done instead of starting the guest again or failing the move.
    revived = restart_agent(a)
    agents[agents.index(a)] = revived
    moved = wait_active_on(api, sid, b.name)
    assert moved["fault"] is None
    shown = wait_until(lambda: ticked_past(api, sid, last_a[0] + 3), WAIT,
                       "B's console ticking through the API")
    assert BOOTED not in shown and ticks(shown)[0][0] > last_a[0]
    wait_until(lambda: domains(lh_a) == []
               and not InstancePaths(revived.agent.instances, sid).directory.exists(), WAIT,
               "A's files removed")
    assert domains(lh_b) == [sid]
    assert allocated(api, a.host_id) == NOTHING
    assert allocated(api, b.host_id) == TINY
    r = httpx.get(f"{api}/v1/servers/{sid}/migrations", headers=ADMIN)
    assert [(m["kind"], m["status"]) for m in r.json()["migrations"]] == [("live", "completed")]
    assert ledger(api, sid) == billed_before
    assert httpx.delete(f"{api}/v1/servers/{sid}", headers=ADMIN).status_code == 202
    wait_until(lambda: domains(lh_b) == [], WAIT, "the server deleted")
