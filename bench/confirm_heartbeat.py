"""API CPU per heartbeat whose observations only confirm the stored state.

    python -m bench.confirm_heartbeat --api http://127.0.0.1:18990 \\
        --database-url postgresql+psycopg://minicloud:minicloud@127.0.0.1/bench_confirm \\
        --admin-token $MINICLOUD_TOKEN --measure-pid PID --servers 10 --beats 2000

Enrolls one host, inserts ``--servers`` ACTIVE, running servers on it with their ledger rows
(``bench.idle_fleet.insert_servers``), then sends ``--beats`` heartbeats one after the other,
each carrying every server "running" (what a host's first heartbeat after its servers appear,
and its periodic full report, carry), and prints the API process's CPU per heartbeat (from
/proc) and the answers' statuses as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from datetime import UTC, datetime

import httpx

from bench.fleet import cpu_seconds
from bench.idle_fleet import insert_servers


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run it; return the summary it prints."""
    p = argparse.ArgumentParser(prog="bench.confirm_heartbeat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api", required=True)
    p.add_argument("--database-url", required=True)
    p.add_argument("--admin-token", default=os.environ.get("MINICLOUD_TOKEN"))
    p.add_argument("--measure-pid", type=int, required=True)
    p.add_argument("--servers", type=int, default=10)
    p.add_argument("--beats", type=int, default=2000)
    args = p.parse_args(argv)
    admin = {"Authorization": f"Bearer {args.admin_token}"}
    with httpx.Client(base_url=args.api, timeout=30) as c:
        token = c.post("/v1/hosts/enrollment-tokens", headers=admin).json()["token"]
        r = c.post("/v1/agent/enroll", json={
            "token": token, "name": f"confirm-{time.time_ns()}", "libvirt_uri": "test:///default",
            "virt_type": "qemu", "architecture": "x86_64"})
        host_id, credential = r.json()["host_id"], r.json()["credential"]
        agent = {"Authorization": f"Bearer {credential}"}
        c.put("/v1/agent/inventory", headers=agent, json={
            "VCPU": {"total": 1024}, "MEMORY_MB": {"total": 1 << 22},
            "DISK_GB": {"total": 1 << 16}})
        insert_servers(args.database_url, [host_id], args.servers)
        desired = c.get("/v1/agent/servers", headers=agent).json()
        servers = [s["server_id"] for s in desired["servers"]]
        c.post("/v1/agent/heartbeat", headers=agent, json={"observed": [], "full": True})
        statuses: Counter[int] = Counter()
        cpu0, t0 = cpu_seconds(args.measure_pid), time.monotonic()
        for _ in range(args.beats):
            now = datetime.now(UTC).isoformat()
            r = c.post("/v1/agent/heartbeat", headers=agent, json={
                "observed": [{"server_id": s, "state": "running", "seen_at": now}
                             for s in servers], "full": False})
            statuses[r.status_code] += 1
        cpu, wall = cpu_seconds(args.measure_pid) - cpu0, time.monotonic() - t0
    summary: dict[str, object] = {
        "servers": len(servers), "beats": args.beats, "statuses": dict(statuses),
        "last_answer": r.json(), "api_cpu_ms_per_beat": round(1000 * cpu / args.beats, 3),
        "wall_ms_per_beat": round(1000 * wall / args.beats, 3)}
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
