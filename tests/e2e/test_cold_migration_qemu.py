"""Acceptance: cold migration of a real guest between two libvirt daemons, with two real
agents and a real API process. A SHUTOFF server moves and stays SHUTOFF with its disk content;
an ACTIVE one moves back and runs again on its new host (a cold move reboots it); the host it
left keeps no domain and no files, and only its new host holds allocations.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import libvirt
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
from tests.e2e.test_qemu_boot import wait_for
from tests.e2e.two_hosts import NOTHING, source_first, start_qemu_agent
from tests.factories import unique

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

PATTERN = "0x6b"


@pytest.fixture
def agents(api: str, two_libvirt_hosts: list[LibvirtHost]) -> Iterator[list[ThreadAgent]]:
    zone = unique("az")
    started = [start_qemu_agent(api, lh, zone) for lh in two_libvirt_hosts]
    yield started
    for a in started:
        a.stop()


def pattern_ok(disk: str) -> bool:
    done = subprocess.run(["qemu-io", "-U", "-r", "-f", "qcow2", "-c",
                           f"read -P {PATTERN} 2M 64k", disk],
                          capture_output=True, text=True, check=False)
    return done.returncode == 0 and "Pattern verification failed" not in done.stdout


def paused_pattern_ok(dom: libvirt.virDomain, disk: str) -> bool:
    """``pattern_ok`` read while the guest is paused. The host's agent unpauses a paused
    domain that should run, possibly before the read ends: resumed here only if not yet."""
    dom.suspend()
    try:
        return pattern_ok(disk)
    finally:
        if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
            try:
                dom.resume()
            except libvirt.libvirtError:
                if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                    raise  # not the agent's resume winning the race


def domains(lh: LibvirtHost) -> list[str]:
    conn = libvirt.open(lh.uri)
    try:
        return sorted(d.name() for d in conn.listAllDomains(0))
    finally:
        conn.close()


def moved_to(api: str, sid: str, to: ThreadAgent, status: str) -> dict[str, object]:
    got: dict[str, object] = wait_until(
        lambda: (x := server(api, ADMIN, sid))["host"] == to.name and x["status"] == status
        and x["task_state"] is None and x, WAIT, f"server {status} on {to.name}")
    return got


def test_cold_migration_of_a_real_guest_shutoff_then_active(
        api: str, agents: list[ThreadAgent], two_libvirt_hosts: list[LibvirtHost]) -> None:
    disk_id = upload_tiny_guest(api, ADMIN).disk_id
    s = create_server(api, ADMIN, "tiny", disk_id, availability_zone=agents[0].az)
    sid = s["id"]
    wait_status(api, ADMIN, sid, "ACTIVE")
    a, b, lh_a, lh_b = source_first(api, sid, agents, two_libvirt_hosts)
    wait_for(InstancePaths(a.agent.instances, sid), "minicloud-guest: tick 2 ", 1)
    action(api, ADMIN, sid, "stop")
    wait_status(api, ADMIN, sid, "SHUTOFF")
    disk_a = InstancePaths(a.agent.instances, sid).disk
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {PATTERN} 2M 64k", str(disk_a)],
                   check=True, stdout=subprocess.DEVNULL)

    # 1. SHUTOFF: it lands shut off, with its disk content; A keeps nothing.
    action(api, ADMIN, sid, "migrate")
    moved_to(api, sid, b, "SHUTOFF")
    paths_b = InstancePaths(b.agent.instances, sid)
    assert pattern_ok(str(paths_b.disk))
    wait_until(lambda: domains(lh_a) == [] and not InstancePaths(
        a.agent.instances, sid).directory.exists(), WAIT, "A's copy removed")
    assert allocated(api, a.host_id) == NOTHING
    assert allocated(api, b.host_id) == {"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1}

    # 2. Started on B, then ACTIVE back to A: stopped, moved, started there.
    action(api, ADMIN, sid, "start")
    wait_status(api, ADMIN, sid, "ACTIVE")
    wait_for(paths_b, "minicloud-guest: tick 2 ", 1)
    action(api, ADMIN, sid, "migrate")
    moved_to(api, sid, a, "ACTIVE")
    paths_a = InstancePaths(a.agent.instances, sid)
    wait_for(paths_a, "minicloud-guest: tick 2 ", 1)
    assert a.agent.hv.observed(sid) == "running"
    wait_until(lambda: domains(lh_b) == [] and not paths_b.directory.exists(), WAIT,
               "B's copy removed")
    assert allocated(api, b.host_id) == NOTHING
    assert allocated(api, a.host_id) == {"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1}
    # The guest's disk still has what was written before the first move.
    assert paused_pattern_ok(a.agent.hv.domain(sid), str(paths_a.disk))
    r = httpx.get(f"{api}/v1/servers/{sid}/migrations", headers=ADMIN)
    assert [m["status"] for m in r.json()["migrations"]] == ["completed", "completed"]
    assert httpx.delete(f"{api}/v1/servers/{sid}", headers=ADMIN).status_code == 202
    wait_until(lambda: domains(lh_a) == [], WAIT, "the server deleted")
