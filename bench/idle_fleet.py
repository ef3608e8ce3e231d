"""What an idle fleet costs the API: N simulated hosts (bench/fleet.py) heartbeating every
``--heartbeat`` seconds and long-polling, holding M idle ACTIVE servers between them.

    python -m bench.idle_fleet --api http://127.0.0.1:8774 --database-url sqlite:///... \\
        --admin-token $MINICLOUD_TOKEN --hosts 1000 --servers 10000 --measure-pid PID

Enrolls the fleet all at once (the enrollment storm: seconds until every host is up, 5xx
count), inserts the idle servers straight into the database (spread evenly over the fleet,
ACTIVE and running: creating 10,000 through the API would measure creates, not idling) with
the usage ledger the real API leaves behind (``created`` at placement, ``running`` when the
agent first saw it run: the billing subscriber's rows for one server, copied for the
others) while every host already
heartbeats and long-polls, lets every host see them and confirm them (``--settle`` seconds,
at least one long-poll wait), then
measures the API processes' CPU over ``--window`` seconds. Prints one JSON summary with the
load average of the machine next to the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import create_engine, insert, select
from sqlalchemy.orm import Session

from api.models import Flavor, Image, LedgerEntry, Project, Server, UsagePiece, UsageServer
from api.servers.changes import Change
from api.servers.subscribers import publish
from bench.fleet import Fleet, cpu_seconds


def insert_servers(database_url: str, host_ids: list[str], count: int) -> None:
    """``count`` ACTIVE, running servers spread evenly over ``host_ids`` (one transaction),
    each with the ledger entries a create and the agent's first report leave.

    The billing subscriber records them for the first server; every other server gets copies
    of the rows it wrote (the same flavor, project and time, its own server id): the
    subscriber's 15 statements per server would take minutes at 100,000 servers."""
    engine = create_engine(database_url)
    with Session(engine) as session, session.begin():
        project = session.scalars(select(Project).order_by(Project.name)).first()
        flavor = session.scalars(select(Flavor).order_by(Flavor.vcpus)).first()
        assert project is not None and flavor is not None, "bootstrap the API first"
        image = Image(project_id=project.id, name=f"idle-{time.time_ns()}", status="active",
                      disk_format="qcow2", size=1024, sha256="ab" * 32, properties={})
        session.add(image)
        session.flush()
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = [
                {"project_id": project.id, "user_id": "bench", "name": f"idle-{i}",
                 "flavor_id": flavor.id, "vcpus": flavor.vcpus, "ram_mb": flavor.ram_mb,
                 "disk_gb": flavor.disk_gb, "image_id": image.id, "status": "ACTIVE",
                 "task_state": None, "power_state": "running",
                 "host_id": host_ids[i % len(host_ids)], "availability_zone": "nova",
                 "addresses": [], "generation": 1, "created_at": now, "updated_at": now}
                for i in range(count)]
        for start in range(0, len(rows), 1000):
            session.execute(insert(Server), rows[start:start + 1000])
        # Without these entries every host's first confirming heartbeat would record the
        # first ``running`` of each of its servers: a cost of the bench, not of idling.
        ids = list(session.scalars(select(Server.id).where(Server.image_id == image.id)))
        first = session.get_one(Server, ids[0])
        publish(session, Change("created", first, now, "BUILD"))
        publish(session, Change("observed", first, now, "ACTIVE", observed="running"))
        session.flush()
        for model in (LedgerEntry, UsagePiece, UsageServer):
            table = model.__table__
            generated = {c.name for c in table.primary_key if c.autoincrement is True}
            written = [{k: v for k, v in row.items() if k not in generated}
                       for row in session.execute(
                           select(table).where(table.c.server_id == first.id)).mappings()]
            copies = [{k: v.replace(first.id, sid) if isinstance(v, str) else v
                       for k, v in row.items()} for sid in ids[1:] for row in written]
            for start in range(0, len(copies), 5000):
                session.execute(insert(model), copies[start:start + 5000])
    engine.dispose()


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; return the summary it prints."""
    p = argparse.ArgumentParser(prog="bench.idle_fleet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api", action="append", required=True)
    p.add_argument("--database-url", required=True)
    p.add_argument("--admin-token", default=os.environ.get("MINICLOUD_TOKEN"))
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--servers", type=int, default=10000)
    p.add_argument("--heartbeat", type=float, default=10.0)
    p.add_argument("--long-poll-wait", type=float, default=30.0)
    p.add_argument("--settle", type=float, default=30.0)
    p.add_argument("--window", type=float, default=60.0)
    p.add_argument("--measure-pid", type=int, action="append", default=[])
    p.add_argument("--py-spy", metavar="OUT", help="also sample the first --measure-pid "
                   "with py-spy over the window (collapsed stacks to OUT; py-spy on PATH)")
    args = p.parse_args(argv)
    fleet = Fleet(args.api, args.admin_token, heartbeat=args.heartbeat,
                  long_poll_wait=args.long_poll_wait, trust_active=True)
    began = time.monotonic()
    try:
        await fleet.enroll(args.hosts)
        enrolled_in = time.monotonic() - began
        storm_errors = fleet.stats.server_errors
        up_after_enroll = await fleet.hosts_up()
        up_in = time.monotonic() - began
        # The fleet heartbeats while the servers go in, as a live fleet does: a host silent
        # for half the down limit (the insert takes that long on PostgreSQL) would send its
        # next heartbeat down the full, locked path, which is not what idling costs. The
        # hosts learn of their servers at their next long-poll answer.
        fleet.start()
        await asyncio.to_thread(insert_servers, args.database_url,
                                [h.host_id for h in fleet.hosts], args.servers)
        await asyncio.sleep(args.settle)
        cpu0 = {pid: cpu_seconds(pid) for pid in args.measure_pid}
        calls0 = sum(fleet.stats.calls.values())
        t0 = time.monotonic()
        spy = (await asyncio.create_subprocess_exec(
            "py-spy", "record", "--nonblocking", "--format", "raw", "--rate", "50",
            "--duration", str(int(args.window)), "--pid", str(args.measure_pid[0]),
            "--output", args.py_spy, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL) if args.py_spy else None)
        await asyncio.sleep(args.window)
        elapsed = time.monotonic() - t0
        if spy is not None:
            await spy.wait()
        cpu = {pid: cpu_seconds(pid) - cpu0[pid] for pid in args.measure_pid}
        calls = sum(fleet.stats.calls.values()) - calls0
        load = os.getloadavg()
        up = await fleet.hosts_up()
        summary: dict[str, Any] = {
            "hosts": args.hosts, "servers": args.servers, "heartbeat_s": args.heartbeat,
            "long_poll_wait_s": args.long_poll_wait,
            "enroll_storm": {"enrolled_in_s": round(enrolled_in, 1),
                             "all_up_in_s": round(up_in, 1), "up": up_after_enroll,
                             "failed": len(fleet.failed), "server_errors": storm_errors},
            "hosts_up": up, "server_errors": fleet.stats.server_errors,
            "window_s": round(elapsed, 1), "requests_per_s": round(calls / elapsed, 1),
            "api_cpu_percent_of_one_core": {
                str(pid): round(100 * c / elapsed, 1) for pid, c in cpu.items()},
            "load_average": [round(x, 2) for x in load],
            "calls": fleet.stats.summary(),
        }
    finally:
        await fleet.close()
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    result = asyncio.run(main())
    sys.exit(0 if result["server_errors"] == 0 else 1)
