"""The whole stack on real libvirtd + QEMU (TCG): API process -> agent process -> a real guest.

Acceptance 1: enroll an agent, upload the tiny direct-boot image through the images API, create
a server; it becomes ACTIVE; its console shows the hostname from the cloud-init meta-data;
stop -> domain shut off and SHUTOFF; start -> ACTIVE; delete -> domain, overlay, seed and
console log gone and the allocations freed.

Acceptance 3: the agent is killed with SIGKILL after it defined (or started) the domain and
before it reported ACTIVE (tests/e2e/halting_agent.py halts it right there); started again, it
finishes the build: the server ends ACTIVE with exactly one domain and one instance directory.

A guest that ignores the ACPI power button (booted with acpi=off) is destroyed once the
agent's shutdown timeout has passed, and ends SHUTOFF.

Pause freezes the guest (its console heartbeat stops) and unpause lets the same boot go on.

Waits are bounded (so a broken boot fails instead of hanging) but nothing asserts timing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from compute_agent.hypervisor import Hypervisor
from compute_agent.spec import domain_name
from tests.e2e.guest_image import URI, GuestImage
from tests.e2e.stack import (
    AgentProcess,
    action,
    allocated,
    assert_placed_on,
    create_server,
    enrollment_token,
    host,
    host_id_of,
    server,
    upload_image,
    wait_gone,
    wait_status,
    wait_until,
)
from tests.e2e.test_qemu_boot import build_guest_image
from tests.factories import Account, unique

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

BOOT_WAIT = 180.0


@pytest.fixture
def cleanup(hv: Hypervisor) -> Iterator[list[str]]:
    """Server ids whose domains are destroyed after the test, whatever happened."""
    ids: list[str] = []
    yield ids
    for sid in ids:
        hv.destroy_and_undefine(sid)


def console(api: str, member: Account, sid: str) -> str:
    r = httpx.get(f"{api}/v1/servers/{sid}/console", headers=member.headers)
    assert r.status_code == 200, r.text
    return str(r.json()["output"])


def domains_of(hv: Hypervisor, sid: str) -> list[str]:
    return [n for n in hv.all_domain_names() if sid in n]


def new_agent(api: str, home: Path, extra: list[str] | None = None,
              **kwargs: Any) -> AgentProcess:
    agent = AgentProcess(api, home, unique("qemu-host"), URI, az=unique("az"),
                         extra_args=["--network", "none", *(extra or [])], **kwargs)
    agent.start(token=enrollment_token(api))

    def enrolled() -> bool:
        assert agent.alive(), agent.output()
        return (home / "state" / "credential.json").exists()
    wait_until(enrolled, 60, "enrollment")
    wait_until(lambda: (h := host(api, host_id_of(home)))["state"] == "up" and h["resources"],
               60, "host up with its inventory")
    return agent


def test_a_guest_boots_through_the_whole_stack(api: str, member: Account, guest: GuestImage,
                                               hv: Hypervisor, home: Path,
                                               cleanup: list[str]) -> None:
    agent = new_agent(api, home)
    try:
        cred = home / "state" / "credential.json"
        assert cred.stat().st_mode & 0o777 == 0o600
        host_id = host_id_of(home)
        s = create_server(api, member.headers, "tiny", guest.disk_id, name="e2e-guest",
                          availability_zone=agent.az, user_data="#cloud-config\n{}\n")
        sid = s["id"]
        cleanup.append(sid)
        assert_placed_on(api, sid, agent.name)

        wait_status(api, member.headers, sid, "ACTIVE", BOOT_WAIT)
        assert hv.observed(sid) == "running"
        assert domains_of(hv, sid) == [domain_name(sid)]
        line = f"minicloud-guest: hostname=e2e-guest instance-id={sid}"
        wait_until(lambda: line in console(api, member, sid), BOOT_WAIT, "hostname on console")
        wait_until(lambda: "minicloud-guest: ready" in console(api, member, sid), BOOT_WAIT,
                   "guest ready")

        action(api, member.headers, sid, "stop")
        wait_status(api, member.headers, sid, "SHUTOFF", BOOT_WAIT)
        assert hv.observed(sid) == "shutoff"

        action(api, member.headers, sid, "start")
        wait_status(api, member.headers, sid, "ACTIVE", BOOT_WAIT)
        assert hv.observed(sid) == "running"

        instance = home / "instances" / sid
        assert {p.name for p in instance.iterdir()} >= {"disk.qcow2", "seed.iso", "console.log"}
        assert allocated(api, host_id) == {"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1}
        r = httpx.delete(f"{api}/v1/servers/{sid}", headers=member.headers)
        assert r.status_code == 202, r.text
        wait_gone(api, member.headers, sid, BOOT_WAIT)
        assert hv.observed(sid) == "absent"
        assert domains_of(hv, sid) == []
        assert not instance.exists()  # overlay, seed and console log
        assert allocated(api, host_id) == {"VCPU": 0, "MEMORY_MB": 0, "DISK_GB": 0}
        assert agent.alive(), agent.output()
    finally:
        agent.stop()


def ticks(log: Path) -> list[int]:
    """The guest's heartbeat counts, in console order (``minicloud-guest: tick <n> ...``)."""
    return [int(n) for n in re.findall(r"minicloud-guest: tick (\d+) ",
                                       log.read_text(errors="replace"))]


def test_a_paused_guest_stops_and_resumes_in_the_same_boot(
        api: str, member: Account, guest: GuestImage, hv: Hypervisor, home: Path,
        cleanup: list[str]) -> None:
    agent = new_agent(api, home)
    try:
        s = create_server(api, member.headers, "tiny", guest.disk_id,
                          availability_zone=agent.az)
        sid = s["id"]
        cleanup.append(sid)
        wait_status(api, member.headers, sid, "ACTIVE", BOOT_WAIT)
        log = home / "instances" / sid / "console.log"  # what QEMU's serial port wrote
        wait_until(lambda: len(ticks(log)) >= 2, BOOT_WAIT, "the guest ticking")

        action(api, member.headers, sid, "pause")
        wait_status(api, member.headers, sid, "PAUSED", BOOT_WAIT)
        assert hv.observed(sid) == "paused"
        assert allocated(api, host_id_of(home)) == {"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1}
        time.sleep(1)  # a line the guest was writing as it froze lands first
        frozen = ticks(log)
        time.sleep(3)  # a running guest prints three ticks meanwhile
        assert ticks(log) == frozen  # vCPUs stopped: not a single line

        action(api, member.headers, sid, "unpause")
        wait_status(api, member.headers, sid, "ACTIVE", BOOT_WAIT)
        assert hv.observed(sid) == "running"
        wait_until(lambda: len(ticks(log)) > len(frozen), BOOT_WAIT, "ticks after unpause")
        counted = ticks(log)
        # The same boot goes on: the count continues where it froze, nothing restarted.
        assert counted == list(range(1, len(counted) + 1))
        assert log.read_text(errors="replace").count("minicloud-guest: userspace started") == 1

        assert httpx.delete(f"{api}/v1/servers/{sid}",
                            headers=member.headers).status_code == 202
        wait_gone(api, member.headers, sid, BOOT_WAIT)
        assert domains_of(hv, sid) == []
    finally:
        agent.stop()


@pytest.mark.parametrize(("step", "domain_state"), [("define", "shutoff"),
                                                    ("start", "running")])
def test_agent_killed_mid_build_finishes_it_after_restart(
        api: str, member: Account, guest: GuestImage, hv: Hypervisor, home: Path,
        cleanup: list[str], step: str, domain_state: str) -> None:
    marker = home / "halted"
    agent = new_agent(api, home, env={"MINICLOUD_TEST_HALT_AFTER": step,
                                      "MINICLOUD_TEST_HALT_MARKER": str(marker)})
    try:
        s = create_server(api, member.headers, "tiny", guest.disk_id,
                          availability_zone=agent.az)
        sid = s["id"]
        cleanup.append(sid)
        assert_placed_on(api, sid, agent.name)
        wait_until(lambda: marker.exists(), BOOT_WAIT, f"agent halted after {step}")
        agent.kill()
        # Killed after defining (or starting) the domain, before reporting: the API still
        # says BUILD.
        assert hv.observed(sid) == domain_state
        assert server(api, member.headers, sid)["status"] == "BUILD"

        agent.start(env={"MINICLOUD_TEST_HALT_AFTER": ""})  # same state dir: same credential
        wait_status(api, member.headers, sid, "ACTIVE", BOOT_WAIT)
        assert domains_of(hv, sid) == [domain_name(sid)]
        assert [p.name for p in (home / "instances").iterdir()] == [sid]
        wait_until(lambda: f"instance-id={sid}" in console(api, member, sid), BOOT_WAIT,
                   "guest boot on console")

        assert httpx.delete(f"{api}/v1/servers/{sid}",
                            headers=member.headers).status_code == 202
        wait_gone(api, member.headers, sid, BOOT_WAIT)
        assert domains_of(hv, sid) == []
        assert list((home / "instances").iterdir()) == []
    finally:
        agent.stop()


def test_a_guest_ignoring_the_power_button_is_forced_off(
        api: str, member: Account, guest: GuestImage, hv: Hypervisor, home: Path,
        cleanup: list[str]) -> None:
    # The same guest booted with acpi=off never sees the ACPI power button.
    built = build_guest_image()
    deaf = upload_image(api, member.headers, (built / "disk.qcow2").read_bytes(), "qcow2",
                        properties={"kernel_id": guest.kernel_id,
                                    "ramdisk_id": guest.ramdisk_id,
                                    "kernel_cmdline": "console=ttyS0 acpi=off"})
    agent = new_agent(api, home, extra=["--shutdown-timeout", "5"])
    try:
        s = create_server(api, member.headers, "tiny", deaf["id"], availability_zone=agent.az)
        sid = s["id"]
        cleanup.append(sid)
        wait_status(api, member.headers, sid, "ACTIVE", BOOT_WAIT)
        wait_until(lambda: "minicloud-guest: ready" in console(api, member, sid), BOOT_WAIT,
                   "guest ready")
        action(api, member.headers, sid, "stop")
        wait_status(api, member.headers, sid, "SHUTOFF", BOOT_WAIT)
        assert hv.observed(sid) == "shutoff"
        assert f"{sid} did not power off in 5s: destroying" in agent.log.read_text()
        assert httpx.delete(f"{api}/v1/servers/{sid}",
                            headers=member.headers).status_code == 202
        wait_gone(api, member.headers, sid, BOOT_WAIT)
    finally:
        agent.stop()


def test_agent_killed_after_a_reboot_does_not_reboot_again(
        api: str, member: Account, guest: GuestImage, hv: Hypervisor, home: Path,
        cleanup: list[str]) -> None:
    marker = home / "halted"
    agent = new_agent(api, home, env={"MINICLOUD_TEST_HALT_AFTER": "reboot",
                                      "MINICLOUD_TEST_HALT_MARKER": str(marker)})
    try:
        s = create_server(api, member.headers, "tiny", guest.disk_id,
                          availability_zone=agent.az)
        sid = s["id"]
        cleanup.append(sid)
        wait_status(api, member.headers, sid, "ACTIVE", BOOT_WAIT)
        action(api, member.headers, sid, "reboot", type="hard")
        wait_until(lambda: marker.exists(), BOOT_WAIT, "agent halted after the reboot")
        agent.kill()
        assert server(api, member.headers, sid)["status"] == "REBOOT"

        before = agent.log.stat().st_size
        agent.start(env={"MINICLOUD_TEST_HALT_AFTER": ""})
        wait_status(api, member.headers, sid, "ACTIVE", BOOT_WAIT)
        # The new process found the reboot recorded and only reported it.
        assert f"reboot {sid}" not in agent.log.read_text()[before:]
        assert domains_of(hv, sid) == [domain_name(sid)]
        assert httpx.delete(f"{api}/v1/servers/{sid}",
                            headers=member.headers).status_code == 202
        wait_gone(api, member.headers, sid, BOOT_WAIT)
    finally:
        agent.stop()
