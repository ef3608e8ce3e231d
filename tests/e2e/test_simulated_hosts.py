"""Acceptance 2: the server flow on three simulated hosts of different sizes (libvirt test
driver, one process), with each server running where the scheduler decided.

The hosts are the real agent (``compute_agent.simulate``): real enrollment, inventory,
heartbeats, long-poll, image download, overlays and seeds; only the hypervisor is libvirt's
test driver. A second test runs ``minicloud-agent --simulate`` itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from compute_agent.config import AgentSettings
from compute_agent.simulate import HostSize, SimulatedHost, start_simulated, stop_simulated
from tests.conftest import ADMIN_TOKEN
from tests.e2e.stack import (
    ADMIN,
    REPO,
    WAIT,
    action,
    allocated,
    create_server,
    upload_image,
    wait_gone,
    wait_status,
    wait_until,
)
from tests.factories import make_account, unique

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

SIZES = [HostSize(2, 4096, 40), HostSize(4, 8192, 80), HostSize(8, 16384, 160)]


@pytest.fixture(scope="module")
def api(shared_api: str) -> str:
    return shared_api


@pytest.fixture
def zone() -> str:
    return unique("az")


@pytest.fixture
def hosts(api: str, tmp_path: Path, zone: str) -> Iterator[list[SimulatedHost]]:
    base = AgentSettings(api_url=api, name=unique("sim"), availability_zone=zone,
                         heartbeat_interval=1, shutdown_timeout=1, console_interval=0.5,
                         long_poll_wait=5)
    started = start_simulated(base, SIZES, tmp_path / "sim", admin_token=ADMIN_TOKEN)
    yield started
    stop_simulated(started)


def host_ids(api: str, names: list[str]) -> dict[str, str]:
    """Ids of the named hosts that are up with an inventory."""
    r = httpx.get(f"{api}/v1/hosts", headers=ADMIN)
    return {h["name"]: h["id"] for h in r.json()
            if h["name"] in names and h["state"] == "up" and h["resources"]}


def server_host(api: str, sid: str) -> str:
    return str(httpx.get(f"{api}/v1/servers/{sid}", headers=ADMIN).json()["host"])


def decided_host(api: str, sid: str) -> str | None:
    """The host name the scheduler recorded in the server's events."""
    r = httpx.get(f"{api}/v1/servers/{sid}/events", headers=ADMIN)
    assert r.status_code == 200, r.text
    for event in r.json()["events"]:
        details: dict[str, Any] = event.get("details") or {}
        record = details.get("placement", details)
        if isinstance(record, dict) and record.get("host"):
            return str(record["host"])
    return None


def test_servers_run_where_the_scheduler_placed_them(
        api: str, hosts: list[SimulatedHost], tmp_path: Path, zone: str) -> None:
    names = [h.name for h in hosts]
    ids = wait_until(lambda: x if len(x := host_ids(api, names)) == 3 else None, WAIT,
                     "three hosts up")
    r = httpx.get(f"{api}/v1/hosts", headers=ADMIN)
    totals = {h["name"]: h["resources"]["VCPU"]["total"] for h in r.json() if h["name"] in ids}
    assert totals == {h.name: s.vcpus for h, s in zip(hosts, SIZES, strict=True)}
    with httpx.Client(base_url=api) as c:
        member = make_account(c, ADMIN)
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    image = upload_image(api, member.headers, disk.read_bytes(), "qcow2")

    servers = [create_server(api, member.headers, flavor, image["id"], availability_zone=zone)
               for flavor in ("small", "medium", "tiny", "small", "medium", "tiny")]
    by_host: dict[str, list[str]] = {}
    for s in servers:
        active = wait_status(api, ADMIN, s["id"], "ACTIVE")
        assert active["host"] in ids, active
        # The agent that runs it is the host the scheduler chose and recorded.
        assert decided_host(api, s["id"]) == active["host"]
        by_host.setdefault(active["host"], []).append(s["id"])
    # Spreading (positive ram/cpu multipliers): the first server goes to the host with the most
    # free RAM and vCPUs, the largest one (normalized scores 1 + 1 against 0 + 0 and 0.33 + 0.33).
    assert server_host(api, servers[0]["id"]) == hosts[2].name
    assert len(by_host) > 1, by_host  # later servers spread onto the smaller hosts
    for h in hosts:
        running = {sid for sid, st in h.agent.hv.list_managed().items()
                   if st.observed == "running"}
        assert running == set(by_host.get(h.name, [])), h.name
    # Allocations follow the placements: each host holds exactly its servers' flavors.
    flavors = {f["name"]: f for f in httpx.get(f"{api}/v1/flavors", headers=ADMIN).json()}
    for name, host_id in ids.items():
        mine = [s for s in servers if s["id"] in by_host.get(name, [])]
        assert allocated(api, host_id)["VCPU"] == sum(
            flavors[s["flavor"]["name"]]["vcpus"] for s in mine)

    victim = servers[0]["id"]
    action(api, member.headers, victim, "stop")
    wait_status(api, member.headers, victim, "SHUTOFF")
    action(api, member.headers, victim, "start")
    wait_status(api, member.headers, victim, "ACTIVE")
    # Pause on its simulated host: frozen there, its allocations kept; unpause runs it again.
    victim_host = next(h for h in hosts if victim in by_host.get(h.name, []))
    before = allocated(api, ids[victim_host.name])
    action(api, member.headers, victim, "pause")
    wait_status(api, member.headers, victim, "PAUSED")
    assert victim_host.agent.hv.list_managed()[victim].observed == "paused"
    assert allocated(api, ids[victim_host.name]) == before
    action(api, member.headers, victim, "unpause")
    wait_status(api, member.headers, victim, "ACTIVE")
    assert victim_host.agent.hv.list_managed()[victim].observed == "running"
    for s in servers:
        assert httpx.delete(f"{api}/v1/servers/{s['id']}", headers=member.headers
                            ).status_code == 202
    for s in servers:
        wait_gone(api, member.headers, s["id"])
    for h in hosts:
        assert h.agent.hv.list_managed() == {}
    for host_id in ids.values():
        assert allocated(api, host_id) == {"VCPU": 0, "MEMORY_MB": 0, "DISK_GB": 0}


def test_minicloud_agent_simulate_enrolls_hosts_of_the_given_sizes(
        api: str, tmp_path: Path, zone: str) -> None:
    name = unique("cli-sim")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from compute_agent.main import run; run()", "--api", api,
         "--name", name, "--az", zone, "--simulate", "2", "--sim-size", "3:3072:30",
         "--sim-size", "5:5120:50", "--sim-dir", str(tmp_path), "--heartbeat-interval", "1",
         "--state-dir", str(tmp_path / "state")],
        env={**os.environ, "PYTHONPATH": str(REPO), "MINICLOUD_TOKEN": ADMIN_TOKEN},
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def enrolled() -> dict[str, Any] | None:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            hs = {h["name"]: h for h in httpx.get(f"{api}/v1/hosts", headers=ADMIN).json()
                  if h["name"].startswith(name)}
            ready = len(hs) == 2 and all(h["state"] == "up" and h["resources"]
                                         for h in hs.values())
            return hs if ready else None
        hs = wait_until(enrolled, WAIT, "two simulated hosts up")
        assert {n: (h["resources"]["VCPU"]["total"], h["resources"]["MEMORY_MB"]["total"],
                    h["resources"]["DISK_GB"]["total"]) for n, h in hs.items()} == {
            f"{name}-sim0": (3, 3072, 30), f"{name}-sim1": (5, 5120, 50)}
        assert all(h["availability_zone"] == zone for h in hs.values())
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
