"""Guest metrics of real guests (QEMU through libvirtd): a guest whose user-data asks it to burn
CPU (``burn_cpu: true``, the tiny image's test load) shows a high cpu_util through the API,
while an idle guest on the same host stays low.

QEMU may run as TCG on a shared machine, so "high" is not 100 %: the burning guest's vCPU
thread competes for the host's cores. The assertions compare the two guests over the same
stretch of time (after both finished booting) and bound only the idle one from above.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from compute_agent.hypervisor import Hypervisor
from tests.e2e.guest_image import GuestImage
from tests.e2e.stack import create_server, wait_status, wait_until
from tests.e2e.test_whole_stack import BOOT_WAIT, console, new_agent
from tests.factories import Account

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


@pytest.fixture(scope="module")
def disk_id(guest: GuestImage) -> str:
    """The bootable disk of the tiny guest."""
    return guest.disk_id


def average_cpu(api: str, member: Account, sid: str, since: datetime) -> tuple[float, int]:
    """(average cpu_util, samples) of the server since ``since``, from the 10 s rollups."""
    r = httpx.get(f"{api}/v1/servers/{sid}/metrics", headers=member.headers,
                  params={"name": "cpu_util", "start": since.isoformat(), "step": 10})
    assert r.status_code == 200, r.text
    points: list[dict[str, Any]] = r.json()["points"]
    samples = sum(p["samples"] for p in points)
    if not samples:
        return 0.0, 0
    return sum(p["value"] * p["samples"] for p in points) / samples, samples


def test_a_guest_burning_cpu_has_a_high_cpu_util_and_an_idle_one_low(
        api: str, member: Account, disk_id: str, hv: Hypervisor, home: Path) -> None:
    agent = new_agent(api, home, extra=["--guest-metrics-interval", "2"])
    cleanup: list[str] = []
    try:
        busy = create_server(api, member.headers, "tiny", disk_id,
                             availability_zone=agent.az,
                             user_data="#cloud-config\nburn_cpu: true\n")["id"]
        idle = create_server(api, member.headers, "tiny", disk_id,
                             availability_zone=agent.az,
                             user_data="#cloud-config\n{}\n")["id"]
        cleanup += [busy, idle]
        for sid in (busy, idle):
            wait_status(api, member.headers, sid, "ACTIVE", BOOT_WAIT)
        wait_until(lambda: "minicloud-guest: burning CPU with 1 loop(s)"
                   in console(api, member, busy), BOOT_WAIT, "the busy guest burning")
        wait_until(lambda: "minicloud-guest: ready" in console(api, member, idle), BOOT_WAIT,
                   "the idle guest booted")
        since = datetime.now(UTC)

        def measured() -> tuple[float, float] | None:
            (hot, n_hot), (cold, n_cold) = (average_cpu(api, member, busy, since),
                                            average_cpu(api, member, idle, since))
            return (hot, cold) if min(n_hot, n_cold) >= 20 else None

        hot, cold = wait_until(measured, BOOT_WAIT, "twenty samples of each guest")
        series = {sid: httpx.get(f"{api}/v1/servers/{sid}/metrics", headers=member.headers,
                                 params={"start": since.isoformat(), "step": 10}).json()
                  for sid in (busy, idle)}
        # The libvirt counters reached the API: a busy loop keeps its vCPU busy whenever the
        # host schedules it, while an idle guest only wakes for its once-a-second console
        # tick (under TCG the emulated timer still costs QEMU a few per cent).
        assert hot > 2 * cold and hot - cold > 10, (hot, cold, series)
    finally:
        agent.stop()
        for sid in cleanup:
            hv.destroy_and_undefine(sid)
