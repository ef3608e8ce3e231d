"""A large fleet held idle: N simulated hosts (bench/fleet.py, default 10,000) and M idle
servers (default 100,000) against several API processes on one PostgreSQL database, with a
trickle of creates whose way to their agent is timed.

    python -m bench.fleet_10k --api http://127.0.0.1:18950 --api http://127.0.0.1:18951 \\
        --database-url postgresql+psycopg://minicloud:minicloud@127.0.0.1/bench_10k \\
        --admin-token $MINICLOUD_TOKEN --measure-pid PID1 --measure-pid PID2

1. Enrolls the fleet ``--enroll-concurrency`` hosts at a time (host i on API ``i % len``),
   each host heartbeating and long-polling from the moment it is enrolled; 503 ``agent_busy``
   with ``Retry-After`` is honoured and counted apart from server errors.
2. Inserts the idle servers straight into the database, ACTIVE and running with their ledger
   entries (``bench.idle_fleet.insert_servers``, in chunks, in a child process so the
   simulator's event loop keeps its hosts beating), and lets the fleet settle: every host
   sees its servers (long-poll) and the API acknowledges every host's report of them (the
   first heartbeat after the insert carries its servers); at least ``--settle`` seconds, at
   most ``--settle-deadline``. The settling time and its refusals and 5xx are reported
   apart from the window's, which starts only once everything is acknowledged.
3. Holds the fleet for ``--window`` seconds: 5xx answers, the API processes' CPU (from /proc),
   the simulator's own CPU and event-loop lag, hosts ``up`` (sampled every minute from the
   ``minicloud_hosts`` gauge; every host is listed once after the window), the API
   processes' event-loop lag and collector pauses, and the load average; and meanwhile
   creates servers through ``POST /v1/servers`` as a tenant, ``--create-rate`` per second,
   timing each from its ``202`` to the long-poll answer that brings it to its host.

Prints one JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import statistics
import sys
import time
import uuid
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from api.models import Image
from api.server import COLLECTOR_THRESHOLDS
from bench.fleet import Fleet, SimHost, cpu_seconds, raise_open_files_limit
from compute_agent.client import AgentApiError, DesiredState


class TimedFleet(Fleet):
    """A fleet that notes when each of its hosts first sees a server in BUILD (a create)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_seen: dict[str, float] = {}
        self.seen_via: dict[str, str] = {}  # server id -> the API its host long-polls

    def _desired_arrived(self, host: SimHost, desired: DesiredState, at: float) -> None:
        # The answer's arrival, not the moment the host's loop reaches the server (after
        # reporting the answer's other servers).
        for server in desired.servers:
            if server.status == "BUILD" and server.server_id not in self.first_seen:
                self.first_seen[server.server_id] = at
                self.seen_via[server.server_id] = host.api


class LoopLag:
    """How late this process's event loop runs: a task sleeping ``tick`` seconds notes how
    much later than asked it woke. The simulator is one process for every host and the
    creating tenant, so a create's timings include its own loop's lag; this says how much."""

    def __init__(self, tick: float = 0.02) -> None:
        self.tick = tick
        self.samples: list[tuple[float, float]] = []  # (woke at, lag)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin sampling."""
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.tick)
            now = time.monotonic()
            self.samples.append((now, now - before - self.tick))

    def stop(self) -> None:
        """End sampling."""
        if self._task is not None:
            self._task.cancel()

    def worst_between(self, start: float, end: float) -> float:
        """The largest lag noted by a wake-up in [start, end + one tick]."""
        return max((lag for at, lag in self.samples if start <= at <= end + self.tick),
                   default=0.0)


def _peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident memory (VmHWM), in MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)  # nearest rank
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(1000 * value, 1)


async def _insert(database_url: str, host_ids: list[str], count: int, chunk: int) -> float:
    """Insert the idle servers in a child process (its CPU is not the simulator's); return
    the seconds it took. Raises RuntimeError when it fails.

    Each chunk gives a slice of the hosts all their servers at once, so every host is woken
    once (one long-poll answer, one report), as a fleet filling up over time would be, and
    not once per chunk."""
    began = time.monotonic()
    code = ("import json, sys\n"
            "from bench.idle_fleet import insert_servers\n"
            "ids = json.load(sys.stdin)\n"
            f"left = {count}\n"
            "per_host = -(-left // len(ids))\n"
            f"hosts_per_chunk = max(1, {chunk} // per_host)\n"
            "for start in range(0, len(ids), hosts_per_chunk):\n"
            "    part = ids[start:start + hosts_per_chunk]\n"
            "    n = min(left, per_host * len(part))\n"
            "    if n <= 0:\n"
            "        break\n"
            f"    insert_servers({database_url!r}, part, n)\n"
            "    left -= n\n")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code,
                                                stdin=asyncio.subprocess.PIPE)
    await proc.communicate(json.dumps(host_ids).encode())
    if proc.returncode != 0:
        raise RuntimeError(f"inserting the idle servers failed ({proc.returncode})")
    return time.monotonic() - began


def _tenant_image(database_url: str, project_id: str) -> str:
    """An active image row of the tenant's project (nothing boots: the hosts are simulated)."""
    engine = create_engine(database_url)
    with Session(engine) as session, session.begin():
        image = Image(project_id=project_id, name=f"create-{uuid.uuid4().hex[:8]}",
                      status="active", disk_format="qcow2", size=1024, sha256="cd" * 32,
                      properties={})
        session.add(image)
        session.flush()
        image_id = image.id
    engine.dispose()
    return image_id


async def _tenant(fleet: Fleet, database_url: str, creates: int) -> tuple[dict[str, str], str]:
    """A project of its own for the creates (quota for all of them), a member's token and an
    image: (auth header, image id)."""
    api = fleet.apis[0]
    suffix = uuid.uuid4().hex[:8]
    r = await fleet._call("setup", "POST", f"{api}/v1/projects", ok=201, headers=fleet.admin,
                          json={"name": f"creates-{suffix}"})
    project_id = str(r.json()["id"])
    limit = max(10 * creates, 100)
    most = 2**31 - 1  # the quota API's largest value
    await fleet._call("setup", "PUT", f"{api}/v1/quotas/{project_id}", headers=fleet.admin,
                      json={"instances": min(limit, most), "vcpus": min(16 * limit, most),
                            "ram_mb": min(65536 * limit, most),
                            "disk_gb": min(1000 * limit, most)})
    name, password = f"creator-{suffix}", f"pw-{uuid.uuid4().hex}"
    await fleet._call("setup", "POST", f"{api}/v1/users", ok=201, headers=fleet.admin,
                      json={"name": name, "password": password, "project_id": project_id,
                            "role": "member"})
    r = await fleet._call("setup", "POST", f"{api}/v1/auth/tokens", ok=201,
                          json={"user": name, "password": password, "project": project_id})
    header = {"Authorization": f"Bearer {r.json()['token']}"}
    return header, await asyncio.to_thread(_tenant_image, database_url, project_id)


created_on: dict[str, str] = {}  # server id -> the API process that accepted its create


async def _creates(fleet: Fleet, auth: dict[str, str], image: str, rate: float,
                   duration: float, zone: str, concurrency: int,
                   ) -> tuple[list[tuple[str, float, float]], int, list[float]]:
    """POST ``rate`` creates per second for ``duration`` seconds, alternating the API
    processes, at most ``concurrency`` of them unanswered (a tenant's script waits for its
    answers; a tick that finds them all out is skipped). Return (server id, sent at, 202 at)
    of those accepted, the ticks skipped and every answered create's latency."""
    accepted: list[tuple[str, float, float]] = []
    latencies: list[float] = []
    out = 0
    skipped = 0

    async def one(i: int) -> None:
        nonlocal out
        api = fleet.apis[i % len(fleet.apis)]
        sent = time.monotonic()
        try:
            r = await fleet._call("create", "POST", f"{api}/v1/servers", ok=202, retries=0,
                                  headers=auth, json={"name": f"c-{i}", "flavor": "tiny",
                                                      "image": image,
                                                      "availability_zone": zone})
            server_id = str(r.json()["id"])
            accepted.append((server_id, sent, time.monotonic()))
            created_on[server_id] = api
        except AgentApiError:
            pass  # counted in the fleet's stats
        finally:
            out -= 1
            latencies.append(time.monotonic() - sent)

    tasks = []
    began = time.monotonic()
    i = 0
    while (due := began + i / rate) < began + duration:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        if out >= concurrency:
            skipped += 1
        else:
            out += 1
            tasks.append(asyncio.create_task(one(i)))
        i += 1
    await asyncio.gather(*tasks)
    return accepted, skipped, latencies


def _busy(fleet: Fleet) -> int:
    return sum(n for (kind, _), n in fleet.stats.calls.items() if kind.endswith(":retry-after"))


async def _settle(fleet: Fleet, servers: int, least: float, most: float,
                  began: float) -> dict[str, Any]:
    """Wait until every host sees its servers and every report is acknowledged (at least
    ``least``, at most ``most`` seconds); return how long it took and what it cost."""
    t0 = time.monotonic()
    errors0, busy0 = fleet.stats.server_errors, _busy(fleet)
    settled_in: float | None = None
    shown = t0
    while (now := time.monotonic()) - t0 < most:
        seen = sum(len(h.reported) for h in fleet.hosts)
        unacked = fleet.unacknowledged()
        if settled_in is None and seen >= servers and unacked == 0:
            settled_in = now - t0
            _progress(began, f"settled in {settled_in:.1f} s")
        if settled_in is not None and now - t0 >= least:
            break
        if now - shown >= 10:
            shown = now
            _progress(began, f"settling: {seen} servers seen, {unacked} hosts unacknowledged, "
                             f"{_busy(fleet) - busy0} refused, "
                             f"{fleet.stats.server_errors - errors0} 5xx")
        await asyncio.sleep(0.5)
    return {"settled": settled_in is not None,
            "settled_in_s": None if settled_in is None else round(settled_in, 1),
            "waited_s": round(time.monotonic() - t0, 1),
            "hosts_unacknowledged": fleet.unacknowledged(),
            "agent_busy": _busy(fleet) - busy0,
            "server_errors": fleet.stats.server_errors - errors0}


def _progress(began: float, what: str) -> None:
    print(f"[{time.monotonic() - began:7.1f} s] {what}", file=sys.stderr, flush=True)


async def _hosts_up(fleet: Fleet) -> int:
    try:
        return await fleet.hosts_up()
    except AgentApiError:
        return -1  # the listing itself failed (counted in the stats)


async def _scrape(fleet: Fleet, api: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One admin scrape of an API process's ``/metrics``: (sample name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    r = await fleet._call("scrape", "GET", f"{api}/metrics", headers=fleet.admin)
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(r.text) for sample in family.samples}


async def _hosts_up_gauge(fleet: Fleet) -> int:
    """Hosts up, from ``minicloud_hosts{state="up"}`` (one grouped count in the API, as a
    Prometheus scrape would read it): listing every host page by page is itself a heavy
    request at this scale, so the window samples this and lists once, after it."""
    try:
        samples = await _scrape(fleet, fleet.apis[0])
    except AgentApiError:
        return -1
    return int(sum(v for (name, labels), v in samples.items()
                   if name == "minicloud_hosts" and ("state", "up") in labels))


def _loop_lag(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, Any]:
    """The API process's event-loop lag histogram: samples, and how many lagged over 50 ms,
    100 ms and 250 ms."""
    def at_most(le: str) -> float:
        return samples.get(("minicloud_event_loop_lag_seconds_bucket", (("le", le),)), 0.0)
    count = samples.get(("minicloud_event_loop_lag_seconds_count", ()), 0.0)

    def pauses(generation: str, le: str | None = None) -> float:
        if le is None:
            return samples.get(("minicloud_gc_pause_seconds_count",
                                (("generation", generation),)), 0.0)
        return samples.get(("minicloud_gc_pause_seconds_bucket",
                            (("generation", generation), ("le", le))), 0.0)
    return {"samples": int(count), "over_50ms": int(count - at_most("0.05")),
            "over_100ms": int(count - at_most("0.1")), "over_250ms": int(count - at_most("0.25")),
            **{f"gc{g}_collections": int(pauses(g)) for g in "012"},
            **{f"gc{g}_over_50ms": int(pauses(g) - pauses(g, "0.05")) for g in "012"}}


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; return the summary it prints."""
    p = argparse.ArgumentParser(prog="bench.fleet_10k", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api", action="append", required=True, help="API base URL (repeatable)")
    p.add_argument("--database-url", required=True)
    p.add_argument("--admin-token", default=os.environ.get("MINICLOUD_TOKEN"))
    p.add_argument("--hosts", type=int, default=10000)
    p.add_argument("--servers", type=int, default=100000)
    p.add_argument("--heartbeat", type=float, default=30.0)
    p.add_argument("--long-poll-wait", type=float, default=30.0)
    p.add_argument("--enroll-concurrency", type=int, default=100)
    p.add_argument("--enroll-batch", type=int, default=500,
                   help="hosts start beating once their batch has enrolled")
    p.add_argument("--enroll-deadline", type=float, default=1200.0,
                   help="seconds after which no further batch enrolls (the run goes on with "
                   "the hosts enrolled, reported as enrolled)")
    p.add_argument("--insert-chunk", type=int, default=10000,
                   help="idle servers per insert transaction")
    p.add_argument("--settle", type=float, default=60.0,
                   help="seconds at least between the insert and the window")
    p.add_argument("--settle-deadline", type=float, default=900.0,
                   help="seconds at most to wait for every report to be acknowledged")
    p.add_argument("--window", type=float, default=600.0)
    p.add_argument("--create-rate", type=float, default=2.0, help="creates per second")
    p.add_argument("--create-concurrency", type=int, default=4,
                   help="creates unanswered at most (a tick finding more is skipped)")
    p.add_argument("--keepalive-expiry", type=float, default=25.0,
                   help="seconds a simulated host keeps an idle connection")
    p.add_argument("--measure-pid", type=int, action="append", default=[])
    args = p.parse_args(argv)
    if not args.admin_token:
        p.error("--admin-token or MINICLOUD_TOKEN is required")
    # The simulator holds every host's poll and heartbeat objects, like the API: the same
    # collector tuning (api.server.COLLECTOR_THRESHOLDS), or its own full collections would
    # pause every simulated host and show up in the timings.
    gc.set_threshold(*COLLECTOR_THRESHOLDS)
    gc.freeze()
    nofile = raise_open_files_limit(2 * args.hosts + 1024)
    # Two kept connections per host do not fit: heartbeats close theirs (long-polls keep).
    close_heartbeats = 2 * args.hosts + 1024 > nofile
    zone = "nova"
    fleet = TimedFleet(args.api, args.admin_token, heartbeat=args.heartbeat,
                       long_poll_wait=args.long_poll_wait, trust_active=True,
                       enroll_concurrency=args.enroll_concurrency,
                       keepalive_expiry=args.keepalive_expiry, availability_zone=zone,
                       close_heartbeats=close_heartbeats)
    me = os.getpid()
    began = time.monotonic()
    summary: dict[str, Any] = {}
    try:
        creates_total = int(args.create_rate * args.window) + 1
        auth, image = await _tenant(fleet, args.database_url, creates_total)
        # Enrollment: batches, each host beating from the end of its batch on.
        sim_cpu0 = cpu_seconds(me)
        while len(fleet.hosts) + len(fleet.failed) < args.hosts:
            if time.monotonic() - began > args.enroll_deadline:
                _progress(began, f"enrollment deadline: going on with {len(fleet.hosts)}")
                break
            batch = min(args.enroll_batch, args.hosts - len(fleet.hosts) - len(fleet.failed))
            fleet.start(await fleet.enroll(batch))
            _progress(began, f"{len(fleet.hosts)} hosts enrolled, {len(fleet.failed)} failed, "
                             f"{fleet.stats.server_errors} 5xx")
        enrolled_in = time.monotonic() - began
        storm_errors = fleet.stats.server_errors
        storm_busy = sum(n for (kind, status), n in fleet.stats.calls.items()
                         if kind.endswith(":retry-after"))
        up_after_enroll = await _hosts_up(fleet)
        up_in = time.monotonic() - began
        enroll_sim_cpu = cpu_seconds(me) - sim_cpu0
        _progress(began, f"{up_after_enroll} hosts up; inserting {args.servers} servers")
        inserted_in = await _insert(args.database_url, [h.host_id for h in fleet.hosts],
                                    args.servers, args.insert_chunk)
        _progress(began, f"inserted in {inserted_in:.1f} s; settling")
        settle = await _settle(fleet, args.servers, args.settle, args.settle_deadline, began)
        seen = sum(len(h.reported) for h in fleet.hosts)
        # The window.
        cpu0 = {pid: cpu_seconds(pid) for pid in args.measure_pid}
        sim_cpu0 = cpu_seconds(me)
        errors0 = fleet.stats.server_errors
        calls0 = fleet.stats.calls.copy()
        t0 = time.monotonic()
        _progress(began, f"window of {args.window} s: {seen} idle servers seen by hosts")
        lag_scrapes = {api: _loop_lag(await _scrape(fleet, api)) for api in fleet.apis}
        lag = LoopLag()
        lag.start()
        creator = asyncio.create_task(_creates(fleet, auth, image, args.create_rate,
                                               args.window, zone, args.create_concurrency))
        up_samples = []
        while (left := t0 + args.window - time.monotonic()) > 0:
            await asyncio.sleep(min(60.0, left))
            up_samples.append(await _hosts_up_gauge(fleet))
            _progress(began, f"{up_samples[-1]} hosts up, "
                             f"{fleet.stats.server_errors - errors0} 5xx in the window, "
                             f"{len(fleet.first_seen)} creates seen by their hosts")
        elapsed = time.monotonic() - t0
        cpu = {pid: cpu_seconds(pid) - cpu0[pid] for pid in args.measure_pid}
        sim_cpu = cpu_seconds(me) - sim_cpu0
        load = os.getloadavg()
        window_calls = fleet.stats.calls - calls0
        accepted, skipped, create_latencies = await creator
        lag_before = lag_scrapes
        lag_after = {api: _loop_lag(await _scrape(fleet, api)) for api in fleet.apis}
        listed_up = await _hosts_up(fleet)  # every host, page by page, once the creates ended
        await asyncio.sleep(min(5.0, args.long_poll_wait))  # the last creates' way
        lag.stop()
        lags = [x for _, x in lag.samples]
        # Creates seen late, and how much of that the simulator's own loop lag explains.
        slow = [(sid, fleet.first_seen[sid] - ok, lag.worst_between(ok, fleet.first_seen[sid]))
                for sid, _, ok in accepted
                if sid in fleet.first_seen and fleet.first_seen[sid] - ok > 0.1]
        cross = {sid: via != api for sid, via, api in (
            (sid, fleet.seen_via.get(sid), api_of) for sid, api_of in created_on.items())}
        slow_cross = sum(1 for sid, _, _ in slow if cross.get(sid))
        from_202 = [max(0.0, fleet.first_seen[sid] - ok)
                    for sid, _, ok in accepted if sid in fleet.first_seen]
        from_sent = [fleet.first_seen[sid] - sent
                     for sid, sent, _ in accepted if sid in fleet.first_seen]
        agent_calls = sum(n for (kind, _), n in window_calls.items()
                          if kind.split(":")[0] in ("heartbeat", "long-poll", "observe"))
        summary = {
            "hosts": args.hosts, "servers": args.servers, "api_processes": len(args.api),
            "heartbeat_s": args.heartbeat, "long_poll_wait_s": args.long_poll_wait,
            "open_files_limit": nofile, "heartbeat_connections_closed": close_heartbeats,
            "enrollment": {"concurrency": args.enroll_concurrency,
                           "enrolled": len(fleet.hosts),
                           "enrolled_in_s": round(enrolled_in, 1),
                           "all_up_in_s": round(up_in, 1), "up": up_after_enroll,
                           "failed": len(fleet.failed), "server_errors": storm_errors,
                           "agent_busy_retries": storm_busy,
                           "simulator_cpu_s": round(enroll_sim_cpu, 1)},
            "insert_s": round(inserted_in, 1), "idle_servers_seen_by_hosts": seen,
            "settle": settle,
            "server_errors_before_window": errors0,
            "agent_busy_before_window": sum(n for (kind, _), n in calls0.items()
                                            if kind.endswith(":retry-after")),
            "window_s": round(elapsed, 1),
            "hosts_up_samples": up_samples,
            "hosts_up_listed_after_window": listed_up,
            "api_event_loop_lag_in_window": {
                api: {k: lag_after[api][k] - lag_before[api][k] for k in lag_after[api]}
                for api in fleet.apis},
            "server_errors_in_window": fleet.stats.server_errors - errors0,
            "server_errors_whole_run": fleet.stats.server_errors,
            "agent_busy_in_window": sum(n for (kind, _), n in window_calls.items()
                                        if kind.endswith(":retry-after")),
            "agent_requests_per_s": round(agent_calls / elapsed, 1),
            "api_cpu_percent_of_one_core": {
                str(pid): round(100 * c / elapsed, 1) for pid, c in cpu.items()},
            "simulator_cpu_percent_of_one_core": round(100 * sim_cpu / elapsed, 1),
            "peak_rss_mb": {"simulator": _peak_rss_mb(me),
                            **{str(pid): _peak_rss_mb(pid) for pid in args.measure_pid}},
            "load_average": [round(x, 2) for x in load],
            "creates": {"rate_per_s": args.create_rate,
                        "concurrency": args.create_concurrency, "accepted": len(accepted),
                        "ticks_skipped": skipped,
                        "answer_ms": {"p50": _ms(_percentile(create_latencies, 0.5)),
                                      "p99": _ms(_percentile(create_latencies, 0.99))},
                        "seen_by_agent": len(from_202),
                        "seen_after_202_ms": {
                            "p50": _ms(_percentile(from_202, 0.5)),
                            "p99": _ms(_percentile(from_202, 0.99)),
                            "max": _ms(max(from_202, default=None))},
                        "seen_after_202_over_100ms": {
                            "count": len(slow),
                            "host_on_the_other_api_process": slow_cross,
                            "simulator_lag_over_half_of_it": sum(
                                1 for _, late, worst in slow if worst > late / 2),
                            "worst": [{"ms": _ms(late), "simulator_lag_ms": _ms(worst)}
                                      for _, late, worst in sorted(
                                          slow, key=lambda x: -x[1])[:10]]},
                        "creates_on_the_other_api_process_than_the_host": sum(cross.values()),
                        "seen_after_post_sent_ms": {
                            "p50": _ms(_percentile(from_sent, 0.5)),
                            "p99": _ms(_percentile(from_sent, 0.99)),
                            "mean": _ms(statistics.fmean(from_sent) if from_sent else None)}},
            "simulator_loop_lag_ms": {"p50": _ms(_percentile(lags, 0.5)),
                                      "p99": _ms(_percentile(lags, 0.99)),
                                      "max": _ms(max(lags, default=None))},
            "enroll_failures": fleet.failed[:5],
            "calls": fleet.stats.summary(),
        }
    finally:
        await fleet.close()
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    result = asyncio.run(main())
    sys.exit(0 if result.get("server_errors_in_window") == 0 else 1)
