"""Guest metrics rules: rates from consecutive counters, rollups, retention and queries.

Ingestion (``ingest``): an agent sends one batch per interval with every running server's
cumulative libvirt counters at one instant. For each live server of that host the previous
counters (``guest_metric_counters``) are the baseline: the differences over the elapsed time
are one sample of every metric of ``registry.METRICS``, added to the bucket of each rollup
level (``Settings.guest_metrics_levels``). The first report of a server, a repeated or older
batch, and a counter that went backwards (the domain restarted) only set the baseline.

Retention (``prune``): each level keeps its buckets for its retention; the delete is a range
of the (step, bucket) index, so it costs what it deletes, and it runs at most once per
``guest_metrics_prune_interval_seconds`` per API process, from the ingestion path.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from api.config import Settings, get_settings
from api.deps import Principal
from api.errors import InvalidInput
from api.guest_metrics import repository
from api.guest_metrics.registry import BY_NAME, METRICS, GuestMetric
from api.guest_metrics.schemas import (
    GuestSample,
    GuestSamplesIn,
    GuestSamplesOut,
    MetricPoint,
    MetricSeriesOut,
)
from api.servers import service as servers

# Most points one series answer may hold.
MAX_POINTS = 1000


@dataclass(frozen=True)
class Counters:
    """A server's cumulative counters at one instant (epoch milliseconds)."""

    at_ms: int
    cpu_time_ns: int
    disk_read_bytes: int
    disk_write_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int

    def as_row(self, server_id: str) -> dict[str, Any]:
        """The ``guest_metric_counters`` row."""
        return {"server_id": server_id, "at_ms": self.at_ms, "cpu_time_ns": self.cpu_time_ns,
                "disk_read_bytes": self.disk_read_bytes,
                "disk_write_bytes": self.disk_write_bytes, "net_rx_bytes": self.net_rx_bytes,
                "net_tx_bytes": self.net_tx_bytes}


def counters_of(sample: GuestSample, at_ms: int) -> Counters:
    """The counters a sample carries."""
    return Counters(at_ms, sample.cpu_time_ns, sample.disk_read_bytes, sample.disk_write_bytes,
                    sample.net_rx_bytes, sample.net_tx_bytes)


def memory_used_mb(sample: GuestSample) -> float:
    """Memory used: balloon current - unused when the guest reports its unused memory (the
    guest's own view), else the QEMU process's RSS, else the balloon size."""
    if sample.memory_unused_kib is not None and sample.memory_kib:
        return max(0, sample.memory_kib - sample.memory_unused_kib) / 1024
    if sample.memory_rss_kib is not None:
        return sample.memory_rss_kib / 1024
    return sample.memory_kib / 1024


def derive(prev: Counters, cur: Counters, vcpus: int, memory_mb: float) -> dict[str, float] | None:
    """One sample of every metric from two consecutive counter readings, or None when they
    give no rate (not later than the baseline, or a counter went backwards: a restart).

    ``cpu_util`` = delta cpu_time_ns / (elapsed ns x vCPUs) x 100, capped at 100 (libvirt's CPU
    time includes QEMU's own threads, which can push it slightly past the vCPUs' share).
    """
    elapsed_ms = cur.at_ms - prev.at_ms
    if elapsed_ms <= 0:
        return None
    deltas = (cur.cpu_time_ns - prev.cpu_time_ns, cur.disk_read_bytes - prev.disk_read_bytes,
              cur.disk_write_bytes - prev.disk_write_bytes, cur.net_rx_bytes - prev.net_rx_bytes,
              cur.net_tx_bytes - prev.net_tx_bytes)
    if min(deltas) < 0:
        return None
    seconds = elapsed_ms / 1000
    cpu, rd, wr, rx, tx = deltas
    util = cpu / (seconds * 1e9 * max(vcpus, 1)) * 100
    return {"cpu_util": min(util, 100.0), "memory_used_mb": memory_mb,
            "disk_read_bps": rd / seconds, "disk_write_bps": wr / seconds,
            "net_rx_bps": rx / seconds, "net_tx_bps": tx / seconds}


class _PruneClock:
    """When this process last pruned (monotonic), so the ingestion path prunes at most once
    per interval whatever the request rate."""

    def __init__(self) -> None:
        self._next = 0.0
        self._lock = threading.Lock()

    def due(self, interval: float) -> bool:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                return False
            self._next = now + interval
            return True


_prune_clock = _PruneClock()


def ingest(session: Session, settings: Settings, host_id: str, body: GuestSamplesIn,
           now: datetime) -> GuestSamplesOut:
    """Take one host's batch: rates into the rollups, counters as the next baseline.

    Samples of servers that are not live servers of ``host_id`` (another host's, deleted,
    unknown) are ignored and listed; nothing else refuses a batch. ``at`` is clamped to the
    API's clock. Two batches of one host racing (a retry while the first still runs) can add a
    sample twice, never move a baseline backwards.
    """
    at = min(body.at, now)
    at_ms = int(at.timestamp() * 1000)
    latest: dict[str, GuestSample] = {s.server_id: s for s in body.samples}
    live = repository.live_servers_of_host(session, host_id, sorted(latest))
    ignored = sorted(sid for sid in latest if sid not in live)
    baselines = repository.counters(session, sorted(live))
    at_s = at_ms // 1000
    levels = [step for step, _ in settings.guest_metrics_levels]
    counter_rows: list[dict[str, Any]] = []
    rollup_rows: list[dict[str, Any]] = []
    for sid, vcpus in live.items():
        sample = latest[sid]
        cur = counters_of(sample, at_ms)
        old = baselines.get(sid)
        if old is not None and at_ms <= old[0]:
            continue  # a repeated or older batch: nothing new
        counter_rows.append(cur.as_row(sid))
        if old is None:
            continue
        values = derive(Counters(*old), cur, vcpus, memory_used_mb(sample))
        if values is None:
            continue
        sums = {m.column: values[m.name] for m in METRICS}
        for step in levels:
            rollup_rows.append({"server_id": sid, "step": step, "bucket": at_s - at_s % step,
                                "samples": 1, **sums})
    repository.put_counters(session, counter_rows)
    repository.add_to_rollups(session, rollup_rows)
    if _prune_clock.due(settings.guest_metrics_prune_interval_seconds):
        prune(session, settings, now)
    return GuestSamplesOut(accepted=len(live), ignored=ignored)


def prune(session: Session, settings: Settings, now: datetime) -> int:
    """Delete every level's buckets older than its retention, and the baselines of servers
    silent for longer than the finest level keeps; returns the rows deleted."""
    now_s = int(now.timestamp())
    deleted = 0
    for step, keep in settings.guest_metrics_levels:
        deleted += repository.prune_rollups(session, step, now_s - keep)
    finest_keep = settings.guest_metrics_levels[0][1]
    deleted += repository.prune_counters(session, (now_s - finest_keep) * 1000)
    return deleted


def metric(name: str) -> GuestMetric:
    """The metric called ``name``; raises InvalidInput ``unknown_metric``."""
    found = BY_NAME.get(name)
    if found is None:
        raise InvalidInput(f"No guest metric is called {name!r}.", code="unknown_metric",
                           names=[m.name for m in METRICS])
    return found


def _level_for_window(settings: Settings, window_s: int) -> int:
    # The finest level that still holds the whole window (else the coarsest one).
    for step, keep in settings.guest_metrics_levels:
        if keep >= window_s:
            return step
    return settings.guest_metrics_levels[-1][0]


def recent_average(session: Session, server_ids: Sequence[str], name: str, window_s: int,
                   now: datetime, *, settings: Settings | None = None) -> dict[str, float]:
    """Per server with samples in the window, the average of metric ``name`` over the last
    ``window_s`` seconds; servers without samples are absent.

    The window is the buckets of the finest level that still keeps ``window_s`` seconds whose
    start lies in [now - window_s, now] (so the bucket being filled counts); the average is
    per sample (every sample covers about one agent interval). Raises InvalidInput
    ``unknown_metric`` for an unknown ``name``. ``settings`` (default: the process's,
    ``get_settings()``) only says which rollup levels exist.
    """
    settings = settings or get_settings()
    column = metric(name).column
    if not server_ids or window_s <= 0:
        return {}
    step = _level_for_window(settings, window_s)
    now_s = int(now.timestamp())
    return repository.averages(session, list(dict.fromkeys(server_ids)), column, step,
                               now_s - window_s, now_s)


def _epoch(value: datetime) -> int:
    return math.floor(value.timestamp())


def series(session: Session, settings: Settings, principal: Principal, server_id: str,
           name: str, start: datetime | None, end: datetime | None, step: int | None,
           now: datetime) -> MetricSeriesOut:
    """A metric of a server the caller sees, averaged per ``step`` seconds over [start, end).

    Defaults: end now, start one hour before end, step the finest level that keeps ``start``.
    The rollup level read is the coarsest whose step is at most ``step`` and that still keeps
    ``start`` (else the finest that keeps it); the answer's ``step`` is never finer than that
    level's. Raises NotFound ``server_not_found`` (absent, deleted, another project's),
    InvalidInput ``unknown_metric``, ``invalid_metric_range``.
    """
    server = servers.get_server(session, principal, server_id)
    wanted = metric(name)
    end = end or now
    start = start or end - timedelta(hours=1)
    if start >= end or (step is not None and step <= 0):
        raise InvalidInput("The range needs start before end and a positive step.",
                           code="invalid_metric_range")
    age = max(0, _epoch(now) - _epoch(start))
    levels = settings.guest_metrics_levels
    keeping = [(s, k) for s, k in levels if k >= age] or [levels[-1]]
    if step is None:
        level = keeping[0][0]
    else:
        fitting = [s for s, _ in keeping if s <= step]
        level = fitting[-1] if fitting else keeping[0][0]
    out_step = max(level, step or level)
    out_step -= out_step % level  # points made of whole buckets
    first, last = _epoch(start), math.ceil(end.timestamp()) - 1
    if (last - first) // out_step + 1 > MAX_POINTS:
        raise InvalidInput(f"The range holds more than {MAX_POINTS} steps; use a larger step.",
                           code="invalid_metric_range")
    rows = repository.series(session, server.id, wanted.column, level, out_step,
                             first - first % level, last)
    points = [MetricPoint(at=datetime.fromtimestamp(at, UTC), value=total / n, samples=n)
              for at, total, n in rows]
    return MetricSeriesOut(server_id=server.id, name=wanted.name, unit=wanted.unit,
                           start=start, end=end, step=out_step, points=points)
