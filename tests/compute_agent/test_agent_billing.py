"""Billing follows a real agent: the ledger holds what the agent saw, at the agent's times.

A real agent (thread) on the libvirt test driver drives a server through a real
``minicloud-api`` process: create, stop, start, pause, unpause, a hard reboot, delete. The usage
ledger must then hold exactly one entry per billable change (the reboot adds none), and the
billed seconds must be what those entries' times imply, counted second by second by the
brute-force oracle of tests/usage.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.config import Settings
from api.usage.rules import Entry, epoch
from tests.e2e.stack import (
    ADMIN,
    ThreadAgent,
    action,
    create_server,
    start_test_driver_agent,
    upload_image,
    wait_gone,
    wait_status,
)
from tests.factories import make_account, unique
from tests.usage.test_rules_properties import brute_force

pytestmark = [pytest.mark.libvirt]


@pytest.fixture
def agent(live_api: Callable[[int], list[str]], tmp_path: Path) -> Iterator[ThreadAgent]:
    a = start_test_driver_agent(live_api(1)[0], tmp_path / "host", vcpus=4, ram_mb=8192,
                                disk_gb=50, az=unique("az"))
    yield a
    a.stop()


def test_the_ledger_holds_what_the_agent_saw_and_bills_exactly_that(
    live_api: Callable[[int], list[str]], agent: ThreadAgent, settings: Settings,
    tmp_path: Path,
) -> None:
    api = live_api(1)[0]
    with httpx.Client(base_url=api) as c:
        member = make_account(c, ADMIN)
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    image = upload_image(api, member.headers, disk.read_bytes(), "qcow2")
    sid = create_server(api, member.headers, "tiny", image["id"],
                        availability_zone=agent.az)["id"]  # 1 vCPU, 512 MiB, 1 GiB
    wait_status(api, member.headers, sid, "ACTIVE")
    action(api, member.headers, sid, "stop")
    wait_status(api, member.headers, sid, "SHUTOFF")
    action(api, member.headers, sid, "start")
    wait_status(api, member.headers, sid, "ACTIVE")
    action(api, member.headers, sid, "pause")
    wait_status(api, member.headers, sid, "PAUSED")
    assert agent.agent.hv.observed(sid) == "paused"
    action(api, member.headers, sid, "unpause")
    wait_status(api, member.headers, sid, "ACTIVE")
    assert agent.agent.hv.observed(sid) == "running"
    action(api, member.headers, sid, "reboot", type="hard")
    wait_status(api, member.headers, sid, "ACTIVE")
    assert httpx.delete(f"{api}/v1/servers/{sid}", headers=member.headers).status_code == 202
    wait_gone(api, member.headers, sid)

    r = httpx.get(f"{api}/v1/usage/servers/{sid}", headers=member.headers,
                  params={"start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"})
    assert r.status_code == 200, r.text
    usage: dict[str, Any] = r.json()
    entries = [(e["kind"], e["source"], epoch(datetime.fromisoformat(e["at"])))
               for e in usage["entries"]]
    # One entry per billable change; the reboot is none (the guest stays billed through it).
    assert [(k, s) for k, s, _ in entries] == [
        ("created", "api"), ("running", "agent"), ("stopped", "agent"),
        ("running", "agent"), ("paused", "agent"), ("running", "agent"), ("deleted", "api")]
    created, run1, stop1, run2, paused, run3, deleted = (at for _, _, at in entries)
    assert created <= run1 <= stop1 <= run2 <= paused <= run3 <= deleted
    minimum = settings.billing_minimum_run_seconds
    # The oracle counts the entries second by second: paused seconds bill RAM, not vCPU.
    oracle = brute_force([Entry(e["seq"], epoch(datetime.fromisoformat(e["at"])), e["kind"],
                                e["vcpus"], e["ram_mb"], e["disk_gb"])
                          for e in usage["entries"]], created, deleted + 1, deleted + 1,
                         minimum)
    assert (usage["server_seconds"], usage["running_seconds"], usage["vcpu_seconds"],
            usage["ram_mib_seconds"], usage["disk_gib_seconds"]) == (
        oracle.server_seconds, oracle.running_seconds, oracle.vcpu_seconds,
        oracle.ram_mib_seconds, oracle.disk_gib_seconds)

    def billed(start: int, end: int) -> int:
        # A run that starts and ends in the same second is no run (docs/billing.md); any
        # other is billed at least the minimum.
        return 0 if start == end else max(end - start, minimum)

    # A pause keeps the run open (no new minimum at the unpause) and counts in its length for
    # the minimum, but its seconds are not running ones: max(length, minimum) - paused.
    frozen = run3 - paused
    if stop1 == run2:
        # Entries of one second apply together (docs/billing.md): a stop and a start in the
        # same second leave the guest running, so it is one run, not two.
        running = billed(run1, deleted) - frozen
    else:
        running = billed(run1, stop1) + billed(run2, deleted) - frozen
    assert (usage["server_seconds"], usage["running_seconds"], usage["vcpu_seconds"],
            usage["ram_mib_seconds"], usage["disk_gib_seconds"]) == (
        deleted - created, running, running, (running + frozen) * 512, deleted - created)
    assert usage["state"] == "deleted"
