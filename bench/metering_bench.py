"""Metering benchmark: a month's usage report over a 1,000,000-entry ledger.

Builds a fresh database (SQLite file or a new PostgreSQL database), migrates it, bulk-loads a
synthetic year of ledger entries (10,000 servers in 100 projects, 100 entries each) together
with the derived pieces the ledger maintains at insert time (computed by the same
``api.usage.rules.pieces``), then times ``build_report`` + JSON rendering for one month:

* all 100 projects (budget: 1 s), and
* one project (budget: 100 ms),

with two rate cards in force during the month (two rate segments, the realistic worst case).
Also times one ``ledger.record`` call on a server with 100 entries (the cost the servers API and
the agent endpoints pay per billable change).

With ``--under-fleet N`` it then also measures the same month report through the real API:
one ``minicloud-api`` process on the loaded database answers ``GET /v1/usage`` for the month
(all projects, and one project) over HTTP, first with nothing else running, then while N
simulated hosts (bench/fleet.py, in a separate process) heartbeat every ``--fleet-heartbeat``
seconds and long-poll into the same database. It prints median / p95 / max of each request
side by side, the API's CPU meanwhile, the 5xx count and how many hosts are still up, and
exits 1 when any answer was a 5xx or a host was not up at the end. ``--trace-report FILE``
runs that API as bench/report_trace_api.py and splits each report's time in it into CPU,
waiting for a CPU and blocked.

Usage::

    python bench/metering_bench.py                       # SQLite in a temporary folder
    python bench/metering_bench.py --database-url postgresql+psycopg://postgres:postgres@127.0.0.1/postgres
    python bench/metering_bench.py --under-fleet 1000    # + over HTTP, without and under a fleet
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import Engine, make_url

from api.db import make_engine, make_sessionmaker
from api.migrate import upgrade
from api.models import LedgerEntry, Project, RateCard, UsagePiece, UsageServer
from api.usage import ledger, reports
from api.usage.repository import piece_rows
from api.usage.rules import Entry, epoch, from_epoch, pieces, state_after

YEAR_START = epoch(datetime(2026, 1, 1, tzinfo=UTC))
YEAR_END = epoch(datetime(2027, 1, 1, tzinfo=UTC))
MONTH = (datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 7, 1, tzinfo=UTC))
NOW = datetime(2026, 12, 31, tzinfo=UTC)
SIZES = [(1, 512, 1), (1, 2048, 20), (2, 4096, 40), (4, 8192, 80)]
ADMIN_TOKEN = "mcac_bench-admin-token-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def database(url: str | None, sqlite_file: Path | None = None) -> Iterator[str]:
    """A new empty database: an SQLite file, or a fresh database on the PostgreSQL server."""
    if not url or not url.startswith("postgresql"):
        if sqlite_file is not None:
            yield f"sqlite:///{sqlite_file}"
            return
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / 'bench.db'}"
        return
    server = make_url(url)
    name = f"mc_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def synthesize(servers: int, projects: int, per_server: int,
               seed: int) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """Yield (project, server, ledger rows) with lifecycles spread over 2026."""
    rnd = random.Random(seed)
    project_ids = [str(uuid.UUID(int=rnd.getrandbits(128))) for _ in range(projects)]
    seq = 0
    for i in range(servers):
        project = project_ids[i % projects]
        server = str(uuid.UUID(int=rnd.getrandbits(128)))
        t = rnd.randrange(YEAR_START, YEAR_START + 300 * 86400)
        gap = max(120, (YEAR_END - t) // per_server)
        size = rnd.choice(SIZES)
        rows = []
        running = False
        for n in range(per_server):
            if n == 0:
                kind = "created"
            elif n == per_server - 1 and rnd.random() < 0.3:
                kind = "deleted"
            else:
                r = rnd.random()
                if r < 0.04:
                    kind, size = "resized", rnd.choice(SIZES)
                elif r < 0.06 and running:
                    kind = "host_down"
                else:
                    kind = "stopped" if running else "running"
                running = kind == "running" or (running and kind == "resized")
            seq += 1
            rows.append({
                "seq": seq, "idempotency_key": f"{server}:{n}", "kind": kind,
                "project_id": project, "server_id": server, "flavor_id": None,
                "vcpus": size[0], "ram_mb": size[1], "disk_gb": size[2],
                "at": from_epoch(t), "at_s": t, "reported_at": None, "clamped": False,
                "source": "api" if kind in ("created", "resized", "deleted") else "agent",
                "reason": None, "admin_id": None, "amount": None, "recorded_at": from_epoch(t),
            })
            t += rnd.randrange(30, 2 * gap)
        yield project, server, rows


def _copy(engine: Engine, table: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for r in rows:
                copy.write_row([r[c] for c in columns])
        raw.commit()
    finally:
        raw.close()


def load(engine: Engine, servers: int, projects: int, per_server: int) -> tuple[int, int]:
    """Bulk-load ledger entries and their derived rows; return (entries, pieces)."""
    ledger_cols = [c.name for c in LedgerEntry.__table__.columns]
    piece_cols = [c.name for c in UsagePiece.__table__.columns if c.name != "id"]
    server_cols = [c.name for c in UsageServer.__table__.columns]
    pg = engine.dialect.name == "postgresql"
    n_entries = n_pieces = 0
    batch_l: list[dict[str, Any]] = []
    batch_p: list[dict[str, Any]] = []
    batch_s: list[dict[str, Any]] = []

    def flush() -> None:
        if pg:
            _copy(engine, "usage_ledger", ledger_cols, batch_l)
            _copy(engine, "usage_pieces", piece_cols, batch_p)
            _copy(engine, "usage_servers", server_cols, batch_s)
        else:
            with engine.begin() as conn:
                conn.execute(insert(LedgerEntry.__table__), batch_l)
                conn.execute(insert(UsagePiece.__table__), batch_p)
                conn.execute(insert(UsageServer.__table__), batch_s)
        batch_l.clear()
        batch_p.clear()
        batch_s.clear()

    for project, server, rows in synthesize(servers, projects, per_server, seed=42):
        entries = [Entry(r["seq"], r["at_s"], r["kind"], r["vcpus"], r["ram_mb"], r["disk_gb"])
                   for r in rows]
        ps = piece_rows(project, server, pieces(entries))
        batch_l.extend(rows)
        batch_p.extend(ps)
        batch_s.append({"server_id": server, "project_id": project,
                        "first_s": rows[0]["at_s"], "last_s": rows[-1]["at_s"],
                        "state": state_after(entries)})
        n_entries += len(rows)
        n_pieces += len(ps)
        if len(batch_l) >= 100_000:
            flush()
    if batch_l:
        flush()
    if pg:
        # COPY bypassed the identity sequence; move it past the loaded rows.
        with engine.begin() as conn:
            conn.execute(text("SELECT setval(pg_get_serial_sequence('usage_ledger', 'seq'), "
                              "(SELECT max(seq) FROM usage_ledger))"))
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    return n_entries, n_pieces


def timed(fn: Any, repeat: int) -> tuple[float, float, Any]:
    """(median, max) seconds of ``repeat`` calls after one warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), max(times), result

# ---------------------------------------------------------------- over HTTP, under a fleet


def add_projects(url: str) -> None:
    """A ``projects`` row for every project in the ledger (the API answers 404 for a report
    of a project it does not know)."""
    engine = make_engine(url)
    with engine.begin() as conn:
        known = set(conn.scalars(select(Project.id)))
        ids = sorted(set(conn.scalars(select(UsageServer.project_id).distinct())) - known)
        if ids:
            conn.execute(insert(Project), [
                {"id": pid, "name": f"bench-{pid[:8]}", "description": "", "generation": 0,
                 "created_at": datetime.now(UTC)} for pid in ids])
    engine.dispose()


@contextmanager
def api_process(url: str, port: int, work: Path,
                trace: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """One real ``minicloud-api`` process on ``url`` (as bench/idle_fleet_run.sh starts it),
    stopped on exit; with ``trace``, bench/report_trace_api.py logging each report's phases
    there."""
    env = {**os.environ, "MINICLOUD_DATABASE_URL": url, "MINICLOUD_DATA_DIR": str(work / "data"),
           "MINICLOUD_LOG_LEVEL": "WARNING", "MINICLOUD_BOOTSTRAP_ADMIN_TOKEN": ADMIN_TOKEN,
           "PYTHONPATH": str(ROOT)}
    program = ["-c", "from api.server import run; run()"]
    if trace is not None:
        env["MINICLOUD_REPORT_TRACE"] = str(trace)
        program = [str(ROOT / "bench" / "report_trace_api.py")]
    with open(work / "api.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *program, "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(240):
                if proc.poll() is not None:
                    raise RuntimeError(f"the API exited; see {work / 'api.log'}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).is_success:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            else:
                raise RuntimeError("the API did not answer /healthz within 120 s")
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _fleet_run(api: str, hosts: int, heartbeat: float, up_timeout: float,
                     conn: Any) -> None:
    from bench.fleet import Fleet

    fleet = Fleet([api], ADMIN_TOKEN, heartbeat=heartbeat, long_poll_wait=30.0)
    began = time.monotonic()
    try:
        await fleet.enroll(hosts)
        fleet.start()
        up = await fleet.hosts_up()
        while up < len(fleet.hosts) and time.monotonic() - began < up_timeout:
            await asyncio.sleep(2.0)
            up = await fleet.hosts_up()
        conn.send({"enrolled": len(fleet.hosts), "enroll_failed": len(fleet.failed),
                   "up": up, "up_after_s": round(time.monotonic() - began, 1),
                   "server_errors": fleet.stats.server_errors})
        await asyncio.to_thread(conn.recv)  # the parent's "stop"
        conn.send({"up": await fleet.hosts_up(), "server_errors": fleet.stats.server_errors,
                   "calls": fleet.stats.summary()})
    finally:
        await fleet.close()


def fleet_process(api: str, hosts: int, heartbeat: float, up_timeout: float, conn: Any) -> None:
    """The simulated fleet, in its own process so that its event loop never delays the
    timed requests: enroll, start, report once all are up (or the timeout passed), run until
    told to stop, report again."""
    asyncio.run(_fleet_run(api, hosts, heartbeat, up_timeout, conn))


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def run_queue_waits(pid: int) -> dict[str, int]:
    """Nanoseconds each live thread of ``pid`` has spent runnable but waiting for a CPU (from
    /proc/PID/task/*/schedstat): how much of a request's time the machine, not the API, took."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):  # the thread ended
            out[task.name] = int((task / "schedstat").read_text().split()[1])
    return out


def waited_since(pid: int, before: dict[str, int]) -> float:
    """Seconds waited for a CPU since ``before``, summed over threads (a thread that ended
    meanwhile is left out: an undercount, never negative)."""
    return sum(ns - before.get(tid, 0) for tid, ns in run_queue_waits(pid).items()) / 1e9


def timed_http(client: httpx.Client, params: dict[str, str], repeat: int,
               api_pid: int) -> dict[str, Any]:
    """Time ``repeat`` report requests after one warm-up; the API's CPU meanwhile."""
    from bench.fleet import cpu_seconds

    client.get("/v1/usage", params=params)
    statuses: Counter[int] = Counter()
    times = []
    projects = 0
    cpu0, wait0, t0 = cpu_seconds(api_pid), run_queue_waits(api_pid), time.perf_counter()
    for _ in range(repeat):
        t = time.perf_counter()
        r = client.get("/v1/usage", params=params)
        times.append(time.perf_counter() - t)
        statuses[r.status_code] += 1
        if r.is_success:
            projects = r.text.count('"project_id"')
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(api_pid) - cpu0
    wait = waited_since(api_pid, wait0)
    p95 = statistics.quantiles(times, n=20, method="inclusive")[-1] if repeat > 1 else times[0]
    return {"median": statistics.median(times), "p95": p95, "max": max(times),
            "statuses": dict(statuses), "5xx": sum(n for s, n in statuses.items() if s >= 500),
            "projects": projects, "cpu": 100 * cpu / wall, "wait": 100 * wait / wall,
            "load": _load()}


def cpu_window(api_pid: int, seconds: float) -> tuple[float, float]:
    """The API's CPU and run-queue wait over ``seconds`` of doing nothing here, % of one
    core."""
    from bench.fleet import cpu_seconds

    cpu0, wait0, t0 = cpu_seconds(api_pid), run_queue_waits(api_pid), time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - t0
    return 100 * (cpu_seconds(api_pid) - cpu0) / wall, 100 * waited_since(api_pid, wait0) / wall


def trace_summary(lines: list[str], label: str) -> None:
    """Mean wall = CPU + waiting for a CPU + blocked (ms) of each traced phase of the
    all-projects reports (bench/report_trace_api.py), and the longest wall."""
    by: dict[str, list[dict[str, float]]] = {}
    for line in lines:
        row = json.loads(line)
        if row["all"]:
            by.setdefault(row["phase"], []).append(row)
    for phase in ("app", "endpoint", "build_report", "segment_sums", "execute"):
        rows = by.get(phase, [])
        if not rows:
            continue
        wall, cpu, rq = (1000 * statistics.fmean(r[k] for r in rows) for k in ("wall", "cpu", "rq"))
        longest = 1000 * max(r["wall"] for r in rows)
        if phase in ("app", "endpoint"):  # measured on the event loop: its wall time only
            print(f"| {label} | {phase} | {len(rows)} | {wall:.0f} ms | | | | {longest:.0f} ms |")
            continue
        print(f"| {label} | {phase} | {len(rows)} | {wall:.0f} ms | {cpu:.0f} ms | {rq:.0f} ms | "
              f"{max(0.0, wall - cpu - rq):.0f} ms | {longest:.0f} ms |")


def under_fleet(url: str, one_project: str, args: argparse.Namespace) -> bool:
    """The month report over HTTP without and then under an N-host fleet; prints the table.
    True when no answer was a 5xx and every host was still up at the end."""
    backend = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    add_projects(url)
    month = {"start": MONTH[0].isoformat(), "end": MONTH[1].isoformat()}
    requests = [("all projects", month, 1000), ("one project", {**month,
                                                                 "project_id": one_project}, 100)]
    base = f"http://127.0.0.1:{args.port}"
    trace = args.trace_report
    if trace is not None:
        trace.write_text("")
    with tempfile.TemporaryDirectory() as tmp, \
            api_process(url, args.port, Path(tmp), trace) as api, \
            httpx.Client(base_url=base, timeout=120,
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        quiet = {name: timed_http(client, params, args.http_repeat, api.pid)
                 for name, params, _ in requests}
        quiet_lines = trace.read_text().splitlines() if trace is not None else []
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        fleet = ctx.Process(target=fleet_process, daemon=True, args=(
            base, args.under_fleet, args.fleet_heartbeat, args.fleet_up_timeout, child))
        fleet.start()
        try:
            started = parent.recv()
            idle_cpu, idle_wait = cpu_window(api.pid, args.fleet_settle)
            busy = {name: timed_http(client, params, args.http_repeat, api.pid)
                    for name, params, _ in requests}
            parent.send("stop")
            ended = parent.recv()
        finally:
            fleet.join(60)
            if fleet.is_alive():
                fleet.kill()
                fleet.join()
    n = args.under_fleet
    print(f"# over HTTP: one API process, GET /v1/usage for {MONTH[0]:%Y-%m}, "
          f"{args.http_repeat} timed requests each after one warm-up; fleet of {n} hosts, "
          f"{args.fleet_heartbeat:g} s heartbeats, {args.fleet_settle:g} s alone before timing")
    print(f"# fleet: {started['enrolled']} enrolled ({started['enroll_failed']} failed), "
          f"{started['up']} up after {started['up_after_s']} s; API CPU with the fleet alone "
          f"{idle_cpu:.1f} % of one core (threads waiting for a CPU {idle_wait:.1f} %); "
          f"at the end {ended['up']} of {n} up, fleet 5xx {ended['server_errors']}")
    print(f"# fleet calls: {ended['calls']}")
    print("| backend | report | fleet | median | p95 | max | API CPU "
          "| API threads waiting for a CPU | 5xx | load (1/5/15) | budget |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, _, budget in requests:
        for label, m in (("none", quiet[name]), (f"{n} hosts", busy[name])):
            print(f"| {backend} | {name} ({m['projects']} in the answer) | {label} | "
                  f"{m['median'] * 1000:.0f} ms | {m['p95'] * 1000:.0f} ms | "
                  f"{m['max'] * 1000:.0f} ms | {m['cpu']:.0f} % | {m['wait']:.0f} % | {m['5xx']} | "
                  f"{m['load']} | {budget} ms |")
    if trace is not None:
        print("# where the all-projects reports' time went in the API (means per call; blocked: "
              f"the GIL, locks, I/O), from {trace}")
        print("| fleet | phase | calls | wall | CPU | waiting for a CPU | blocked | max wall |")
        print("|---|---|---|---|---|---|---|---|")
        trace_summary(quiet_lines, "none")
        trace_summary(trace.read_text().splitlines()[len(quiet_lines):], f"{n} hosts")
    return (ended["up"] == n and ended["server_errors"] == 0 and started["enroll_failed"] == 0
            and all(m["5xx"] == 0 for m in (*quiet.values(), *busy.values())))


def main() -> None:
    """Run the benchmark and print a Markdown table row per measurement."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--servers", type=int, default=10_000)
    ap.add_argument("--projects", type=int, default=100)
    ap.add_argument("--entries-per-server", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sqlite-file", type=Path, default=None,
                    help="keep the SQLite database here and reuse it when it exists")
    ap.add_argument("--under-fleet", type=int, nargs="?", const=1000, default=None,
                    metavar="HOSTS", help="also time the report over HTTP, without and under "
                    "a fleet of HOSTS simulated hosts (1000 when no number is given)")
    ap.add_argument("--fleet-heartbeat", type=float, default=10.0)
    ap.add_argument("--fleet-up-timeout", type=float, default=300.0,
                    help="seconds to wait for every host to be up before measuring anyway")
    ap.add_argument("--fleet-settle", type=float, default=30.0,
                    help="seconds the fleet runs alone once up (its CPU is measured) before "
                    "the timed requests: the enrollment storm's retries die down first")
    ap.add_argument("--http-repeat", type=int, default=20)
    ap.add_argument("--port", type=int, default=18870)
    ap.add_argument("--trace-report", type=Path, default=None, metavar="FILE",
                    help="with --under-fleet: run the API as bench/report_trace_api.py, log "
                    "each report phase's wall, CPU and run-queue wait to FILE, summarize them")
    args = ap.parse_args()
    reuse = args.sqlite_file is not None and args.sqlite_file.exists()
    with database(args.database_url, args.sqlite_file) as url:
        engine = make_engine(url)
        factory = make_sessionmaker(engine)
        t = time.perf_counter()
        if not reuse:
            upgrade(url)
            n_entries, n_pieces = load(engine, args.servers, args.projects,
                                       args.entries_per_server)
        else:
            with engine.connect() as conn:
                n_entries = conn.scalar(text("SELECT count(*) FROM usage_ledger")) or 0
                n_pieces = conn.scalar(text("SELECT count(*) FROM usage_pieces")) or 0
        load_s = time.perf_counter() - t
        with factory() as session:
            if not reuse:
                session.add_all([
                    RateCard(valid_from=datetime(2026, 1, 1, tzinfo=UTC), currency="EUR",
                             prices={"vcpu_hour": "0.02", "ram_gib_hour": "0.004",
                                     "disk_gib_hour": "0.0001"},
                             flavor_hour={}),
                    RateCard(valid_from=datetime(2026, 6, 15, tzinfo=UTC), currency="EUR",
                             prices={"vcpu_hour": "0.025", "ram_gib_hour": "0.005",
                                     "disk_gib_hour": "0.0001"},
                             flavor_hour={}),
                ])
                session.commit()
            one = session.scalar(text("SELECT project_id FROM usage_servers LIMIT 1"))

            def report(project: str | None) -> str:
                r = reports.build_report(session, start=MONTH[0], end=MONTH[1], now=NOW,
                                         minimum=60, project_id=project)
                return reports.render_json(r)

            all_med, all_max, body = timed(lambda: report(None), args.repeat)
            one_med, one_max, _ = timed(lambda: report(str(one)), args.repeat)
            n_projects = body.count('"project_id"')
            # one billable change on a server with a full history (what the API pays)
            server = session.scalar(text("SELECT server_id FROM usage_servers LIMIT 1"))
            proj = session.scalar(text("SELECT project_id FROM usage_servers WHERE server_id = "
                                       ":s"), {"s": server})
            rec_times = []
            for i in range(args.repeat):
                t = time.perf_counter()
                ledger.record(session, kind="running" if i % 2 == 0 else "stopped",
                              project_id=str(proj), server_id=str(server), vcpus=1, ram_mb=512,
                              disk_gb=1, at=NOW + timedelta(seconds=i),
                              idempotency_key=f"bench-{uuid.uuid4()}", source="agent",
                              now=NOW + timedelta(seconds=i))
                session.commit()
                rec_times.append(time.perf_counter() - t)
        engine.dispose()
        backend = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
        print(f"# backend={backend} entries={n_entries} pieces={n_pieces} "
              f"servers={args.servers} projects={args.projects} load={load_s:.1f}s "
              f"projects_in_report={n_projects}")
        print("| backend | measurement | median | max | budget |")
        print("|---|---|---|---|---|")
        print(f"| {backend} | month report, all projects | {all_med * 1000:.0f} ms | "
              f"{all_max * 1000:.0f} ms | 1000 ms |")
        print(f"| {backend} | month report, one project | {one_med * 1000:.1f} ms | "
              f"{one_max * 1000:.1f} ms | 100 ms |")
        rec_med, rec_max = statistics.median(rec_times), max(rec_times)
        print(f"| {backend} | record() one entry (100-entry server) | "
              f"{rec_med * 1000:.1f} ms | {rec_max * 1000:.1f} ms | - |")
        sys.stdout.flush()
        ok = not args.under_fleet or under_fleet(url, str(one), args)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
