"""Scaling reconciler cost: N groups with target tracking, CPU of one reconciler pass.

Sets up a fresh database (a temporary SQLite file, or ``--database-url``) with ``--groups``
scaling groups of ``--members`` ACTIVE members each on one up host, written straight through
the models, every group with a target tracking policy on ``cpu_util`` (target 50 %) and every
member with 10 s rollups at 50 % covering the metric window (so every pass evaluates every
group, reads its members' metrics, records its proposal, and holds: the steady state of a
fleet that is where it should be). Then it runs ``--passes`` passes of
``api.scaling.reconciler.run_pass`` in this process as the lease holder, ``--interval``
seconds apart, and prints one JSON summary: this process's CPU time per pass (user + system,
what an API process spends; a PostgreSQL server's own CPU is not in it), wall time per pass,
SQL statements per pass, and the load average.

    python -m bench.scaling_bench --groups 500 --members 2 --passes 5 --interval 10 \\
        [--database-url postgresql+psycopg://USER:PW@HOST/postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, insert

from api.config import Settings
from api.db import make_engine, make_sessionmaker, new_id, utcnow
from api.migrate import upgrade
from api.models import (
    Flavor,
    GuestMetricRollup,
    Host,
    Image,
    Project,
    ScalingGroup,
    ScalingMember,
    Server,
)
from api.scaling import reconciler
from bench.metering_bench import database

TARGET = 50.0
STEP = 10  # the finest rollup level (the reconciler's window reads it)


def setup(url: str, groups: int, members: int, data_dir: Path) -> None:
    """Create the groups, their members' servers and their metrics."""
    upgrade(url)
    engine = make_engine(url)
    now = utcnow()
    long_ago = now - timedelta(hours=1)  # every member is past its warm-up
    now_s = int(now.timestamp())
    # Buckets from two minutes ago to an hour ahead: the window stays covered while it runs.
    buckets = range(now_s - now_s % STEP - 120, now_s + 3600, STEP)
    with make_sessionmaker(engine)() as session, session.begin():
        project = Project(name=f"bench-{new_id()[:8]}")
        flavor = Flavor(name=f"bench-{new_id()[:8]}", vcpus=1, ram_mb=512, disk_gb=1)
        session.add_all([project, flavor])
        session.flush()
        image = Image(project_id=project.id, name="bench", status="active", disk_format="qcow2",
                      size=1, sha256="ab" * 32, properties={})
        host = Host(name="bench-host", availability_zone="nova", libvirt_uri="test:///default",
                    virt_type="qemu", architecture="x86_64", credential_digest="x",
                    last_heartbeat_at=now + timedelta(days=1))
        session.add_all([image, host])
        session.flush()
        policy = {"target": TARGET, "metric": "cpu_util", "tolerance": 0.1,
                  "scale_out_cooldown_s": 60, "scale_in_stabilization_s": 300,
                  "warmup_s": 120, "window_s": 60}
        for g in range(groups):
            group = ScalingGroup(project_id=project.id, user_id="bench", name=f"g{g}",
                                 flavor_id=flavor.id, image_id=image.id, min_size=1,
                                 max_size=10, desired=members, policy=policy,
                                 scheduled_actions=[], recommendations=[],
                                 next_seq=members + 1, created_at=long_ago)
            session.add(group)
            session.flush()
            ids = [new_id() for _ in range(members)]
            session.add_all(Server(id=sid, project_id=project.id, user_id="bench",
                                   name=f"g{g}-{i + 1}", flavor_id=flavor.id, vcpus=1,
                                   ram_mb=512, disk_gb=1, image_id=image.id, status="ACTIVE",
                                   host_id=host.id, created_at=long_ago, updated_at=long_ago)
                            for i, sid in enumerate(ids))
            session.flush()
            session.add_all(ScalingMember(group_id=group.id, seq=i + 1, server_id=sid,
                                          created_at=long_ago) for i, sid in enumerate(ids))
            session.execute(insert(GuestMetricRollup), [
                {"server_id": sid, "step": STEP, "bucket": b, "samples": 5,
                 "cpu_util_sum": 5 * TARGET, "memory_used_mb_sum": 5 * 100.0,
                 "disk_read_bps_sum": 0.0, "disk_write_bps_sum": 0.0,
                 "net_rx_bps_sum": 0.0, "net_tx_bps_sum": 0.0}
                for sid in ids for b in buckets])
    engine.dispose()


def run(url: str, passes: int, interval: float, data_dir: Path) -> dict[str, Any]:
    """Run the passes; CPU, wall time and statements of each."""
    settings = Settings(database_url=url, data_dir=data_dir)
    engine = make_engine(url)
    factory = make_sessionmaker(engine)
    statements = [0]

    @event.listens_for(engine, "before_cursor_execute")
    def count(*_: Any) -> None:
        statements[0] += 1

    cpu, wall, sql, groups = [], [], [], []
    load_before = os.getloadavg()
    for i in range(passes):
        if i:
            time.sleep(interval)
        statements[0] = 0
        c0, t0 = time.process_time(), time.perf_counter()
        result = reconciler.run_pass(factory, settings, "bench")
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
        sql.append(statements[0])
        groups.append(result.groups)
        assert result.leader and not result.launched, result
    load_after = os.getloadavg()
    engine.dispose()
    return {
        "groups_per_pass": groups, "passes": passes, "interval_s": interval,
        "cpu_s_per_pass": [round(c, 3) for c in cpu],
        "cpu_s_per_pass_median": round(statistics.median(cpu), 3),
        "wall_s_per_pass": [round(w, 3) for w in wall],
        "statements_per_pass": sql,
        "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)],
    }


def main(argv: list[str] | None = None) -> None:
    """The command line; prints the JSON summary."""
    p = argparse.ArgumentParser(prog="bench.scaling_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", type=int, default=500)
    p.add_argument("--members", type=int, default=2)
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--database-url", default=None,
                   help="a PostgreSQL server URL: a fresh database is made there and dropped "
                        "(default: a temporary SQLite file)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="scaling-bench-") as tmp, \
            database(args.database_url) as url:
        setup(url, args.groups, args.members, Path(tmp))
        summary = run(url, args.passes, args.interval, Path(tmp))
    summary["database"] = url.split(":", 1)[0]
    summary["groups"], summary["members_per_group"] = args.groups, args.members
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
