"""Acceptance: drain a host of real guests. Two libvirt daemons, two real agents, a real API
process; host A holds two servers of one soft anti-affinity group, one ACTIVE and one
SHUTOFF (booted while A was the only host). Draining A moves both to B in their power state
with their disk content; A ends with no domain, no files and no allocation, and its drain
reads ``drained``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

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
    server,
    wait_status,
    wait_until,
)
from tests.e2e.test_cold_migration_qemu import domains, pattern_ok, paused_pattern_ok
from tests.e2e.test_qemu_boot import wait_for
from tests.e2e.two_hosts import NOTHING, start_qemu_agent
from tests.factories import unique

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

PATTERN = "0x6b"  # what test_cold_migration_qemu.pattern_ok reads back
TICK = "minicloud-guest: tick 2 "


@pytest.fixture
def started(api: str) -> Iterator[list[ThreadAgent]]:
    """The agents a test started; stopped after it."""
    agents: list[ThreadAgent] = []
    yield agents
    for a in agents:
        a.stop()


def write_pattern(paths: InstancePaths) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {PATTERN} 2M 64k",
                    str(paths.disk)], check=True, stdout=subprocess.DEVNULL)


def test_draining_a_host_moves_its_real_guests_in_their_power_state(
        api: str, two_libvirt_hosts: list[LibvirtHost], started: list[ThreadAgent]) -> None:
    lh_a, lh_b = two_libvirt_hosts
    zone = unique("az")
    a = start_qemu_agent(api, lh_a, zone)
    started.append(a)
    disk_id = upload_tiny_guest(api, ADMIN).disk_id
    r = httpx.post(f"{api}/v1/server-groups", headers=ADMIN,
                   json={"name": unique("spread"), "policy": "soft-anti-affinity"})
    assert r.status_code == 201, r.text
    group = r.json()["id"]

    # Both on A (the only host yet); each gets a pattern written while it is shut off.
    ids: dict[str, str] = {}
    for status in ("ACTIVE", "SHUTOFF"):
        s = create_server(api, ADMIN, "tiny", disk_id, availability_zone=zone,
                          server_group=group)
        ids[status] = s["id"]
    for sid in ids.values():
        wait_status(api, ADMIN, sid, "ACTIVE")
        assert server(api, ADMIN, sid)["host"] == a.name
        wait_for(InstancePaths(a.agent.instances, sid), TICK, 1)
        action(api, ADMIN, sid, "stop")
    for sid in ids.values():
        wait_status(api, ADMIN, sid, "SHUTOFF")
        write_pattern(InstancePaths(a.agent.instances, sid))
    action(api, ADMIN, ids["ACTIVE"], "start")
    wait_status(api, ADMIN, ids["ACTIVE"], "ACTIVE")
    wait_for(InstancePaths(a.agent.instances, ids["ACTIVE"]), TICK, 2)

    b = start_qemu_agent(api, lh_b, zone)
    started.append(b)
    r = httpx.post(f"{api}/v1/hosts/{a.host_id}/drain", headers=ADMIN)
    assert r.status_code == 202, r.text
    assert r.json()["refused"] == []

    def drained() -> dict[str, Any] | None:
        got = httpx.get(f"{api}/v1/hosts/{a.host_id}/drain", headers=ADMIN)
        assert got.status_code == 200, got.text
        view: dict[str, Any] = got.json()
        return view if view["state"] == "drained" else None
    view = wait_until(drained, WAIT, "host A drained")
    assert (view["servers_left"], view["moving"], view["completed"], view["refused"]) == (
        0, [], 2, [])

    for status, sid in ids.items():
        s = wait_status(api, ADMIN, sid, status)
        assert s["host"] == b.name and s["fault"] is None
        assert s["server_group_id"] == group
    paths_on = {k: InstancePaths(b.agent.instances, sid) for k, sid in ids.items()}
    # The ACTIVE one boots again on B (a cold move restarts it); the SHUTOFF one stays off.
    wait_for(paths_on["ACTIVE"], TICK, 1)
    assert b.agent.hv.observed(ids["ACTIVE"]) == "running"
    assert b.agent.hv.observed(ids["SHUTOFF"]) == "shutoff"
    assert pattern_ok(str(paths_on["SHUTOFF"].disk))
    assert paused_pattern_ok(b.agent.hv.domain(ids["ACTIVE"]), str(paths_on["ACTIVE"].disk))
    # A is empty: no domain, no instance files, no allocation; B holds both servers' sizes.
    wait_until(lambda: domains(lh_a) == [] and not any(
        InstancePaths(a.agent.instances, sid).directory.exists() for sid in ids.values()),
        WAIT, "A's copies removed")
    assert allocated(api, a.host_id) == NOTHING
    assert allocated(api, b.host_id) == {"VCPU": 2, "MEMORY_MB": 1024, "DISK_GB": 2}
    r = httpx.get(f"{api}/v1/server-groups/{group}", headers=ADMIN)
    assert sorted(r.json()["members"]) == sorted(ids.values())
    for sid in ids.values():
        assert httpx.delete(f"{api}/v1/servers/{sid}", headers=ADMIN).status_code == 202
    wait_until(lambda: domains(lh_b) == [], WAIT, "the servers deleted")
