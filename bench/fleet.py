"""A fleet of simulated compute hosts in one asyncio process: a load generator for the API.

Each simulated host speaks the real agent protocol over real HTTP, with the agent's own wire
models and retry rules (``compute_agent.client``: the request and answer models, and
``Retry-After`` on 503/429 with jitter): it enrolls with an enrollment token minted through the
admin API, puts its inventory, heartbeats every ``heartbeat`` seconds with the states of its
servers, long-polls its desired state and reports an observation for each server placed on it.

This is a LOAD GENERATOR, NOT A HYPERVISOR: there is no libvirt here, a server "runs" the
moment its desired state says so, and nothing boots. It exists to measure what the API costs
per host and to drive many hosts from one process. The functional path stays the real agent,
``minicloud-agent --simulate N``, on libvirt's test driver.

    python -m bench.fleet --api http://127.0.0.1:8774 --admin-token $MINICLOUD_TOKEN \\
        --hosts 1000 --heartbeat 10 --duration 60 --measure-pid $(pgrep -f minicloud-api)

prints one JSON summary: calls by kind and status, 5xx count, hosts up, and with
``--measure-pid`` the API processes' CPU (from /proc) over the last ``--window`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import ssl
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench.lean_http import Client, Response, TransportError
from compute_agent.client import (
    KEEPALIVE_SECONDS,
    AgentApiError,
    DesiredServer,
    DesiredState,
    Enrollment,
    HeartbeatResult,
    InventoryItem,
    InventoryResult,
    Observation,
    ObservationResult,
    ObservedState,
    jittered,
    retry_after,
    spread,
)


@dataclass
class SimHost:
    """One simulated host: its identity and what it last reported of each server."""

    name: str
    api: str
    host_id: str = ""
    credential: str = ""
    cursor: str | None = None
    # server id -> (state, id of the operation performed) last reported
    reported: dict[str, tuple[ObservedState, str | None]] = field(default_factory=dict)
    # server id -> state the API acknowledged in a heartbeat; None: the next one is full
    acked: dict[str, ObservedState] | None = None
    full_due: float = 0.0  # time.monotonic() of the next periodic full report
    # Its own connections, as a real agent has: each host keeps a long-poll outstanding on
    # one and heartbeats on another.
    http: Client | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The agent's bearer header."""
        return {"Authorization": f"Bearer {self.credential}"}


@dataclass
class Stats:
    """Calls by (kind, status); status 0 is a transport error."""

    calls: Counter[tuple[str, int]] = field(default_factory=Counter)

    def count(self, kind: str, status: int) -> None:
        """Count one answer."""
        self.calls[(kind, status)] += 1

    @property
    def server_errors(self) -> int:
        """Answers 500 and above, except 503 with Retry-After (admission, back-pressure)."""
        return sum(n for (kind, status), n in self.calls.items()
                   if status >= 500 and not kind.endswith(":retry-after"))

    def summary(self) -> dict[str, int]:
        """``kind status -> count``, sorted."""
        return {f"{k} {s}": n for (k, s), n in sorted(self.calls.items())}


def _error_of(r: Response) -> AgentApiError:
    try:
        body = r.json()
        return AgentApiError(r.status_code, str(body.get("code")), str(body.get("detail")))
    except ValueError:
        return AgentApiError(r.status_code, "http_error", r.text[:200])


class Fleet:
    """N simulated hosts against one or more API processes (host i uses ``apis[i % len]``)."""

    def __init__(self, apis: Sequence[str], admin_token: str, *, heartbeat: float = 10.0,
                 full_report: float = 600.0,
                 long_poll_wait: float = 10.0, size: tuple[int, int, int] = (16, 65536, 1000),
                 prefix: str | None = None, retries: int = 12,
                 availability_zone: str = "nova", trust_active: bool = False,
                 enroll_concurrency: int | None = None,
                 keepalive_expiry: float = KEEPALIVE_SECONDS,
                 close_heartbeats: bool = False) -> None:
        self.apis = [a.rstrip("/") for a in apis]
        self.admin = {"Authorization": f"Bearer {admin_token}"}
        self.heartbeat_interval = heartbeat
        self.full_report_seconds = full_report
        # Each heartbeat on a connection of its own, closed after the answer, so a host holds
        # one connection (its long-poll's) instead of two: for a fleet larger than half the
        # process's open-file limit.
        self._heartbeat_headers = {"Connection": "close"} if close_heartbeats else {}
        self.long_poll_wait = long_poll_wait
        self.size = size
        self.prefix = prefix or f"sim-{uuid.uuid4().hex[:6]}"
        self.retries = retries
        self.availability_zone = availability_zone
        # Servers a benchmark inserted as ACTIVE are taken as running without a report.
        self.trust_active = trust_active
        self.hosts: list[SimHost] = []
        self.failed: list[tuple[str, str]] = []
        self.stats = Stats()
        self._tasks: list[asyncio.Task[None]] = []
        self._admin_turns = asyncio.Semaphore(4)
        # Hosts enrolling at once (None: all of them), as an operator's rollout would pace them.
        self._enroll_turns = (asyncio.Semaphore(enroll_concurrency)
                              if enroll_concurrency else None)
        self._timeout = 30.0 + long_poll_wait
        # Below the API's keep-alive timeout, so the server never closes a connection under a
        # request being sent.
        self._keepalive_expiry = keepalive_expiry
        self._tls = ssl.create_default_context()  # shared: one per client costs milliseconds
        self._http = self._client()

    def _client(self) -> Client:
        return Client(timeout=self._timeout, keepalive_expiry=self._keepalive_expiry,
                      tls=self._tls)

    def _http_of(self, host: SimHost) -> Client:
        if host.http is None:
            host.http = self._client()
        return host.http

    async def close(self) -> None:
        """Stop every loop and close the connections."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._http.aclose()
        for host in self.hosts:
            if host.http is not None:
                await host.http.aclose()
                host.http = None

    # ------------------------------------------------------------------ HTTP with retries

    async def _call(self, kind: str, method: str, url: str, *, ok: int | tuple[int, ...] = 200,
                    host: SimHost | None = None, retries: int | None = None,
                    busy_spread: float | None = None, **kwargs: Any) -> Response:
        """Send with the agent's retry rules: 503/429 after ``Retry-After`` (jittered, or
        with ``busy_spread`` at a random point up to that many seconds, as the agent's
        heartbeat does), transport errors and other 5xx with exponential backoff; raises
        AgentApiError. ``ok`` is the status (or statuses) that ends the call; ``retries``
        overrides the fleet's number of retries."""
        last: AgentApiError | None = None
        for attempt in range((self.retries if retries is None else retries) + 1):
            try:
                http = self._http if host is None else self._http_of(host)
                r = await http.request(method, url, **kwargs)
            except TransportError as exc:
                self.stats.count(kind, 0)
                last = AgentApiError(0, "unreachable", str(exc))
                await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
                continue
            hint = retry_after(r)  # type: ignore[arg-type]  # the same two fields as httpx's
            self.stats.count(f"{kind}:retry-after" if hint is not None else kind, r.status_code)
            if r.status_code == ok or (isinstance(ok, tuple) and r.status_code in ok):
                return r
            last = _error_of(r)
            if hint is not None:
                await asyncio.sleep(jittered(hint) if busy_spread is None
                                    else spread(hint, busy_spread))
            elif r.status_code >= 500:
                await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
            else:
                raise last
        assert last is not None
        raise last

    # ------------------------------------------------------------------ enrollment

    async def _mint(self, api: str) -> str:
        # One operator mints the tokens: a few at a time, as a script would. The storm under
        # test is the hosts' own enrollment, inventory and heartbeat.
        async with self._admin_turns:
            r = await self._call("mint-token", "POST", f"{api}/v1/hosts/enrollment-tokens",
                                 ok=201, headers=self.admin)
        return str(r.json()["token"])

    async def _enroll(self, host: SimHost) -> None:
        token = await self._mint(host.api)
        r = await self._call("enroll", "POST", f"{host.api}/v1/agent/enroll", ok=201,
                             host=host, json={
            "token": token, "name": host.name, "availability_zone": self.availability_zone,
            "libvirt_uri": "test:///default", "virt_type": "qemu", "architecture": "x86_64"})
        enrollment = Enrollment.model_validate(r.json())
        host.host_id, host.credential = enrollment.host_id, enrollment.credential
        vcpus, ram_mb, disk_gb = self.size
        inventory = {"VCPU": InventoryItem(total=vcpus), "MEMORY_MB": InventoryItem(total=ram_mb),
                     "DISK_GB": InventoryItem(total=disk_gb)}
        body = {rc: item.model_dump(exclude_none=True) for rc, item in inventory.items()}
        r = await self._call("inventory", "PUT", f"{host.api}/v1/agent/inventory",
                             json=body, headers=host.headers, host=host)
        InventoryResult.model_validate(r.json())
        await self._heartbeat(host)

    async def _enroll_turn(self, host: SimHost) -> None:
        if self._enroll_turns is None:
            await self._enroll(host)
            return
        async with self._enroll_turns:
            await self._enroll(host)

    async def enroll(self, count: int) -> list[SimHost]:
        """Enroll ``count`` new hosts at once, or ``enroll_concurrency`` at a time (token,
        enroll, inventory, first heartbeat each); return those that made it. A host that
        fails for good (AgentApiError after the retries) is listed in ``failed`` and left out
        of the fleet."""
        first = len(self.hosts) + len(self.failed)
        new = [SimHost(f"{self.prefix}-{i:05d}", self.apis[i % len(self.apis)])
               for i in range(first, first + count)]
        results = await asyncio.gather(*(self._enroll_turn(h) for h in new),
                                       return_exceptions=True)
        for host, result in zip(new, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, AgentApiError):
                    raise result
                self.failed.append((host.name, str(result)))
                if host.http is not None:
                    await host.http.aclose()
            else:
                self.hosts.append(host)
        return [h for h in new if h.credential]

    # ------------------------------------------------------------------ steady state

    async def _heartbeat(self, host: SimHost) -> None:
        """One heartbeat as the agent sends it: only the states the API has not acknowledged,
        everything (a full report) first, every ``full_report_seconds`` and when the API asks
        (``full_report``); a failure changes nothing (the next one sends the same)."""
        for _ in range(2):  # the second: the full report the API asked for
            now = datetime.now(UTC)
            full = host.acked is None or time.monotonic() >= host.full_due
            states = {sid: state for sid, (state, _) in host.reported.items()}
            observed = [Observation(server_id=sid, state=state, seen_at=now)
                        for sid, state in states.items()
                        if full or host.acked is None or host.acked.get(sid) != state]
            r = await self._call("heartbeat", "POST", f"{host.api}/v1/agent/heartbeat",
                                 json={"observed": [o.model_dump(mode="json") for o in observed],
                                       "full": full},
                                 headers=host.headers | self._heartbeat_headers, host=host,
                                 busy_spread=self.heartbeat_interval)
            result = HeartbeatResult.model_validate(r.json())
            if result.full_report:
                continue
            host.acked = states
            if full:
                host.full_due = time.monotonic() + self.full_report_seconds
            return

    async def _heartbeats(self, host: SimHost) -> None:
        # Spread the fleet over the interval, as hosts started at different times would be.
        await asyncio.sleep(random.uniform(0, self.heartbeat_interval))
        while True:
            # A failure is counted in the stats; the next beat tries again.
            with contextlib.suppress(AgentApiError):
                await self._heartbeat(host)
            await asyncio.sleep(self.heartbeat_interval)

    async def _observe(self, host: SimHost, server: DesiredServer) -> None:
        wanted = (server.desired, server.operation.id if server.operation else None)
        if host.reported.get(server.server_id) == wanted:
            return
        if self.trust_active and server.status == "ACTIVE" and wanted == ("running", None):
            host.reported[server.server_id] = wanted
            return
        body: dict[str, Any] = {"state": server.desired,
                                "seen_at": datetime.now(UTC).isoformat(),
                                "idempotency_key": f"obs-{uuid.uuid4()}"}
        if server.operation:  # performed at once: nothing runs here
            body["operation"] = {"operation_id": server.operation.id, "result": "success"}
        r = await self._call("observe", "POST",
                             f"{host.api}/v1/agent/servers/{server.server_id}/observations",
                             json=body, headers=host.headers, host=host)
        ObservationResult.model_validate(r.json())
        if server.desired == "absent":
            host.reported.pop(server.server_id, None)
        else:
            host.reported[server.server_id] = wanted

    def _desired_arrived(self, host: SimHost, desired: DesiredState, at: float) -> None:
        """A long-poll answer reached ``host`` at ``at`` (``time.monotonic()``), before any
        of its servers is acted on (a hook for timing benchmarks)."""

    async def _long_polls(self, host: SimHost) -> None:
        while True:
            params: dict[str, Any] = {"wait": self.long_poll_wait}
            if host.cursor is not None:
                params["since"] = host.cursor
            try:
                r = await self._call("long-poll", "GET", f"{host.api}/v1/agent/servers",
                                     params=params, headers=host.headers, host=host,
                                     ok=(200, 304))
                arrived = time.monotonic()
                if r.status_code == 304:  # the wait ended with nothing changed
                    continue
                desired = DesiredState.model_validate(r.json())
                self._desired_arrived(host, desired, arrived)
                for server in desired.servers:
                    await self._observe(host, server)
                host.cursor = desired.cursor
            except AgentApiError:
                await asyncio.sleep(1.0)
            except Exception as exc:  # a bug here must not silently stop a host's loop
                self.failed.append((host.name, repr(exc)))
                raise

    def unacknowledged(self) -> int:
        """Hosts whose last report the API has not acknowledged yet (a heartbeat to come
        carries observations)."""
        return sum(1 for h in self.hosts
                   if h.acked is None or any(h.acked.get(sid) != state
                                             for sid, (state, _) in h.reported.items()))

    def start(self, hosts: Sequence[SimHost] | None = None) -> None:
        """Start the heartbeat and long-poll loops of ``hosts`` (default: every host)."""
        for host in self.hosts if hosts is None else hosts:
            self._tasks.append(asyncio.create_task(self._heartbeats(host)))
            self._tasks.append(asyncio.create_task(self._long_polls(host)))

    async def hosts_up(self) -> int:
        """How many of this fleet's hosts the API lists as up (admin ``GET /v1/hosts``, every
        page: the ``Link: <...>; rel="next"`` header names the next one)."""
        mine = {h.host_id for h in self.hosts}
        up = 0
        url: str | None = f"{self.apis[0]}/v1/hosts"
        while url is not None:
            r = await self._call("list-hosts", "GET", url, headers=self.admin)
            up += sum(1 for h in r.json() if h["id"] in mine and h["state"] == "up")
            link = r.headers.get("Link", "")
            url = (f"{self.apis[0]}{link[1:link.index('>')]}"
                   if link.startswith("<") and 'rel="next"' in link else None)
        return up


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's open-file limit (RLIMIT_NOFILE) towards ``wanted``: the soft
    limit up to the hard one, and the hard one too where the process may (root). Every
    simulated host holds two connections. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):  # not privileged: keep the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = max(soft, wanted) if hard == resource.RLIM_INFINITY else hard
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its reaped children), from /proc/PID/stat."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the fleet from the command line; return the summary it prints."""
    p = argparse.ArgumentParser(prog="bench.fleet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api", action="append", required=True, help="API base URL (repeatable)")
    p.add_argument("--admin-token", default=os.environ.get("MINICLOUD_TOKEN"))
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--heartbeat", type=float, default=10.0)
    p.add_argument("--long-poll-wait", type=float, default=10.0)
    p.add_argument("--duration", type=float, default=60.0, help="seconds to run after enrolling")
    p.add_argument("--window", type=float, default=None,
                   help="CPU measured over the last WINDOW seconds (default: the duration)")
    p.add_argument("--measure-pid", type=int, action="append", default=[])
    args = p.parse_args(argv)
    if not args.admin_token:
        p.error("--admin-token or MINICLOUD_TOKEN is required")
    raise_open_files_limit(2 * args.hosts + 1024)
    fleet = Fleet(args.api, args.admin_token, heartbeat=args.heartbeat,
                  long_poll_wait=args.long_poll_wait)
    began = time.monotonic()
    try:
        await fleet.enroll(args.hosts)
        enrolled_in = time.monotonic() - began
        fleet.start()
        window = min(args.window or args.duration, args.duration)
        await asyncio.sleep(args.duration - window)
        cpu0 = {pid: cpu_seconds(pid) for pid in args.measure_pid}
        t0 = time.monotonic()
        await asyncio.sleep(window)
        elapsed = time.monotonic() - t0
        cpu = {pid: cpu_seconds(pid) - cpu0[pid] for pid in args.measure_pid}
        load = os.getloadavg()
        try:
            up = await fleet.hosts_up()
        except AgentApiError:
            up = -1  # the API did not answer the listing
        summary: dict[str, Any] = {
            "hosts": args.hosts, "heartbeat_s": args.heartbeat,
            "long_poll_wait_s": args.long_poll_wait, "enrolled_in_s": round(enrolled_in, 1),
            "enroll_failed": len(fleet.failed), "hosts_up": up,
            "server_errors": fleet.stats.server_errors,
            "calls": fleet.stats.summary(), "window_s": round(elapsed, 1),
            "api_cpu_percent_of_one_core": {
                str(pid): round(100 * c / elapsed, 1) for pid, c in cpu.items()},
            "load_average": load,
        }
    finally:
        await fleet.close()
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    result = asyncio.run(main())
    sys.exit(0 if result["server_errors"] == 0 and result["enroll_failed"] == 0 else 1)
