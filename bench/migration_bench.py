#!/usr/bin/env python3
"""Live migration of the tiny guest between two libvirt daemons: wall time and downtime.

Starts two independent libvirt "hosts" on this machine (``tests/e2e/libvirt_hosts.py``: one
libvirtd per mount namespace, TCP on 127.0.0.1, own migration port range), boots the tiny guest
(``deploy/build-guest-image.sh``: 1 vCPU, 256 MiB, QEMU/TCG, direct kernel boot, no NIC) on
host A from the domain XML ``compute_agent.domain_xml`` builds, then live-migrates it back and
forth with ``compute_agent.migration.live_migrate`` (peer-to-peer, storage copy of the qcow2
overlay, max downtime 300 ms), exactly as an agent does:

* untimed: ``prepare_incoming`` on the destination (empty overlay, the source's seed bytes) and
  the migratable XML with the destination's paths (``rewrite_paths``);
* timed: the ``live_migrate`` call (wall), plus the destination's completed-job stats
  (``time_elapsed``, ``downtime``).

After each run the guest must print its next uptime tick on the destination's console (same
boot), and the source's files are removed. Needs root; run it alone (``flock
/work/wt/qemu.lock``).

    /work/main/.venv/bin/python bench/migration_bench.py --runs 5 [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compute_agent.hypervisor import Hypervisor
from compute_agent.imagecache import ImageCache, prepare_instance_files
from compute_agent.migration import (
    disk_virtual_size,
    live_migrate,
    migratable_xml,
    prepare_incoming,
    rewrite_paths,
)
from compute_agent.spec import InstancePaths, ServerSpec
from tests.e2e.libvirt_hosts import LibvirtHost, LibvirtHosts
from tests.e2e.test_qemu_boot import build_guest_image

SERVER_ID = "b3e4c5d6-1a2b-4c3d-8e4f-5a6b7c8d9e0f"
PROJECT_ID = "0e4bc6c5-6c2b-4c4f-9d44-3f1d6e2a5a10"
IMAGE_IDS = {"disk.qcow2": "5e1f2b6c-0000-4000-8000-000000000001",
             "vmlinuz": "5e1f2b6c-0000-4000-8000-000000000002",
             "initrd.img": "5e1f2b6c-0000-4000-8000-000000000003"}
TICK = re.compile(r"minicloud-guest: tick (\d+) uptime=")
MAX_DOWNTIME_MS = 300
TIMEOUT_S = 120.0
WAIT_S = 120.0  # bound of every wait for the guest's console, so a broken run fails


@dataclass
class Run:
    direction: str
    wall_s: float
    job_elapsed_s: float
    downtime_ms: int | None
    data_mib: float


def spec_on(host: LibvirtHost) -> ServerSpec:
    """The benchmark guest with its base files in ``host``'s image cache."""
    image = build_guest_image()
    cache = ImageCache(host.images_dir)
    files = {}
    for name, image_id in IMAGE_IDS.items():
        files[name] = cache.path(image_id)
        if not cache.has(image_id):
            data = (image / name).read_bytes()
            cache.store(image_id, iter([data]), hashlib.sha256(data).hexdigest())
    return ServerSpec(
        server_id=SERVER_ID, project_id=PROJECT_ID, name="bench", vcpus=1, ram_mb=256,
        disk_gb=1, image_path=files["disk.qcow2"], image_format="qcow2",
        image_id=IMAGE_IDS["disk.qcow2"], flavor_name="tiny", kernel_path=files["vmlinuz"],
        initrd_path=files["initrd.img"], kernel_cmdline=(image / "cmdline").read_text().strip(),
        network=None, virt_type="qemu")


def last_tick(paths: InstancePaths) -> int:
    ticks = TICK.findall(paths.console_log.read_text(errors="replace")) \
        if paths.console_log.exists() else []
    return int(ticks[-1]) if ticks else 0


def wait_tick(paths: InstancePaths, above: int) -> int:
    """Wait until the console shows a tick greater than ``above``; return it."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        tick = last_tick(paths)
        if tick > above:
            return tick
        time.sleep(0.2)
    raise SystemExit(f"no tick above {above} on {paths.console_log} within {WAIT_S:g} s")


def migrate(src: LibvirtHost, dst: LibvirtHost, src_paths: InstancePaths) -> tuple[Run,
                                                                                  InstancePaths]:
    dst_spec = spec_on(dst)
    dst_paths = InstancePaths(dst.instances_dir, SERVER_ID)
    with Hypervisor(src.uri) as hv:
        prepare_incoming(dst_spec, dst_paths, virtual_size=disk_virtual_size(hv, SERVER_ID),
                         seed_iso=src_paths.seed.read_bytes())
        live, persistent = migratable_xml(hv, SERVER_ID)
        path_map = {str(src.data_dir): str(dst.data_dir)}
        before = last_tick(src_paths)
        started = time.perf_counter()
        stats = live_migrate(hv, SERVER_ID, dest_libvirt_uri=dst.tcp_uri,
                             migrate_uri=dst.migrate_uri,
                             dest_xml=rewrite_paths(live, path_map),
                             persist_xml=rewrite_paths(persistent, path_map),
                             max_downtime_ms=MAX_DOWNTIME_MS, timeout_s=TIMEOUT_S)
        wall = time.perf_counter() - started
    # Same boot on the destination: the ticks go on there, and it never started afresh.
    wait_tick(dst_paths, before)
    if "userspace started" in dst_paths.console_log.read_text(errors="replace"):
        raise SystemExit("the guest booted again on the destination")
    src_paths.remove()
    return Run(direction=f"{src.name}->{dst.name}", wall_s=wall,
               job_elapsed_s=stats.elapsed_ms / 1000, downtime_ms=stats.downtime_ms,
               data_mib=stats.data_processed / 2**20), dst_paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    pool = LibvirtHosts()
    runs: list[Run] = []
    try:
        a, b = pool.get(2)
        spec = spec_on(a)
        paths = InstancePaths(a.instances_dir, SERVER_ID)
        prepare_instance_files(spec, paths)
        with Hypervisor(a.uri) as hv:
            hv.define(spec, paths)
            hv.start(SERVER_ID)
        wait_tick(paths, 2)
        src, dst = a, b
        for _ in range(args.runs):
            run, paths = migrate(src, dst, paths)
            runs.append(run)
            src, dst = dst, src
    finally:
        pool.close()

    walls = [r.wall_s for r in runs]
    downs = [r.downtime_ms for r in runs if r.downtime_ms is not None]
    summary = {
        "runs": len(runs), "load_average": os.getloadavg(),
        "wall_s": {"median": statistics.median(walls), "min": min(walls), "max": max(walls)},
        "downtime_ms": {"median": statistics.median(downs), "min": min(downs),
                        "max": max(downs)} if downs else None,
        "budget": {"wall_s": 5.0, "downtime_ms": MAX_DOWNTIME_MS},
    }
    if args.json:
        print(json.dumps({"summary": summary, "runs": [asdict(r) for r in runs]}, indent=1))
        return
    print("| run | direction | wall | job elapsed | downtime | data copied |")
    print("|---:|---|---:|---:|---:|---:|")
    for i, r in enumerate(runs, 1):
        down = f"{r.downtime_ms} ms" if r.downtime_ms is not None else "n/a"
        print(f"| {i} | {r.direction} | {r.wall_s:.2f} s | {r.job_elapsed_s:.2f} s | {down} "
              f"| {r.data_mib:.1f} MiB |")
    print(f"\nwall median {summary['wall_s']['median']:.2f} s (budget < 5 s); downtime "
          f"median {statistics.median(downs) if downs else 'n/a'} ms, max "
          f"{max(downs) if downs else 'n/a'} ms (budget < {MAX_DOWNTIME_MS} ms); "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
