"""Guest metrics SQL: Core statements in batches (the ingestion path runs for every host every
interval, so it builds no ORM objects)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Insert, Table, bindparam, delete, func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from api.models import GuestMetricCounters, GuestMetricRollup, Server
from api.servers.states import DELETED

COUNTERS: Table = GuestMetricCounters.__table__  # type: ignore[assignment]
ROLLUPS: Table = GuestMetricRollup.__table__  # type: ignore[assignment]
COUNTER_COLUMNS = ("at_ms", "cpu_time_ns", "disk_read_bytes", "disk_write_bytes",
                   "net_rx_bytes", "net_tx_bytes")
SUM_COLUMNS = ("samples", "cpu_util_sum", "memory_used_mb_sum", "disk_read_bps_sum",
               "disk_write_bps_sum", "net_rx_bps_sum", "net_tx_bps_sum")
# Bind parameters per IN list: far below SQLite's and PostgreSQL's limits.
_CHUNK = 500


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i:i + _CHUNK]


def _insert(session: Session, table: Table) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_update`` (SQLite and PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def live_servers_of_host(session: Session, host_id: str,
                         server_ids: Sequence[str]) -> dict[str, int]:
    """server id -> vCPUs of the given servers that are live on ``host_id``.

    SELECT id, vcpus FROM servers WHERE id IN (:ids) AND host_id = :host AND status != 'DELETED'
    """
    found: dict[str, int] = {}
    for chunk in _chunks(server_ids):
        rows = session.execute(select(Server.id, Server.vcpus).where(
            Server.id.in_(chunk), Server.host_id == host_id, Server.status != DELETED))
        found.update((sid, int(vcpus)) for sid, vcpus in rows)
    return found


def counters(session: Session, server_ids: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """server id -> its last counters, in ``COUNTER_COLUMNS`` order."""
    cols = [COUNTERS.c[name] for name in COUNTER_COLUMNS]
    found: dict[str, tuple[int, ...]] = {}
    for chunk in _chunks(server_ids):
        rows = session.execute(select(COUNTERS.c.server_id, *cols)
                               .where(COUNTERS.c.server_id.in_(chunk)))
        found.update((row[0], tuple(int(v) for v in row[1:])) for row in rows)
    return found


def put_counters(session: Session, rows: list[dict[str, Any]]) -> None:
    """Upsert each server's last counters; an older sample never replaces a newer one.

    INSERT INTO guest_metric_counters ... ON CONFLICT (server_id) DO UPDATE SET ... = excluded...
    WHERE excluded.at_ms > guest_metric_counters.at_ms
    """
    if not rows:
        return
    stmt = _insert(session, COUNTERS)
    stmt = stmt.on_conflict_do_update(
        index_elements=[COUNTERS.c.server_id],
        set_={name: stmt.excluded[name] for name in COUNTER_COLUMNS},
        where=stmt.excluded.at_ms > COUNTERS.c.at_ms)
    session.execute(stmt, rows)


def add_to_rollups(session: Session, rows: list[dict[str, Any]]) -> None:
    """Add samples' counts and sums to their buckets (one row per key in ``rows``).

    INSERT INTO guest_metric_rollups ... ON CONFLICT (server_id, step, bucket)
    DO UPDATE SET samples = samples + excluded.samples, <m>_sum = <m>_sum + excluded.<m>_sum
    """
    if not rows:
        return
    stmt: Insert = _insert(session, ROLLUPS)
    stmt = stmt.on_conflict_do_update(  # type: ignore[attr-defined]
        index_elements=[ROLLUPS.c.server_id, ROLLUPS.c.step, ROLLUPS.c.bucket],
        set_={name: ROLLUPS.c[name] + stmt.excluded[name]  # type: ignore[attr-defined]
              for name in SUM_COLUMNS})
    session.execute(stmt, rows)


def prune_rollups(session: Session, step: int, before_bucket: int, limit: int) -> int:
    """Delete up to ``limit`` of the level's buckets that start before ``before_bucket``;
    returns how many.

    DELETE FROM guest_metric_rollups WHERE (server_id, step, bucket) IN
      (SELECT server_id, step, bucket FROM guest_metric_rollups
       WHERE step = :step AND bucket < :before LIMIT :limit)
    (a range of ix_guest_metric_rollups_step_bucket: the cost is the rows deleted)
    """
    oldest = (select(ROLLUPS.c.server_id, ROLLUPS.c.step, ROLLUPS.c.bucket)
              .where(ROLLUPS.c.step == step, ROLLUPS.c.bucket < before_bucket).limit(limit))
    result = session.execute(delete(ROLLUPS).where(
        tuple_(ROLLUPS.c.server_id, ROLLUPS.c.step, ROLLUPS.c.bucket).in_(oldest)))
    return int(result.rowcount)  # type: ignore[attr-defined]


def prune_counters(session: Session, before_ms: int, limit: int) -> int:
    """Forget up to ``limit`` baselines of servers silent since ``before_ms``; returns how
    many.

    DELETE FROM guest_metric_counters WHERE server_id IN
      (SELECT server_id FROM guest_metric_counters WHERE at_ms < :before LIMIT :limit)
    """
    silent = select(COUNTERS.c.server_id).where(COUNTERS.c.at_ms < before_ms).limit(limit)
    result = session.execute(delete(COUNTERS).where(COUNTERS.c.server_id.in_(silent)))
    return int(result.rowcount)  # type: ignore[attr-defined]


_AVERAGES: dict[str, Any] = {}


def averages(session: Session, server_ids: Sequence[str], column: str, step: int,
             first_bucket: int, last_bucket: int) -> dict[str, float]:
    """server id -> sum(<column>) / sum(samples) over the level's buckets in
    [first_bucket, last_bucket], for servers with samples there.

    SELECT server_id, sum(<column>), sum(samples) FROM guest_metric_rollups
    WHERE server_id IN (:ids) AND step = :step AND bucket BETWEEN :first AND :last
    GROUP BY server_id                                   (a range of the primary key)
    """
    found: dict[str, float] = {}
    statement = _AVERAGES.get(column)
    if statement is None:
        # Built once per metric (the scaling reconciler calls this for every group every pass).
        statement = _AVERAGES[column] = (
            select(ROLLUPS.c.server_id, func.sum(ROLLUPS.c[column]), func.sum(ROLLUPS.c.samples))
            .where(ROLLUPS.c.server_id.in_(bindparam("ids", expanding=True)),
                   ROLLUPS.c.step == bindparam("step"),
                   ROLLUPS.c.bucket >= bindparam("first"), ROLLUPS.c.bucket <= bindparam("last"))
            .group_by(ROLLUPS.c.server_id))
    for chunk in _chunks(server_ids):
        rows = session.execute(statement, {"ids": list(chunk), "step": step,
                                           "first": first_bucket, "last": last_bucket})
        found.update((sid, float(total) / int(n)) for sid, total, n in rows if n)
    return found


def series(session: Session, server_id: str, column: str, level_step: int, out_step: int,
           first_bucket: int, last_bucket: int) -> list[tuple[int, float, int]]:
    """(point start, sum, samples) of one server, the level's buckets grouped by ``out_step``.

    SELECT bucket // :out * :out AS at, sum(<column>), sum(samples) FROM guest_metric_rollups
    WHERE server_id = :id AND step = :level AND bucket BETWEEN :first AND :last
    GROUP BY at ORDER BY at
    """
    at = (ROLLUPS.c.bucket // out_step) * out_step
    rows = session.execute(
        select(at, func.sum(ROLLUPS.c[column]), func.sum(ROLLUPS.c.samples))
        .where(ROLLUPS.c.server_id == server_id, ROLLUPS.c.step == level_step,
               ROLLUPS.c.bucket >= first_bucket, ROLLUPS.c.bucket <= last_bucket)
        .group_by(at).order_by(at))
    return [(int(a), float(total), int(n)) for a, total, n in rows if n]


def busiest_in_bucket(session: Session, step: int, bucket: int,
                      limit: int) -> list[tuple[str, str, int, tuple[float, ...]]]:
    """(server id, project id, samples, sums in ``SUM_COLUMNS[1:]`` order) of the ``limit``
    live servers with the highest cpu_util in one bucket of one level.

    SELECT r.server_id, s.project_id, r.samples, r.<m>_sum ... FROM guest_metric_rollups r
    JOIN servers s ON s.id = r.server_id WHERE r.step = :step AND r.bucket = :bucket
    AND s.status != 'DELETED' ORDER BY r.cpu_util_sum / r.samples DESC LIMIT :limit
    """
    sums = [ROLLUPS.c[name] for name in SUM_COLUMNS[1:]]
    rows = session.execute(
        select(ROLLUPS.c.server_id, Server.project_id, ROLLUPS.c.samples, *sums)
        .join(Server, Server.id == ROLLUPS.c.server_id)
        .where(ROLLUPS.c.step == step, ROLLUPS.c.bucket == bucket, ROLLUPS.c.samples > 0,
               Server.status != DELETED)
        .order_by((ROLLUPS.c.cpu_util_sum / ROLLUPS.c.samples).desc(), ROLLUPS.c.server_id)
        .limit(limit))
    return [(row[0], row[1], int(row[2]), tuple(float(v) for v in row[3:])) for row in rows]


def servers_in_bucket(session: Session, step: int, bucket: int) -> int:
    """How many servers have samples in one bucket of one level.

    SELECT count(*) FROM guest_metric_rollups WHERE step = :step AND bucket = :bucket
    (a range of ix_guest_metric_rollups_step_bucket: one row per reporting server)
    """
    return int(session.scalar(select(func.count()).select_from(ROLLUPS).where(
        ROLLUPS.c.step == step, ROLLUPS.c.bucket == bucket)) or 0)
