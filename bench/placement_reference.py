"""OpenStack Placement reference: scheduling decisions per second on the pool minicloud's
create benchmark uses, measured the way Nova's scheduler asks Placement.

    python3 bench/placement_reference.py            # SQLite, 1,000 providers, 1 and 8 clients
    python3 bench/placement_reference.py --pg postgresql://minicloud:minicloud@127.0.0.1/postgres

Installs ``openstack-placement`` (``--version``) with gunicorn and psycopg2 into its own venv
outside the repository (``--venv``, made on first use), writes a ``placement.conf``
(``auth_strategy = noauth2``; SQLite in a temporary directory, or a fresh database created on
the ``--pg`` server and dropped afterwards), runs ``placement-manage db sync`` and serves
``placement.wsgi.api:application`` with gunicorn on loopback (``--workers``; 1 on SQLite).

The pool is bench/scheduler_bench.py's: ``--hosts`` resource providers of 32 VCPU
(allocation ratio 4.0) / 131072 MEMORY_MB / 2000 DISK_GB, each already holding
``--seed-servers`` consumers of 2 VCPU / 4096 MB / 40 GB. One decision is what Nova's scheduler
does per instance: ``GET /allocation_candidates`` for the flavor (tiny, small, medium, large in
turn; ``limit`` = Nova's default ``max_placement_results`` of 1000;
``required=!COMPUTE_STATUS_DISABLED`` as Nova adds), then ``PUT /allocations/{new consumer}``
claiming the first candidate; a 409 (a concurrent claim moved the provider's generation)
starts the decision over (at most 10 tries) and is counted. Each client runs decisions for
``--duration`` seconds after one unmeasured warm-up decision. Prints decisions/s, p50/p99
latency, the CPU time per decision of Placement (gunicorn master and workers), of the
PostgreSQL backends serving it and of the clients (from /proc), and the load average before
and after.

Standard library only: runs with any Python 3.11 (the venv's own Python serves Placement).
Results go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MICROVERSION = "placement 1.36"
HEADERS = {"X-Auth-Token": "admin", "OpenStack-API-Version": MICROVERSION,
           "Content-Type": "application/json", "Accept": "application/json"}
PROJECT = "bench-project"
USER = "bench-user"
# bench/scheduler_bench.py's pool and minicloud's default flavors (api/flavors/service.py).
HOST_INVENTORY = {
    "VCPU": {"total": 32, "reserved": 0, "allocation_ratio": 4.0, "min_unit": 1,
             "max_unit": 32, "step_size": 1},
    "MEMORY_MB": {"total": 131072, "reserved": 0, "allocation_ratio": 1.0, "min_unit": 1,
                  "max_unit": 131072, "step_size": 1},
    "DISK_GB": {"total": 2000, "reserved": 0, "allocation_ratio": 1.0, "min_unit": 1,
                "max_unit": 2000, "step_size": 1},
}
SEED = {"VCPU": 2, "MEMORY_MB": 4096, "DISK_GB": 40}
FLAVORS = [(1, 512, 1), (1, 2048, 20), (2, 4096, 40), (4, 8192, 80)]


def ensure_venv(venv: Path, version: str) -> str:
    """Make ``venv`` with Placement, gunicorn and psycopg2 unless it has them; return the
    installed Placement version."""
    python = venv / "bin" / "python"
    if not (venv / "bin" / "gunicorn").exists() or not (venv / "bin" / "placement-manage").exists():
        print(f"installing openstack-placement=={version} into {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q",
                        f"openstack-placement=={version}", "gunicorn", "psycopg2-binary"],
                       check=True)
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; "
         "print(m.version('openstack-placement'), m.version('gunicorn'), "
         "m.version('sqlalchemy'))"],
        check=True, capture_output=True, text=True)
    return out.stdout.strip()


def admin_sql(venv: Path, server_url: str, statement: str) -> str:
    """Run one statement outside a transaction on the PostgreSQL ``server_url`` (with the
    venv's psycopg2: CREATE/DROP DATABASE, pg_stat_activity); returns the rows, one a line."""
    script = ("import sys, sqlalchemy as sa\n"
              "e = sa.create_engine(sys.argv[1], isolation_level='AUTOCOMMIT')\n"
              "with e.connect() as c:\n"
              "    r = c.execute(sa.text(sys.argv[2]))\n"
              "    for row in (r.all() if r.returns_rows else []): print(*row)\n")
    return subprocess.run([str(venv / "bin" / "python"), "-c", script, server_url, statement],
                          check=True, capture_output=True, text=True).stdout


def psycopg2_url(url: str) -> str:
    """The same server URL with the psycopg2 driver Placement's oslo.db uses."""
    scheme, rest = url.split("://", 1)
    return f"postgresql+psycopg2://{rest}" if scheme.startswith("postgresql") else url


def write_conf(conf_dir: Path, connection: str) -> None:
    """A minimal placement.conf: no Keystone, the given database, quiet logs."""
    (conf_dir / "placement.conf").write_text(
        "[DEFAULT]\ndebug = false\nlog_file = " + str(conf_dir / "placement.log") + "\n"
        "[api]\nauth_strategy = noauth2\n"
        "[placement_database]\nconnection = " + connection + "\n")


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Client:
    """One keep-alive HTTP connection to Placement (reopened when the server closes it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def call(self, method: str, path: str, body: object | None = None) -> tuple[int, object]:
        """One request; returns the status and the decoded JSON body (None if empty)."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=HEADERS)
                resp = self.conn.getresponse()
                raw = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                if attempt == 2:
                    raise
        return resp.status, (json.loads(raw) if raw else None)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def start_placement(venv: Path, conf_dir: Path,
                    workers: int) -> tuple[subprocess.Popen[bytes], int]:
    """gunicorn serving Placement's WSGI app on a loopback port; returns it and the port."""
    port = free_port()
    env = dict(os.environ, OS_PLACEMENT_CONFIG_DIR=str(conf_dir))
    log = open(conf_dir / "gunicorn.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(venv / "bin" / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers",
         str(workers), "--timeout", "300", "placement.wsgi.api:application"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/")
            if conn.getresponse().status == 200:
                conn.close()
                return proc, port
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"Placement did not start; see {conf_dir / 'gunicorn.log'}")
        time.sleep(0.3)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (gunicorn's master and workers)."""
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return pids + [int(c) for c in children]


def cpu_of(pids: list[int]) -> dict[int, float]:
    """User + system CPU time each process used so far (Linux /proc; gone ones left out)."""
    ticks = os.sysconf("SC_CLK_TCK")
    times = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        times[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return times


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes used so far."""
    return sum(cpu_of(pids).values())


def check(status: int, body: object, what: str, ok: tuple[int, ...] = (200, 201, 204)) -> None:
    """Stop the run on an unexpected answer."""
    if status not in ok:
        raise RuntimeError(f"{what}: {status} {json.dumps(body)[:300]}")


def build_pool(port: int, hosts: int, seed_servers: int, threads: int = 4) -> None:
    """``hosts`` providers with the bench inventory, each holding ``seed_servers`` consumers."""
    local = threading.local()

    def client() -> Client:
        if not hasattr(local, "c"):
            local.c = Client(port)
        return local.c  # type: ignore[no-any-return]

    def provider(i: int) -> str:
        c = client()
        status, body = c.call("POST", "/resource_providers", {"name": f"bench-{i}"})
        check(status, body, "create provider")
        rp = body["uuid"]  # type: ignore[index]
        status, body = c.call("PUT", f"/resource_providers/{rp}/inventories",
                              {"resource_provider_generation": 0,
                               "inventories": HOST_INVENTORY})
        check(status, body, "set inventory")
        return str(rp)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        providers = list(pool.map(provider, range(hosts)))
    batch: dict[str, object] = {}

    def flush() -> None:
        status, body = client().call("POST", "/allocations", batch)
        check(status, body, "seed allocations")
        batch.clear()

    for rp in providers:
        for _ in range(seed_servers):
            batch[str(uuid.uuid4())] = {"allocations": {rp: {"resources": SEED}},
                                        "project_id": PROJECT, "user_id": USER,
                                        "consumer_generation": None}
            if len(batch) >= 200:
                flush()
    if batch:
        flush()


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile of ``samples`` (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load_average() -> str:
    """The 1-minute load average now (the machine may be shared)."""
    return f"{os.getloadavg()[0]:.1f}"


def decisions(label: str, port: int, pids: list[int], clients: int, duration: float,
              limit: int, db_pids: Callable[[], list[int]] = list) -> None:
    """``clients`` concurrent clients making decisions for ``duration`` seconds. Reports the
    CPU time per decision of Placement's processes, of the database server's backends serving
    it (``db_pids``; none on SQLite) and of the clients (this process)."""
    latencies: list[float] = []
    gets: list[float] = []
    conflicts = [0]
    failures: list[str] = []
    lock = threading.Lock()
    counter = [0]

    def one(c: Client) -> tuple[float, float] | None:
        with lock:
            k = counter[0]
            counter[0] += 1
        vcpus, ram, disk = FLAVORS[k % len(FLAVORS)]
        query = (f"/allocation_candidates?resources=VCPU:{vcpus},MEMORY_MB:{ram},"
                 f"DISK_GB:{disk}&required=!COMPUTE_STATUS_DISABLED&limit={limit}")
        consumer = str(uuid.uuid4())
        t0 = time.perf_counter()
        for _ in range(10):  # a claim that lost a race is retried, boundedly (as Nova does)
            g0 = time.perf_counter()
            status, body = c.call("GET", query)
            g = time.perf_counter() - g0
            if status != 200 or not body["allocation_requests"]:  # type: ignore[index]
                with lock:
                    failures.append(f"GET {status} {json.dumps(body)[:200]}")
                return None
            first = body["allocation_requests"][0]  # type: ignore[index]
            status, answer = c.call("PUT", f"/allocations/{consumer}", {
                "allocations": first["allocations"], "project_id": PROJECT,
                "user_id": USER, "consumer_generation": None})
            if status == 204:
                return time.perf_counter() - t0, g
            if status == 409:
                with lock:
                    conflicts[0] += 1
                continue
            with lock:
                failures.append(f"PUT {status} {json.dumps(answer)[:200]}")
            return None
        with lock:
            failures.append("PUT 409 ten times")
        return None

    def run(stop_at: float | None) -> None:
        c = Client(port)
        try:
            while True:
                result = one(c)
                if stop_at is None:  # warm-up: one decision
                    return
                if result is not None:
                    with lock:
                        latencies.append(result[0])
                        gets.append(result[1])
                if time.perf_counter() >= stop_at:
                    return
        finally:
            c.close()

    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(lambda _: run(None), range(clients)))
    conflicts[0] = 0
    failures.clear()
    load = load_average()
    cpu0 = cpu_seconds(pids)
    db0 = cpu_of(db_pids())
    client0 = time.process_time()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(lambda _: run(start + duration), range(clients)))
    wall = time.perf_counter() - start
    n = max(1, len(latencies))
    cpu = (cpu_seconds(pids) - cpu0) / n
    client_cpu = (time.process_time() - client0) / n
    db_cpu = sum(t - db0.get(pid, 0.0) for pid, t in cpu_of(db_pids()).items()) / n
    if not latencies:
        print(f"{label}: no decision succeeded; first failure: {failures[:1]}", flush=True)
        return
    print(f"{label + f', {clients} client(s)':<44} n={len(latencies):>5}  "
          f"{len(latencies) / wall:>8.1f}/s  "
          f"p50={percentile(latencies, 0.5) * 1e3:7.2f} ms  "
          f"p99={percentile(latencies, 0.99) * 1e3:7.2f} ms  "
          f"GET p50={percentile(gets, 0.5) * 1e3:.2f} ms  "
          f"cpu/decision: placement={cpu * 1e3:.1f} ms db={db_cpu * 1e3:.1f} ms "
          f"client={client_cpu * 1e3:.1f} ms  conflicts={conflicts[0]}  "
          f"load={load}-{load_average()}  failed={len(failures)}"
          + (f" first: {failures[0]}" if failures else ""), flush=True)


def main() -> None:
    """Install, configure, start and load Placement; print one line per client count."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", default=os.environ.get("PLACEMENT_VENV", "/work/placement-venv"),
                        help="venv holding Placement (made on first use)")
    parser.add_argument("--version", default="16.0.0", help="openstack-placement to install")
    parser.add_argument("--pg", help="PostgreSQL server URL (a fresh database is created on "
                        "it and dropped afterwards); SQLite without it")
    parser.add_argument("--workers", type=int,
                        help="gunicorn worker processes (default: 2 on PostgreSQL, 1 on SQLite)")
    parser.add_argument("--hosts", type=int, default=1000, help="resource providers")
    parser.add_argument("--seed-servers", type=int, default=3,
                        help="consumers already on each provider (2 VCPU / 4096 MB / 40 GB)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8],
                        help="concurrent clients, one run each")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="measured seconds per client count")
    parser.add_argument("--limit", type=int, default=1000,
                        help="allocation candidates asked for (Nova's max_placement_results)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the database and the config directory (with the logs; "
                        "kept anyway when the run fails)")
    args = parser.parse_args()

    venv = Path(args.venv).resolve()
    versions = ensure_venv(venv, args.version)
    conf_dir = Path(tempfile.mkdtemp(prefix="placement-bench-"))
    db_name = f"placement_bench_{os.getpid()}"
    if args.pg:
        server = psycopg2_url(args.pg)
        admin_sql(venv, server, f"CREATE DATABASE {db_name}")
        connection = server.rsplit("/", 1)[0] + "/" + db_name
        backend, workers = "postgresql", args.workers or 2

        def db_pids() -> list[int]:
            rows = admin_sql(venv, server, "SELECT pid FROM pg_stat_activity "
                             f"WHERE datname = '{db_name}'")
            return [int(pid) for pid in rows.split()]
    else:
        connection = f"sqlite:///{conf_dir / 'placement.sqlite'}"
        backend, workers = "sqlite", args.workers or 1
        db_pids = list
    write_conf(conf_dir, connection)
    env = dict(os.environ, OS_PLACEMENT_CONFIG_DIR=str(conf_dir))
    proc = None
    finished = False
    try:
        subprocess.run([str(venv / "bin" / "placement-manage"), "--config-file",
                        str(conf_dir / "placement.conf"), "db", "sync"], env=env, check=True)
        proc, port = start_placement(venv, conf_dir, workers)
        pids = process_tree(proc.pid)
        print(f"openstack-placement/gunicorn/sqlalchemy {versions.replace(' ', '/')}, "
              f"{backend}, {workers} worker(s), microversion {MICROVERSION.split()[1]}, "
              f"config and logs in {conf_dir}", flush=True)
        t0 = time.perf_counter()
        build_pool(port, args.hosts, args.seed_servers)
        print(f"pool: {args.hosts} providers, {args.hosts * args.seed_servers} seed consumers "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        for clients in args.clients:
            decisions(f"Placement {backend} {args.hosts} hosts, {workers} worker(s)", port,
                      pids, clients, args.duration, args.limit, db_pids)
        finished = True
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        if args.pg and not args.keep:
            admin_sql(venv, psycopg2_url(args.pg), f"DROP DATABASE IF EXISTS {db_name}")
        if finished and not args.keep:  # kept on failure: its logs say why
            shutil.rmtree(conf_dir)


if __name__ == "__main__":
    main()
