"""Guest metrics ingestion cost: N hosts x M servers reporting every interval, API CPU measured.

Sets up a fresh database (a temporary SQLite file, or ``--database-url``) with the hosts and
their ACTIVE servers written straight through the models (no API calls), starts one real
``minicloud-api`` process on it, then plays every host's agent: one
``POST /v1/agent/guest-metrics`` per host per interval with all its servers' cumulative
counters (the agent's wire model), the hosts spread evenly over the interval. After one
interval of warm-up (the baselines) it measures the API process's CPU time (user + system,
from /proc) over ``--window`` seconds and prints one JSON summary: CPU % of one core, requests
and samples per second, latency percentiles, non-2xx answers, and the load average.

    python -m bench.guest_metrics_bench --hosts 100 --servers-per-host 100 --interval 10 \\
        --window 60 [--database-url postgresql+psycopg://USER:PW@HOST/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from api.db import make_engine, make_sessionmaker, new_id
from api.migrate import upgrade
from api.models import Flavor, Host, Image, Project, Server
from api.security import HOST_CREDENTIAL_PREFIX, digest, new_secret
from bench.fleet import cpu_seconds
from bench.metering_bench import database
from compute_agent.client import GuestSample

REPO = Path(__file__).resolve().parents[1]


def setup(url: str, hosts: int, per_host: int) -> list[tuple[str, list[str]]]:
    """Create the hosts and their servers; return (credential, server ids) per host."""
    upgrade(url)
    engine = make_engine(url)
    fleet = []
    with make_sessionmaker(engine)() as session, session.begin():
        project = Project(name=f"bench-{new_id()[:8]}")
        flavor = Flavor(name=f"bench-{new_id()[:8]}", vcpus=2, ram_mb=2048, disk_gb=10)
        session.add_all([project, flavor])
        session.flush()
        image = Image(project_id=project.id, name="bench", status="active", disk_format="qcow2",
                      size=1, sha256="ab" * 32, properties={})
        session.add(image)
        session.flush()
        for h in range(hosts):
            credential = new_secret(HOST_CREDENTIAL_PREFIX)
            host = Host(name=f"bench-host-{h}", availability_zone="nova",
                        libvirt_uri="test:///default", virt_type="qemu",
                        architecture="x86_64", credential_digest=digest(credential))
            session.add(host)
            session.flush()
            ids = [new_id() for _ in range(per_host)]
            session.add_all(Server(id=sid, project_id=project.id, user_id="bench",
                                   name=f"vm-{h}-{i}", flavor_id=flavor.id, vcpus=2,
                                   ram_mb=2048, disk_gb=10, image_id=image.id, status="ACTIVE",
                                   host_id=host.id) for i, sid in enumerate(ids))
            fleet.append((credential, ids))
    engine.dispose()
    return fleet


def start_api(url: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """One ``minicloud-api`` process on a free loopback port; waits until it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MINICLOUD_DATABASE_URL=url, MINICLOUD_DATA_DIR=str(data_dir),
               MINICLOUD_LOG_LEVEL="WARNING", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", "from api.server import run; run()",
                             "--host", "127.0.0.1", "--port", str(port), "--no-migrate"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the API did not start")


class Fleet:
    """Every host's agent, reporting cumulative counters once per interval."""

    def __init__(self, base: str, fleet: list[tuple[str, list[str]]], interval: float) -> None:
        self.base, self.fleet, self.interval = base, fleet, interval
        self.cpu = {sid: 0 for _, ids in fleet for sid in ids}
        self.statuses: Counter[int] = Counter()
        self.latencies: list[float] = []
        self.samples = 0
        self.measuring = False

    def batch(self, ids: list[str]) -> dict[str, Any]:
        samples = []
        for sid in ids:
            # Some CPU each interval (0-2 vCPUs' worth), and a little disk and network.
            self.cpu[sid] += int(random.random() * 2 * self.interval * 1e9)
            samples.append(GuestSample(server_id=sid, cpu_time_ns=self.cpu[sid], vcpus=2,
                                       memory_kib=2 * 1024 * 1024, memory_rss_kib=900_000,
                                       disk_read_bytes=self.cpu[sid] // 1000,
                                       disk_write_bytes=self.cpu[sid] // 3000,
                                       net_rx_bytes=self.cpu[sid] // 500,
                                       net_tx_bytes=self.cpu[sid] // 700).model_dump(mode="json"))
        return {"at": datetime.now(UTC).isoformat(), "samples": samples}

    async def host(self, client: httpx.AsyncClient, index: int, stop: float) -> None:
        credential, ids = self.fleet[index]
        headers = {"Authorization": f"Bearer {credential}"}
        await asyncio.sleep(index * self.interval / len(self.fleet))
        next_at = time.monotonic()
        while time.monotonic() < stop:
            started = time.monotonic()
            try:
                r = await client.post("/v1/agent/guest-metrics", json=self.batch(ids),
                                      headers=headers)
                status = r.status_code
            except httpx.TransportError:
                status = 0
            if self.measuring:
                self.statuses[status] += 1
                self.latencies.append(time.monotonic() - started)
                self.samples += len(ids) if status == 200 else 0
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def run(base: str, fleet: list[tuple[str, list[str]]], interval: float, window: float,
              pid: int) -> dict[str, Any]:
    """Warm up one interval, then measure the API's CPU over ``window`` seconds."""
    sim = Fleet(base, fleet, interval)
    stop = time.monotonic() + interval + window + 1
    async with httpx.AsyncClient(base_url=base, timeout=30,
                                 limits=httpx.Limits(max_connections=32)) as client:
        tasks = [asyncio.create_task(sim.host(client, i, stop)) for i in range(len(fleet))]
        await asyncio.sleep(interval)
        sim.measuring = True
        load_before = os.getloadavg()
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(window)
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
        sim.measuring = False
        load_after = os.getloadavg()
        await asyncio.gather(*tasks)
    lat = sorted(sim.latencies)
    elapsed = t1 - t0
    return {
        "hosts": len(fleet), "servers": sum(len(ids) for _, ids in fleet),
        "interval_s": interval, "window_s": round(elapsed, 1),
        "api_cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / elapsed, 1),
        "requests_per_s": round(sum(sim.statuses.values()) / elapsed, 1),
        "samples_per_s": round(sim.samples / elapsed, 1),
        "statuses": dict(sim.statuses),
        "latency_ms": {"p50": round(1000 * statistics.median(lat), 1) if lat else None,
                       "p99": round(1000 * lat[int(0.99 * (len(lat) - 1))], 1) if lat else None},
        "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)],
    }


def main(argv: list[str] | None = None) -> None:
    """The command line; prints the JSON summary."""
    p = argparse.ArgumentParser(prog="bench.guest_metrics_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--servers-per-host", type=int, default=100)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--window", type=float, default=60.0)
    p.add_argument("--database-url", default=None,
                   help="a PostgreSQL server URL: a fresh database is made there and dropped "
                        "(default: a temporary SQLite file)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gm-bench-") as tmp, \
            database(args.database_url) as url:
        fleet = setup(url, args.hosts, args.servers_per_host)
        proc, base = start_api(url, Path(tmp))
        try:
            summary = asyncio.run(run(base, fleet, args.interval, args.window, proc.pid))
        finally:
            proc.terminate()
            proc.wait(30)
    summary["database"] = url.split(":", 1)[0]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
