#!/usr/bin/env python3
"""Drain of a host of N servers on a simulated fleet: total time, per-server move time,
allocations afterwards.

A fresh database (a temporary SQLite file, or a new database on ``--database-url``'s
PostgreSQL server), one real ``minicloud-api`` process, and real agents on libvirt test-driver
nodes running as threads of this process (``tests/e2e/stack.py``): one source host with
``--servers`` tiny servers (every other one stopped, so the drain moves ACTIVE and SHUTOFF
servers), then ``--destinations`` empty hosts in the same zone. ``POST /v1/hosts/{id}/drain``
starts the clock; it stops when the drain reads ``drained`` and every server is settled
(ACTIVE or SHUTOFF as before, no task) on another host.

Reported: total drain time (wall, from the request to the last server settled), each server's
move time (its migration record's ``finished_at - created_at``, median and p95), and whether
the allocations are right (the source holds nothing, the destinations hold exactly N tiny
servers, every server in its original power state, the source's node has no domain left).

    PYTHONPATH=. /work/main/.venv/bin/python bench/drain_bench.py --servers 20 [--json] \\
        [--database-url postgresql+psycopg://USER:PW@HOST/postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from api.config import Settings
from api.migrate import upgrade
from bench.metering_bench import database
from compute_agent.spec import InstancePaths
from tests.conftest import ADMIN_TOKEN
from tests.e2e.stack import (
    ADMIN,
    ApiProcess,
    ThreadAgent,
    action,
    allocated,
    create_server,
    server,
    start_test_driver_agent,
    upload_image,
    wait_until,
)
from tests.e2e.two_hosts import TINY
from tests.factories import make_account

WAIT = 600.0  # bound of every wait, so a broken run fails instead of hanging


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def settled(api: str, sid: str, status: str, source: str) -> bool:
    s = server(api, ADMIN, sid)
    return s["status"] == status and s["task_state"] is None and s["host"] != source


def run(url: str, n: int, destinations: int, home: Path) -> dict[str, Any]:
    upgrade(url)
    settings = Settings(database_url=url, data_dir=home / "data")
    Path(settings.data_dir).mkdir(parents=True)
    os.environ["MINICLOUD_BOOTSTRAP_ADMIN_TOKEN"] = ADMIN_TOKEN
    proc = ApiProcess(settings)
    proc.start()
    agents: list[ThreadAgent] = []
    try:
        api = proc.url
        zone = "drain-bench"
        size = {"vcpus": 4 * n, "ram_mb": 1024 * n, "disk_gb": 4 * n, "network": "none",
                "az": zone}
        source = start_test_driver_agent(api, home / "source", name="source", **size)
        agents.append(source)
        disk = home / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"],
                       check=True)
        with httpx.Client(base_url=api) as c:
            owner = make_account(c, ADMIN)
        r = httpx.put(f"{api}/v1/quotas/{owner.project_id}", headers=ADMIN,
                      json={"instances": n, "vcpus": n, "ram_mb": 512 * n, "disk_gb": n})
        assert r.status_code == 200, r.text
        image = upload_image(api, owner.headers, disk.read_bytes(), "qcow2")["id"]
        ids = [create_server(api, owner.headers, "tiny", image, availability_zone=zone)["id"]
               for _ in range(n)]
        wait_until(lambda: all(settled(api, sid, "ACTIVE", "") for sid in ids), WAIT,
                   "every server ACTIVE")
        status = {sid: "SHUTOFF" if i % 2 else "ACTIVE" for i, sid in enumerate(ids)}
        for sid, st in status.items():
            if st == "SHUTOFF":
                action(api, ADMIN, sid, "stop")
        wait_until(lambda: all(settled(api, sid, st, "") for sid, st in status.items()), WAIT,
                   "half of the servers SHUTOFF")
        for i in range(destinations):
            agents.append(start_test_driver_agent(api, home / f"dest{i}", name=f"dest{i}",
                                                  **size))

        started = time.perf_counter()
        r = httpx.post(f"{api}/v1/hosts/{source.host_id}/drain", headers=ADMIN, timeout=60)
        assert r.status_code == 202, r.text
        accepted = time.perf_counter() - started
        refused = r.json()["refused"]

        def drained() -> bool:
            view = httpx.get(f"{api}/v1/hosts/{source.host_id}/drain", headers=ADMIN).json()
            return bool(view["state"] == "drained" and all(
                settled(api, sid, st, source.name) for sid, st in status.items()))
        wait_until(drained, WAIT, "the host drained", poll=0.1)
        total = time.perf_counter() - started

        moves: list[float] = []
        for sid in ids:
            ms = httpx.get(f"{api}/v1/servers/{sid}/migrations", headers=ADMIN).json()
            [m] = ms["migrations"]
            assert m["status"] == "completed", m
            moves.append((datetime.fromisoformat(m["finished_at"])
                          - datetime.fromisoformat(m["created_at"])).total_seconds())
        # The source removes its copies (domain, then files) once the API no longer lists them.
        wait_until(lambda: not any(InstancePaths(source.agent.instances, sid).directory.exists()
                                   for sid in ids), WAIT, "the source's copies removed")
        source.agent.stop()
        source.thread.join(60)
        left_on_source = sorted(source.agent.hv.list_managed())  # its thread has ended
        spread = {a.name: allocated(api, a.host_id) for a in agents}
        placed = {a.name: sum(1 for sid in ids if server(api, ADMIN, sid)["host"] == a.name)
                  for a in agents}
        expected_dest = {rc: sum(spread[a.name][rc] for a in agents[1:]) for rc in TINY}
        correct = (spread["source"] == dict.fromkeys(TINY, 0) and not left_on_source
                   and expected_dest == {rc: v * n for rc, v in TINY.items()}
                   and all(spread[a.name] == {rc: v * placed[a.name] for rc, v in TINY.items()}
                           for a in agents))
        return {
            "servers": n, "destinations": destinations,
            "database": url.split(":", 1)[0].split("+", 1)[0],
            "drain_request_s": round(accepted, 3), "drain_total_s": round(total, 2),
            "move_s": {"median": round(statistics.median(moves), 2),
                       "p95": round(p95(moves), 2), "max": round(max(moves), 2)},
            "refused": refused, "domains_left_on_source": left_on_source,
            "servers_per_host": placed, "allocations": spread,
            "allocations_correct": correct, "loadavg": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        for a in agents:
            a.agent.stop()
        for a in agents:
            a.stop()
        proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--destinations", type=int, default=2)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, database(args.database_url,
                                                          Path(tmp) / "bench.db") as url:
        result = run(url, args.servers, args.destinations, Path(tmp))
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
