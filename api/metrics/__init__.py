"""Prometheus metrics of the API process (``GET /metrics``, docs/operations.md).

Every metric is declared here, once; other modules call the small ``observe_*`` functions so
they need not know prometheus-client. Under several API processes, set
``PROMETHEUS_MULTIPROC_DIR`` (an empty directory, wiped at service start) before the processes
start: values then live in per-process files that ``/metrics`` adds up
(``minicloud-api --workers N`` sets one up by itself). Without it each process counts alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from collections.abc import Awaitable, Mapping
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, multiprocess
from sqlalchemy import Engine, event
from sqlalchemy.pool import QueuePool

T = TypeVar("T")

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
"""Whether values are shared through PROMETHEUS_MULTIPROC_DIR (read once, at import)."""

# The *_created series double the exposition for no use here.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Latency buckets up to the longest agent long-poll (30 s).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter(
    "minicloud_http_requests", "HTTP requests answered, by route template and status class.",
    ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "minicloud_http_request_duration_seconds",
    "Time from request to the end of the answer, by route template.",
    ["method", "route"], buckets=_BUCKETS)
LONG_POLLS_WAITING = Gauge(
    "minicloud_agent_long_polls_waiting",
    "Agent desired-state long-polls waiting for a change right now.",
    multiprocess_mode="livesum")
POOL_IN_USE = Gauge(
    "minicloud_db_pool_in_use", "Database connections checked out of the pool.",
    multiprocess_mode="livesum")
POOL_OVERFLOW = Gauge(
    "minicloud_db_pool_overflow", "Connections open beyond the pool size (max_overflow).",
    multiprocess_mode="livesum")
POOL_SIZE = Gauge(
    "minicloud_db_pool_size", "Configured pool size (MINICLOUD_DB_POOL_SIZE).",
    multiprocess_mode="livesum")
DATABASE_ERRORS = Counter(
    "minicloud_database_errors",
    "Requests answered 503 because of the database, by problem code.", ["code"])
ADMITTED = Gauge(
    "minicloud_agent_admitted",
    "Agent enrollments, inventories and heartbeats being handled right now.",
    multiprocess_mode="livesum")
ADMISSION_REJECTED = Counter(
    "minicloud_agent_admission_rejected",
    "Agent enrollments, inventories and heartbeats answered 503 agent_busy.", ["route"])
LEDGER_WRITES = Counter(
    "minicloud_ledger_writes", "Usage ledger entries written, by kind.", ["kind"])
PLACEMENTS = Counter(
    "minicloud_placement_decisions",
    "Placement decisions, by outcome (host_found or no_valid_host).", ["outcome"])
SNAPSHOT_READS = Counter(
    "minicloud_scheduler_snapshot_reads",
    "Loads of the API process's cached copy of the hosts, by what they read: unchanged (the "
    "one-row fingerprint only), compared (PostgreSQL: every host's generation in one row, then "
    "the hosts that moved), generations (a row per host, then the hosts that moved) or "
    "liveness (the same with every host's heartbeat, every minute at most).", ["how"])
CLAIMS_FOLLOWED = Counter(
    "minicloud_scheduler_claims_followed",
    "Claims committed by API processes (other ones, mostly) that this process applied to its "
    "copy of the hosts from their notifications (PostgreSQL), sparing a re-read.")
PLACEMENT_REFUSALS = Counter(
    "minicloud_placement_refusals",
    "Hosts refused by a placement decision, by the filter's reason.", ["reason"])


LONG_POLLS_ENDED = Counter(
    "minicloud_agent_long_polls_ended",
    "Agent desired-state long-polls that waited, by how the wait ended: notified (a change "
    "of the host was committed), timeout (the wait ran out) or disconnected.", ["how"])
STATEMENTS = Counter(
    "minicloud_db_statements",
    "SQL statements sent to the database, by the route template of the request that sent "
    "them (background: the process's own tasks).", ["route"])

LOOP_LAG_SECONDS = Histogram(
    "minicloud_event_loop_lag_seconds",
    "How much later than asked the API process's event loop ran a timer (sampled every "
    "0.25 s): time every request handled on the loop waited on top of its own work.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
LOOP_LAG_TICK = 0.25
GC_PAUSE_SECONDS = Histogram(
    "minicloud_gc_pause_seconds",
    "How long each collection of Python's cyclic garbage collector stopped the process, by "
    "generation (2: a full collection).", ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))


def watch_collector() -> None:
    """Observe every garbage collection's pause into ``GC_PAUSE_SECONDS`` (once per
    process)."""
    started: list[float] = []

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            GC_PAUSE_SECONDS.labels(str(info["generation"])).observe(
                time.perf_counter() - started[0])

    gc.callbacks.append(timed)


async def watch_loop_lag(stop: asyncio.Event) -> None:
    """Observe the event loop's lag into ``LOOP_LAG_SECONDS`` until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        asked = loop.time() + LOOP_LAG_TICK
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LOOP_LAG_TICK)
        LOOP_LAG_SECONDS.observe(max(0.0, loop.time() - asked))


request_scope: ContextVar[Mapping[str, Any] | None] = ContextVar("request_scope", default=None)
"""The ASGI scope of the request being handled (set by the request metrics middleware)."""


class Decision(Protocol):
    """What ``observe_placement`` reads of a scheduler decision."""

    @property
    def host(self) -> object | None: ...

    @property
    def refusals(self) -> Mapping[str, int]: ...


def observe_placement(decision: Decision) -> None:
    """Count one placement decision and the hosts it refused, per reason."""
    PLACEMENTS.labels("no_valid_host" if decision.host is None else "host_found").inc()
    for reason, hosts in decision.refusals.items():
        PLACEMENT_REFUSALS.labels(reason).inc(hosts)


def observe_ledger_write(kind: str) -> None:
    """Count one ledger entry written."""
    LEDGER_WRITES.labels(kind).inc()


async def waiting_long_poll(wait: Awaitable[T]) -> T:
    """Await ``wait`` (a long-poll's sleep) counted in ``minicloud_agent_long_polls_waiting``."""
    LONG_POLLS_WAITING.inc()
    try:
        return await wait
    finally:
        LONG_POLLS_WAITING.dec()


def observe_long_poll_end(how: str) -> None:
    """Count one long-poll wait that ended (``notified``, ``timeout``, ``disconnected``)."""
    LONG_POLLS_ENDED.labels(how).inc()


def count_statements(engine: Engine) -> None:
    """Count every statement the engine sends, by the route of the request sending it.

    The route template is read from the request's scope at execution time (the router has
    matched it by then); the context variable follows the request into the thread pool.
    """

    def count(*_args: Any) -> None:
        scope = request_scope.get()
        route = scope.get("route") if scope is not None else None
        STATEMENTS.labels(str(getattr(route, "path", "unmatched")) if scope is not None
                          else "background").inc()

    event.listen(engine, "before_cursor_execute", count)


def process_exited() -> None:
    """Drop this process's live gauges from the shared directory (multiprocess mode only)."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def watch_pool(engine: Engine, pool_size: int) -> None:
    """Keep the pool gauges current on every checkout and checkin (cheap: two sets)."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return
    POOL_SIZE.set(pool_size)

    def update(*_args: Any) -> None:
        POOL_IN_USE.set(pool.checkedout())
        POOL_OVERFLOW.set(max(pool.overflow(), 0))

    event.listen(pool, "checkout", update)
    event.listen(pool, "checkin", update)


__all__ = ["count_statements", "observe_ledger_write", "observe_long_poll_end",
           "observe_placement", "process_exited", "request_scope", "waiting_long_poll",
           "watch_pool"]
