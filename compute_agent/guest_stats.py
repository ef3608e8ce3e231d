"""Guest metrics: the running servers' libvirt statistics, one batch per interval per host.

The reconcile loop owns the ``Hypervisor`` (one libvirt connection, not shared by threads), so
it calls ``GuestStatsReporter.maybe_report`` after each pass and bounds its long-poll by
``seconds_until_due``; a report is one ``virConnectGetAllDomainStats`` call and one
``POST /v1/agent/guest-metrics`` with every running server's cumulative counters. The API
derives the rates. Reports are best effort: a failed one is logged and not retried (the next
one carries the counters since the same baseline). A host with no running server sends nothing.

Simulated load (tests and ``--simulate`` only, docs/operations.md "Guest metrics"): libvirt's
test driver reports no CPU time, so ``SimulatedLoad`` reads a JSON file mapping server names
or ids to a CPU load in percent of the server's vCPUs, and the reporter adds that much CPU
time to the server's counter for every interval. The file is re-read when it changes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from compute_agent.client import AgentApiError, AgentClient, DesiredServer, GuestSample
from compute_agent.hypervisor import DomainStats, Hypervisor, HypervisorError

log = logging.getLogger("minicloud.agent")


class SimulatedLoad:
    """CPU load per server name or id from a JSON file ``{"web-1": 80, "<uuid>": 5.5}``.

    A missing or unreadable file means no load (logged once per change); values are clamped to
    [0, 100].
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._mtime: float | None = None
        self._loads: dict[str, float] = {}

    def loads(self) -> dict[str, float]:
        """The current table (re-read when the file's modification time changed)."""
        try:
            mtime = self.path.stat().st_mtime_ns / 1e9
        except OSError:
            mtime = None
        if mtime != self._mtime:
            self._mtime = mtime
            self._loads = self._read() if mtime is not None else {}
        return self._loads

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("simulated load file %s: %s", self.path, exc)
            return {}
        if not isinstance(data, dict):
            log.warning("simulated load file %s: not a JSON object", self.path)
            return {}
        return {str(k): min(100.0, max(0.0, float(v))) for k, v in data.items()
                if isinstance(v, int | float) and not isinstance(v, bool)}

    def load_of(self, server: DesiredServer) -> float:
        """The server's load in percent (by id first, then by name); 0 when not listed."""
        table = self.loads()
        return table.get(server.server_id, table.get(server.name, 0.0))


class GuestStatsReporter:
    """Reads and reports one host's guest statistics every ``interval`` seconds."""

    def __init__(self, hv: Hypervisor, client: AgentClient, interval: float | None,
                 load: SimulatedLoad | None = None) -> None:
        self.hv = hv
        self.client = client
        self.interval = interval
        self.load = load
        self._next = time.monotonic()
        # Simulated CPU time added so far per server (ns), and when it was last advanced.
        self._sim_cpu: dict[str, float] = {}
        self._sim_at: dict[str, float] = {}
        self.reports = 0

    def seconds_until_due(self) -> float | None:
        """Seconds until the next report is due (0: now); None when reporting is off."""
        if self.interval is None:
            return None
        return max(0.0, self._next - time.monotonic())

    def maybe_report(self, servers: Mapping[str, DesiredServer]) -> None:
        """Report the running ones of ``servers`` (id -> desired server) if a report is due."""
        if self.interval is None:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        try:
            stats = self.hv.domain_stats(servers.keys())
        except HypervisorError as exc:
            log.warning("guest statistics: %s", exc)
            return
        if not stats:
            return
        # One wall-clock instant for the batch's time and the simulated CPU time, so a
        # simulated load comes out exactly as the API's cpu_util.
        wall = time.time()
        samples = [self._sample(servers[sid], st, wall) for sid, st in sorted(stats.items())]
        for gone in self._sim_cpu.keys() - stats.keys():
            del self._sim_cpu[gone]
            self._sim_at.pop(gone, None)
        try:
            self.client.report_guest_metrics(datetime.fromtimestamp(wall, UTC), samples)
            self.reports += 1
        except AgentApiError as exc:
            log.warning("guest metrics report: %s", exc)

    def _sample(self, server: DesiredServer, st: DomainStats, now: float) -> GuestSample:
        cpu = st.cpu_time_ns
        if self.load is not None:
            cpu += self._simulated_cpu(server, st, now)
        return GuestSample(
            server_id=server.server_id, cpu_time_ns=cpu, vcpus=st.vcpus,
            memory_kib=st.memory_kib, memory_unused_kib=st.memory_unused_kib,
            memory_rss_kib=st.memory_rss_kib, disk_read_bytes=st.disk_read_bytes,
            disk_write_bytes=st.disk_write_bytes, net_rx_bytes=st.net_rx_bytes,
            net_tx_bytes=st.net_tx_bytes)

    def _simulated_cpu(self, server: DesiredServer, st: DomainStats, now: float) -> int:
        """Advance the server's simulated CPU time by its load over the time since the last
        report (a counter, so the API's rate is exactly the load)."""
        assert self.load is not None
        sid = server.server_id
        last = self._sim_at.get(sid)
        self._sim_at[sid] = now
        if last is not None:
            vcpus = st.vcpus or server.flavor.vcpus
            self._sim_cpu[sid] = (self._sim_cpu.get(sid, 0.0)
                                  + self.load.load_of(server) / 100 * vcpus * (now - last) * 1e9)
        return int(self._sim_cpu.get(sid, 0.0))
