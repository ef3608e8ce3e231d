"""Scheduler benchmark: in-process decisions and claims through place() on SQLite / PostgreSQL.

    /work/venv/bin/python bench/scheduler_bench.py                      # everything, SQLite
    /work/venv/bin/python bench/scheduler_bench.py --pg postgresql+psycopg://u:pw@host/postgres
    /work/venv/bin/python bench/scheduler_bench.py --only inprocess

(a) in-process: ``scheduler.pipeline.decide`` over a snapshot of N hosts (100, 1,000, 10,000),
    40 % filled on average, timed per decision.
(b) claim: ``api.scheduler.placement.place`` in a create-like transaction (insert a server row,
    place, commit) on a fresh database with 1,000 hosts already holding 3 servers each, from
    1 and 8 threads. Each thread uses its own session, like API workers.
(c) end to end through ``POST /v1/servers`` on a real ``minicloud-api`` process (uvicorn,
    loopback HTTP, token auth, quota, placement, events, commit) with the same 1,000-host
    pool, from 1 and 8 concurrent clients (each client a connection with its own project, as
    tenants are, all driven by one asyncio load-generator process). ``--rounds N`` runs the
    client counts in turn N times on each pool (in reverse order in every other round, as
    the filling pool slows creates) and prints the medians (a shared machine's speed drifts
    between minutes).
        /work/venv/bin/python bench/scheduler_bench.py --only e2e [--pg URL] [--api-processes 2]
    ``--before TREE`` runs each setup first with the API code of another checkout (e.g.
    ``git archive <commit> | tar -x -C TREE``), then with this one, each on a fresh pool, so
    before and after are measured side by side in one run. ``--profile DIR`` runs the API
    under ``bench/profiled_api.py`` and writes each scenario's cProfile (per-thread CPU time)
    and SQL statement counts to DIR (the profiler slows the API down: rates from a profiled
    run are not comparable).

Prints one line per scenario; results go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.queues import Queue as QueueType
from multiprocessing.synchronize import Barrier as BarrierType
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from sqlalchemy import insert

from api.config import Settings
from api.db import make_engine, make_sessionmaker, new_id, utcnow
from api.migrate import upgrade
from api.models import Allocation, Host, Inventory, Server
from api.scheduler.placement import NoValidHost, place
from bench.placement_reference import cpu_of, cpu_seconds
from scheduler.framework import (
    DISK_GB,
    MEMORY_MB,
    VCPU,
    HostState,
    InventoryState,
    RequestSpec,
    Snapshot,
)
from scheduler.pipeline import decide
from tests.db import fresh_database
from tests.scheduler.db_factories import make_catalog

FLAVORS = [(1, 512, 1), (1, 2048, 20), (2, 4096, 40), (4, 8192, 80)]


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile of ``samples`` (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(name: str, latencies: list[float], wall: float, extra: str = "") -> None:
    """One result line: rate, p50, p99 (milliseconds)."""
    print(f"{name:<44} n={len(latencies):>5}  {len(latencies) / wall:>8.1f}/s  "
          f"p50={percentile(latencies, 0.5) * 1e3:7.2f} ms  "
          f"p99={percentile(latencies, 0.99) * 1e3:7.2f} ms  {extra}", flush=True)


def synthetic_snapshot(n: int, rng: random.Random) -> Snapshot:
    """N hosts of 32 vCPU x 4.0 / 128 GB / 2 TB, filled 0-80 %, 3 zones, 2 % disabled."""
    now = time.time()
    hosts = []
    for i in range(n):
        fill = rng.random() * 0.8
        hosts.append(HostState(
            id=f"{i:08d}-host", name=f"host{i}", availability_zone=f"az{i % 3}",
            enabled=rng.random() > 0.02, last_heartbeat=now - rng.random() * 30,
            aggregates={"ssd": "true"} if i % 2 else {},
            inventories={
                VCPU: InventoryState(32, 0, 4.0, 1, 32, int(128 * fill)),
                MEMORY_MB: InventoryState(131072, 4096, 1.0, 1, 131072, int(126976 * fill)),
                DISK_GB: InventoryState(2000, 0, 1.0, 1, 2000, int(2000 * fill)),
            }))
    return Snapshot(hosts=hosts, now=now, host_down_after_seconds=60)


def inprocess_scenario(n: int, count: int) -> None:
    """(a) decide() only, over a prebuilt snapshot."""
    rng = random.Random(n)
    snap = synthetic_snapshot(n, rng)
    latencies = []
    cpu: list[float] = []
    start = time.perf_counter()
    for k in range(count):
        vcpus, ram, disk = FLAVORS[k % len(FLAVORS)]
        spec = RequestSpec(server_id=f"s{k}", project_id="p",
                           resources={VCPU: vcpus, MEMORY_MB: ram, DISK_GB: disk},
                           request_id=f"req-{k}",
                           availability_zone="az1" if k % 4 == 0 else None,
                           extra_specs={"ssd": "true"} if k % 5 == 0 else {})
        c0, t0 = time.process_time(), time.perf_counter()
        decision = decide(spec, snap)
        latencies.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        assert decision.host is not None
    # CPU time too: on a shared machine the wall clock also measures the neighbours.
    report(f"in-process decide, {n} hosts", latencies, time.perf_counter() - start,
           f"cpu p50={percentile(cpu, 0.5) * 1e3:.2f} ms p99={percentile(cpu, 0.99) * 1e3:.2f} ms")


def build_pool(url: str, n: int, servers_per_host: int = 3) -> Settings:
    """Migrate ``url`` and insert ``n`` hosts, each already running ``servers_per_host``."""
    upgrade(url)
    # Hosts never heartbeat here: keep them "up" for the whole run.
    settings = Settings(database_url=url, data_dir=Path(tempfile.mkdtemp()),
                        host_down_after_seconds=86400)
    engine = make_engine(url)
    maker = make_sessionmaker(engine)
    with maker.begin() as s:
        catalog = make_catalog(s)
        now = utcnow()
        hosts, inventories, servers, allocations = [], [], [], []
        for i in range(n):
            hid = new_id()
            hosts.append({"id": hid, "name": f"bench-{i}", "availability_zone": f"az{i % 3}",
                          "last_heartbeat_at": now, "aggregates": {}, "generation": 0,
                          "enabled": True, "libvirt_uri": "", "virt_type": "kvm",
                          "architecture": "x86_64", "created_at": now})
            for rc, total in ((VCPU, 32), (MEMORY_MB, 131072), (DISK_GB, 2000)):
                inventories.append({"id": new_id(), "host_id": hid, "resource_class": rc,
                                    "total": total, "reserved": 0, "min_unit": 1})
            for _ in range(servers_per_host):
                sid = new_id()
                servers.append({"id": sid, "project_id": catalog.project_id, "user_id": "u",
                                "name": "seed", "flavor_id": catalog.flavor_id,
                                "image_id": catalog.image_id, "vcpus": 2, "ram_mb": 4096,
                                "disk_gb": 40, "host_id": hid, "status": "ACTIVE",
                                "generation": 0, "addresses": [], "created_at": now,
                                "updated_at": now})
                for rc, used in ((VCPU, 2), (MEMORY_MB, 4096), (DISK_GB, 40)):
                    allocations.append({"id": new_id(), "server_id": sid, "host_id": hid,
                                        "resource_class": rc, "used": used})
        s.execute(insert(Host), hosts)
        s.execute(insert(Inventory), inventories)
        s.execute(insert(Server), servers)
        s.execute(insert(Allocation), allocations)
    engine.dispose()
    POOL_CATALOG[url] = catalog
    return settings


POOL_CATALOG: dict[str, object] = {}


def claim_scenario(label: str, url: str, settings: Settings, threads: int, count: int) -> None:
    """(b) create-like transactions: insert a server row, place(), commit."""
    catalog = POOL_CATALOG[url]
    engine = make_engine(url)
    maker = make_sessionmaker(engine)
    latencies: list[float] = []
    conflicts = [0]
    lock = threading.Lock()

    def one(k: int) -> None:
        vcpus, ram, disk = FLAVORS[k % len(FLAVORS)]
        t0 = time.perf_counter()
        with maker() as s:
            server = Server(project_id=catalog.project_id, user_id="u",  # type: ignore[attr-defined]
                            name="b", flavor_id=catalog.flavor_id,  # type: ignore[attr-defined]
                            image_id=catalog.image_id,  # type: ignore[attr-defined]
                            vcpus=vcpus, ram_mb=ram, disk_gb=disk)
            s.add(server)
            s.flush()
            spec = RequestSpec(server_id=server.id, project_id=server.project_id,
                               resources={VCPU: vcpus, MEMORY_MB: ram, DISK_GB: disk})
            try:
                result = place(s, settings, spec, request_id=f"{label}-{k}")
            except NoValidHost:
                s.rollback()
                raise
            server.host_id = result.host_id
            s.commit()
        elapsed = time.perf_counter() - t0
        with lock:
            latencies.append(elapsed)
            conflicts[0] += result.conflicts

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(count)))
    wall = time.perf_counter() - start
    engine.dispose()
    report(f"place() {label}, {threads} thread(s)", latencies, wall,
           f"conflicts={conflicts[0]}")


ADMIN_TOKEN = "mcac_bench-admin-token-0123456789abcdef"
REPO = Path(__file__).resolve().parent.parent
E2E_FLAVORS = ["tiny", "small", "medium", "large"]


def start_api(url: str, data_dir: Path, tree: Path = REPO,
              profile: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """One ``minicloud-api`` process on ``url`` running the code in ``tree``; returns it and
    its base URL. With ``profile`` it runs under ``bench/profiled_api.py`` (of this tree),
    writing ``<profile>-<pid>.pstats`` / ``.sql`` when ``profile_window`` ends."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, MINICLOUD_DATABASE_URL=url, MINICLOUD_DATA_DIR=str(data_dir),
               MINICLOUD_BOOTSTRAP_ADMIN_TOKEN=ADMIN_TOKEN, MINICLOUD_LOG_LEVEL="WARNING",
               MINICLOUD_HOST_DOWN_AFTER_SECONDS="86400", PYTHONPATH=str(tree))
    if profile is not None:
        env["MINICLOUD_PROFILE_OUT"] = str(profile)
        command = [sys.executable, str(REPO / "bench" / "profiled_api.py")]
    else:
        command = [sys.executable, "-c", "from api.server import run; run()"]
    log = open(data_dir / f"api-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), "--no-migrate"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(tree))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"API on port {port} did not start")
        time.sleep(0.2)


def tenant_headers(http: httpx.Client, admin: dict[str, str]) -> tuple[dict[str, str], str]:
    """A member of a new project with a quota above any run, and an uploaded image."""
    from tests.factories import make_account, make_image

    acct = make_account(http, admin)
    r = http.put(f"/v1/quotas/{acct.project_id}", headers=admin, json={
        "instances": 10**6, "vcpus": 10**7, "ram_mb": 10**9, "disk_gb": 10**9})
    r.raise_for_status()
    return acct.headers, make_image(http, acct.headers)["id"]


def backends_of(url: str) -> Callable[[], list[int]]:
    """The PostgreSQL backends serving ``url``'s database (none on SQLite)."""
    if not url.startswith("postgresql"):
        return list
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    name = url.rsplit("/", 1)[1].split("?")[0]

    def pids() -> list[int]:
        with engine.connect() as conn:
            return [int(pid) for pid in conn.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE datname = :d "
                "AND pid <> pg_backend_pid()"), {"d": name}).scalars()]
    return pids


def load_average() -> str:
    """The 1-minute load average now (the machine may be shared)."""
    return f"{os.getloadavg()[0]:.1f}"


def _clients(specs: list[tuple[str, dict[str, str], str, range, int]],
             barrier: BarrierType, out: QueueType) -> None:
    """The clients, as a load generator runs them: each a kept-alive HTTP/1.1 connection
    (h11) of this one asyncio process (uvloop), with its own project's token, its share of
    the creates and one create first to warm up (not measured). Measures once every client
    has warmed up and the measurement has started (``barrier``, with the parent), and sends
    ``(latencies, failures, CPU seconds of the measured part)``.

    One process with the lightest client available: on a 2-core machine the clients' CPU,
    and their processes waking beside the API's, is taken from the API and the database
    (8 client processes with httpx cost 0.9 ms of CPU per create; this, about 0.18 ms)."""
    import asyncio

    import h11
    import uvloop

    latencies: list[float] = []
    failures: list[str] = []

    async def client(base: str, headers: dict[str, str], image: str, creates: range,
                     warm: int, warmed: asyncio.Event, go: asyncio.Event) -> None:
        url = urllib.parse.urlsplit(base)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        conn = h11.Connection(h11.CLIENT)
        fixed = [("Host", url.netloc), ("Content-Type", "application/json"),
                 *headers.items()]

        async def create(i: int, name: str, keep: bool) -> None:
            body = json.dumps({"name": name, "flavor": E2E_FLAVORS[i % len(E2E_FLAVORS)],
                               "image": image}).encode()
            t0 = time.perf_counter()
            writer.write(conn.send(h11.Request(
                method="POST", target="/v1/servers",
                headers=[*fixed, ("Content-Length", str(len(body)))]))
                + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            status, text = 0, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    text += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            conn.start_next_cycle()
            if keep:
                if status == 202:
                    latencies.append(time.perf_counter() - t0)
                else:
                    failures.append(f"{status} {text[:200]!r}")

        await create(warm, f"e2e-warm-{warm}", False)
        warmed.set()
        await go.wait()
        for i in creates:
            await create(i, f"e2e-{i}", True)
        writer.close()

    async def main() -> float:
        loop = asyncio.get_running_loop()
        go = asyncio.Event()
        flags = [asyncio.Event() for _ in specs]
        tasks = [asyncio.create_task(client(*spec, flags[k], go)) for k, spec in enumerate(specs)]
        for flag in flags:
            await flag.wait()
        await loop.run_in_executor(None, barrier.wait)
        await loop.run_in_executor(None, barrier.wait)
        cpu0 = time.process_time()
        go.set()
        await asyncio.gather(*tasks)
        return time.process_time() - cpu0

    spent = uvloop.run(main())
    out.put((latencies, failures, spent))


def e2e_scenario(label: str, bases: list[str], clients: int, count: int,
                 pids: list[int] | None = None, profiling: bool = False,
                 db_pids: Callable[[], list[int]] = list) -> float:
    """(c) ``count`` creates through POST /v1/servers from ``clients`` concurrent clients.

    Each client is a connection with its own project, spread over the API processes, all
    driven by one load-generator process (``_clients``); each first makes one create that
    is not measured (the API process's first create loads the host snapshot). With ``pids``
    also reports the API processes' CPU time per create: on a shared machine the wall clock
    measures the neighbours too. With
    ``profiling`` the API processes (started under ``bench/profiled_api.py``) profile exactly
    the measured creates. ``db_pids`` lists the database server's backends (none on SQLite):
    their CPU per create is reported too, as is the clients' own. Returns creates per second.
    """
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=bases[0], timeout=120) as http:
        tenants = [tenant_headers(http, admin) for _ in range(clients)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    out = context.Queue()
    procs = [context.Process(target=_clients, daemon=True, args=(
        [(bases[k % len(bases)], *tenants[k], range(k, count, clients), k)
         for k in range(clients)], barrier, out))]
    for proc in procs:
        proc.start()
    barrier.wait()  # warmed up
    profile_window(pids or [], signal.SIGUSR1 if profiling else None)
    cpu0 = cpu_seconds(pids or [])
    db0 = cpu_of(db_pids())
    load = load_average()
    start = time.perf_counter()
    barrier.wait()
    results = [out.get() for _ in procs]
    wall = time.perf_counter() - start
    for proc in procs:
        proc.join()
    latencies = [t for done, _, _ in results for t in done]
    failures = [f for _, failed, _ in results for f in failed]
    n = max(1, len(latencies))
    cpu = (cpu_seconds(pids or []) - cpu0) / n
    client_cpu = sum(spent for _, _, spent in results) / n
    db_cpu = sum(t - db0.get(pid, 0.0) for pid, t in cpu_of(db_pids()).items()) / n
    profile_window(pids or [], signal.SIGUSR2 if profiling else None)
    report(f"POST /v1/servers {label}, {clients} client(s)", latencies, wall,
           (f"api cpu={cpu * 1e3:.2f} ms/create " if pids else "")
           + (f"db cpu={db_cpu * 1e3:.2f} ms/create " if db0 else "")
           + f"client cpu={client_cpu * 1e3:.2f} ms/create "
           + f"load={load}-{load_average()} "
           + f"failed={len(failures)}" + (f" first: {failures[0]}" if failures else ""))
    return len(latencies) / wall


def rounds_summary(label: str, rates: dict[int, list[float]]) -> None:
    """The median rate of each client count over the rounds, and the median of the rounds'
    ratios to the first client count (each round's counts ran back to back on one pool)."""
    first, *others = rates
    parts = [f"{clients} client(s) {statistics.median(r):.1f}/s" for clients, r in rates.items()]
    for clients in others:
        ratios = [b / a for a, b in zip(rates[first], rates[clients], strict=True)]
        parts.append(f"{clients} vs {first}: median {statistics.median(ratios):.2f}x "
                     f"(rounds: {' '.join(f'{x:.2f}' for x in ratios)})")
    print(f"POST /v1/servers {label}, median of {len(rates[first])} rounds: "
          + ", ".join(parts), flush=True)


def profile_window(pids: list[int], sig: signal.Signals | None) -> None:
    """Start (SIGUSR1) or end (SIGUSR2) the profiled window of ``bench/profiled_api.py``."""
    if sig is None:
        return
    for pid in pids:
        os.kill(pid, sig)
    time.sleep(1.0 if sig == signal.SIGUSR2 else 0.2)  # the handler runs between requests


def run_e2e(args: argparse.Namespace) -> None:
    """(c) on SQLite (one API process), and on PostgreSQL when --pg is given; with
    ``--before TREE`` each setup runs first with the API code of TREE, then with this tree's,
    each on a fresh pool (side by side in one run)."""
    backends = [("sqlite", "sqlite", 1)] + (
        [("postgresql", args.pg, args.api_processes)] if args.pg else [])
    backends = [b for b in backends if b[0] in (args.backend or [b[0]])]
    trees = ([("before", Path(args.before).resolve())] if args.before else []) + [
        ("after" if args.before else "", REPO)]
    for name, server, processes in backends:
        for tag, tree in trees:
            os.environ["MINICLOUD_TEST_DATABASE_URL"] = server
            with fresh_database(Path(tempfile.mkdtemp())) as url:
                settings = build_pool(url, args.hosts)
                procs = []
                try:
                    bases = []
                    outs = ([Path(args.profile).resolve() / f"{tag or 'tree'}-{name}-{i}"
                             for i in range(processes)] if args.profile else [])
                    for i in range(processes):
                        proc, base = start_api(url, settings.data_dir, tree,
                                               outs[i] if outs else None)
                        procs.append(proc)
                        bases.append(base)
                    label = f"{tag} {name} {args.hosts} hosts, {processes} API"
                    rates: dict[int, list[float]] = {}
                    for round_ in range(args.rounds):
                        # Every create leaves the pool fuller and the next create a little
                        # dearer: odd rounds run the counts in reverse order, so no count
                        # always meets the emptier pool.
                        order = args.clients if round_ % 2 == 0 else args.clients[::-1]
                        for clients in order:
                            rates.setdefault(clients, []).append(e2e_scenario(
                                label, bases, clients, args.placements,
                                [p.pid for p in procs], profiling=bool(args.profile),
                                db_pids=backends_of(url)))
                            suffix = f"-{clients}c" + (f"-r{round_}" if args.rounds > 1 else "")
                            for out in outs:  # keep each scenario's profile
                                for ext in (".pstats", ".sql"):
                                    done = out.with_name(out.name + ext)
                                    if done.exists():
                                        done.rename(out.with_name(f"{out.name}{suffix}{ext}"))
                    if args.rounds > 1:
                        rounds_summary(label, rates)
                finally:
                    for proc in procs:
                        proc.terminate()
                    for proc in procs:
                        proc.wait(timeout=30)


SCENARIOS: dict[str, Callable[[argparse.Namespace], None]] = {}


def run_inprocess(args: argparse.Namespace) -> None:
    """(a) for 100, 1,000 and 10,000 hosts."""
    for n in (100, 1000, 10000):
        inprocess_scenario(n, args.decisions)


def run_claims(args: argparse.Namespace) -> None:
    """(b) on SQLite, and on PostgreSQL when --pg is given."""
    backends = [("sqlite", "sqlite")] + ([("postgresql", args.pg)] if args.pg else [])
    for name, server in backends:
        os.environ["MINICLOUD_TEST_DATABASE_URL"] = server
        with fresh_database(Path(tempfile.mkdtemp())) as url:
            settings = build_pool(url, args.hosts)
            for threads in (1, 8):
                claim_scenario(f"{name} {args.hosts} hosts", url, settings, threads,
                               args.placements)


def run_placement_reference(args: argparse.Namespace) -> None:
    """OpenStack Placement on the same pool size and client counts (bench/placement_reference.py,
    SQLite, and PostgreSQL when --pg is given), after minicloud's scenarios in the same run."""
    for pg in [None] + ([args.pg] if args.pg else []):
        subprocess.run([sys.executable, str(REPO / "bench" / "placement_reference.py"),
                        "--hosts", str(args.hosts), "--clients", *map(str, args.clients),
                        *(["--pg", pg] if pg else [])], check=True)


SCENARIOS["inprocess"] = run_inprocess
SCENARIOS["claim"] = run_claims
SCENARIOS["e2e"] = run_e2e


def main() -> None:
    """Parse the options and run the chosen scenarios."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--pg", help="PostgreSQL server URL (a database is created on it)")
    parser.add_argument("--hosts", type=int, default=1000, help="pool size for claims")
    parser.add_argument("--decisions", type=int, default=300, help="in-process decisions per N")
    parser.add_argument("--placements", type=int, default=400, help="claims per thread setup")
    parser.add_argument("--api-processes", type=int, default=2,
                        help="API processes for the PostgreSQL end-to-end run")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8],
                        help="concurrent clients of the end-to-end runs")
    parser.add_argument("--rounds", type=int, default=1,
                        help="e2e: run the client counts this many times in turn on each pool "
                        "and print the medians (a shared machine's speed drifts)")
    parser.add_argument("--before", metavar="TREE",
                        help="e2e: also run the API code of another checkout (e.g. a "
                        "'git archive' of main), each setup side by side in one run")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], action="append",
                        help="e2e: only these databases (default: SQLite, and PostgreSQL "
                        "with --pg)")
    parser.add_argument("--profile", metavar="DIR",
                        help="e2e: run the API under bench/profiled_api.py and write a "
                        "cProfile and statement counts of each measured scenario to DIR")
    parser.add_argument("--placement", action="store_true",
                        help="then run the OpenStack Placement reference on the same pool size "
                        "and client counts (bench/placement_reference.py)")
    args = parser.parse_args()
    for name in args.only or list(SCENARIOS):
        SCENARIOS[name](args)
    if args.placement:
        run_placement_reference(args)


if __name__ == "__main__":
    main()
