"""Guest metrics from real agents on libvirt's test driver, through a real API process.

The test driver's counters are zero, so an idle server's cpu_util is 0; the test-only
simulated load file (``minicloud-agent --simulate N --sim-load FILE``) gives a server a CPU load
that comes out as its cpu_util.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest

from compute_agent.hypervisor import Hypervisor, parse_domain_stats
from tests.conftest import ADMIN_TOKEN
from tests.e2e.stack import (
    ADMIN,
    REPO,
    WAIT,
    create_server,
    wait_status,
    wait_until,
)
from tests.factories import Account, unique

pytestmark = [pytest.mark.libvirt]


@pytest.fixture(scope="module")
def api(shared_api: str) -> str:
    return shared_api


@pytest.fixture
def load_file(tmp_path: Path) -> Path:
    return tmp_path / "load.json"


@pytest.fixture
def zone(api: str, tmp_path: Path, load_file: Path) -> Iterator[str]:
    """A zone with one ``minicloud-agent --simulate`` host reporting every 0.5 s and reading
    the simulated load file."""
    name, az = unique("gm"), unique("az")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from compute_agent.main import run; run()", "--api", api,
         "--name", name, "--az", az, "--simulate", "1", "--sim-size", "8:16384:50",
         "--sim-dir", str(tmp_path / "sim"), "--state-dir", str(tmp_path / "state"),
         "--heartbeat-interval", "1", "--guest-metrics-interval", "0.5",
         "--sim-load", str(load_file)],
        env={**os.environ, "PYTHONPATH": str(REPO), "MINICLOUD_TOKEN": ADMIN_TOKEN}, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: any(h["name"] == f"{name}-sim0" and h["state"] == "up"
                               and h["resources"]
                               for h in httpx.get(f"{api}/v1/hosts", headers=ADMIN).json()),
                   WAIT, "simulated host up")
        yield az
    finally:
        proc.terminate()
        assert proc.wait(60) == 0


def _boot(api: str, member: Account, image_id: str, zone: str, flavor: str, name: str) -> str:
    s = create_server(api, member.headers, flavor, image_id, availability_zone=zone, name=name)
    wait_status(api, member.headers, s["id"], "ACTIVE")
    return str(s["id"])


def _cpu_points(api: str, member: Account, server_id: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{api}/v1/servers/{server_id}/metrics", headers=member.headers,
                  params={"name": "cpu_util", "step": 10})
    assert r.status_code == 200, r.text
    points: list[dict[str, Any]] = r.json()["points"]
    return points


def test_reported_counters_become_cpu_util(api: str, member: Account, image_id: str,
                                           zone: str, load_file: Path) -> None:
    busy_name = unique("busy")
    load_file.write_text(json.dumps({busy_name: 60}))
    busy = _boot(api, member, image_id, zone, "small", busy_name)
    idle = _boot(api, member, image_id, zone, "tiny", unique("idle"))
    # A simulated load of 60 % of the server's vCPUs is its cpu_util (the sample times and the
    # simulated CPU time come from one clock; milliseconds of rounding remain).
    points = wait_until(lambda: _cpu_points(api, member, busy) or None, WAIT, "busy samples")
    assert all(abs(p["value"] - 60) < 1 for p in points), points
    # The test driver's own counters are zero: an unlisted server is idle.
    idle_points = wait_until(lambda: _cpu_points(api, member, idle) or None, WAIT,
                             "idle samples")
    assert all(p["value"] == 0 for p in idle_points), idle_points
    # Load follows the file; a server it names by id works as well.
    load_file.write_text(json.dumps({idle: 25}))
    wait_until(lambda: any(abs(p["value"] - 25) < 1 for p in _cpu_points(api, member, idle)),
               WAIT, "idle server loaded")


def test_bulk_stats_parse_every_counter_group() -> None:
    # A qemu-like record: counters are summed over disks and NICs, absent groups are 0/None.
    stats = parse_domain_stats({
        "cpu.time": 12_000_000_000, "vcpu.current": 2, "balloon.current": 1048576,
        "balloon.unused": 524288, "balloon.rss": 600000, "block.count": 2,
        "block.0.rd.bytes": 100, "block.0.wr.bytes": 10, "block.1.rd.bytes": 5,
        "net.count": 1, "net.0.rx.bytes": 7, "net.0.tx.bytes": 9})
    assert (stats.cpu_time_ns, stats.vcpus, stats.memory_kib, stats.memory_unused_kib,
            stats.memory_rss_kib) == (12_000_000_000, 2, 1048576, 524288, 600000)
    assert (stats.disk_read_bytes, stats.disk_write_bytes, stats.net_rx_bytes,
            stats.net_tx_bytes) == (105, 10, 7, 9)
    empty = parse_domain_stats({})
    assert (empty.cpu_time_ns, empty.memory_unused_kib, empty.net_tx_bytes) == (0, None, 0)


def test_test_driver_domains_report_zero_counters() -> None:
    # libvirt's own test driver: its running default domain has no counters at all.
    with Hypervisor("test:///default") as hv:
        conn = libvirt.open("test:///default")
        sid = conn.listAllDomains(0)[0].UUIDString()
        conn.close()
        stats = hv.domain_stats([sid, "00000000-0000-0000-0000-000000000000"])
    assert list(stats) == [sid]
    assert (stats[sid].cpu_time_ns, stats[sid].disk_read_bytes, stats[sid].net_rx_bytes) == \
        (0, 0, 0)
