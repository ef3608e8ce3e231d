"""Usage SQL: ledger inserts, derived pieces, report sums, rate cards, closed periods.

The ledger is append-only: this module only ever INSERTs into ``usage_ledger``. The derived
tables (``usage_pieces``, ``usage_servers``) are replaced per server when its ledger grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Table,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy import cast as cast_
from sqlalchemy.orm import Session

from api.db import after_key
from api.models import (
    ClosedPeriod,
    Host,
    LedgerEntry,
    PeriodReport,
    RateCard,
    Server,
    UsagePiece,
    UsageServer,
)
from api.usage.meters import METER_STATES, STATES, State
from api.usage.rules import Entry, Piece


def entries_of(session: Session, server_id: str) -> list[Entry]:
    """The billing view of every ledger entry of one server."""
    rows = session.execute(
        select(LedgerEntry.seq, LedgerEntry.at_s, LedgerEntry.kind, LedgerEntry.vcpus,
               LedgerEntry.ram_mb, LedgerEntry.disk_gb, LedgerEntry.flavor_id)
        .where(LedgerEntry.server_id == server_id, LedgerEntry.kind != "adjustment")
    ).all()
    return [Entry(*r) for r in rows]


def find_by_key(session: Session, key: str) -> LedgerEntry | None:
    """The ledger entry recorded under an idempotency key, if any."""
    return session.scalar(select(LedgerEntry).where(LedgerEntry.idempotency_key == key))


def lock_server(session: Session, server_id: str) -> UsageServer | None:
    """The server's summary row, locked (PostgreSQL) so its pieces are rebuilt one at a time."""
    return session.scalar(
        select(UsageServer).where(UsageServer.server_id == server_id).with_for_update()
    )


def latest_closed_end(session: Session) -> int | None:
    """End (epoch seconds) of the latest closed period, if any."""
    end = session.scalar(_LATEST_CLOSED_END)
    return None if end is None else int(end)


# Built once on the Core tables (no ORM statement layer): every create runs these.
_LATEST_CLOSED_END = select(func.max(cast(Table, ClosedPeriod.__table__).c.end_s))
_ENTRIES = cast(Table, LedgerEntry.__table__)
_INSERT_ENTRY = insert(_ENTRIES).returning(_ENTRIES.c.seq)
_INSERT_SUMMARY = insert(cast(Table, UsageServer.__table__))
_INSERT_PIECES = insert(cast(Table, UsagePiece.__table__))


def piece_rows(project_id: str, server_id: str, pieces: Sequence[Piece]) -> list[dict[str, Any]]:
    """Insert parameters for a server's pieces."""
    return [
        {"project_id": project_id, "server_id": server_id, "flavor_id": p.flavor_id,
         "resource": p.resource, "bucket": p.bucket, "start_s": p.start_s, "end_s": p.end_s,
         "run_start_s": p.run_start_s, "run_end_s": p.run_end_s, "vcpus": p.vcpus,
         "ram_mb": p.ram_mb, "disk_gb": p.disk_gb}
        for p in pieces
    ]


def replace_pieces(session: Session, project_id: str, server_id: str,
                   pieces: Sequence[Piece]) -> None:
    """Make the server's stored pieces equal ``pieces``, touching only the rows that differ.

    A new entry usually closes the open piece and opens one or two, so this deletes and
    inserts a handful of rows instead of the server's whole history.
    """
    rows = piece_rows(project_id, server_id, pieces)
    table = cast(Table, UsagePiece.__table__)
    p = table.c
    fields = [p.project_id, p.flavor_id, p.resource, p.bucket, p.start_s, p.end_s,
              p.run_start_s, p.run_end_s, p.vcpus, p.ram_mb, p.disk_gb]
    stored: dict[tuple[Any, ...], list[int]] = {}
    for row in session.execute(select(p.id, *fields).where(p.server_id == server_id)):
        stored.setdefault(tuple(row[1:]), []).append(row[0])
    wanted = []
    for r in rows:
        ids = stored.get(tuple(r[f.name] for f in fields))
        if ids:
            ids.pop()
        else:
            wanted.append(r)
    stale = [i for ids in stored.values() for i in ids]
    if stale:
        session.execute(delete(table).where(p.id.in_(stale)))
    if wanted:
        # Core insert: one executemany, whatever columns are NULL.
        session.execute(insert(table), wanted)


def insert_entry(session: Session, values: dict[str, Any]) -> int:
    """Append one ledger entry (Core ``INSERT ... RETURNING seq``); returns its ``seq``."""
    return int(session.execute(_INSERT_ENTRY, values).scalar_one())


def insert_summary(session: Session, *, server_id: str, project_id: str, first_s: int,
                   last_s: int, state: str) -> None:
    """Store the summary row of a server that has none yet."""
    session.execute(_INSERT_SUMMARY,
                    {"server_id": server_id, "project_id": project_id, "first_s": first_s,
                     "last_s": last_s, "state": state})


def insert_pieces(session: Session, project_id: str, server_id: str,
                  pieces: Sequence[Piece]) -> None:
    """Store the pieces of a server that has none yet (one executemany)."""
    if pieces:
        session.execute(_INSERT_PIECES, piece_rows(project_id, server_id, pieces))


def _least(dialect: str, a: Any, b: Any) -> ColumnElement[Any]:
    return func.min(a, b) if dialect == "sqlite" else func.least(a, b)


def _greatest(dialect: str, a: Any, b: Any) -> ColumnElement[Any]:
    return func.max(a, b) if dialect == "sqlite" else func.greatest(a, b)


def _sum(expr: Any) -> ColumnElement[int]:
    # PostgreSQL's SUM(bigint) is NUMERIC; seconds fit a BIGINT and come back as plain ints.
    return cast_(func.sum(expr), BigInteger)


def buckets(start: int, end: int) -> list[int]:
    """The month buckets a window [start, end) touches, plus 0 for open pieces."""
    from api.usage.rules import month_bucket, next_month_start

    out = [0]
    s = start
    while s < end:
        out.append(month_bucket(s))
        s = next_month_start(s)
    return out


@dataclass(frozen=True)
class SegmentRow:
    """Seconds of one server with one flavor in each of several adjacent windows."""

    project_id: str
    server_id: str
    flavor_id: str | None
    # per window: the seconds of each (meter, state) pair of ``meters.METER_STATES``, in order
    totals: list[tuple[int, ...]]


def _state_seconds(state: State, ov: ColumnElement[Any],
                   extra: ColumnElement[Any]) -> ColumnElement[Any]:
    # A stop marker's minimum-per-start extra counts as running seconds.
    if state == "running":
        return case((UsagePiece.resource == "running", ov), (UsagePiece.resource == "stop", extra),
                    else_=0)
    return case((UsagePiece.resource == state, ov), else_=0)


def segment_sums(session: Session, cuts: Sequence[tuple[int, int]], now: int, minimum: int,
                 project_id: str | None = None) -> list[SegmentRow]:
    """Per (server, flavor) seconds of every meter in each window of ``cuts``, in one scan.

    Raw SQL of the core, per window [:s, :e) (SQLite spelling; PostgreSQL uses
    LEAST/GREATEST)::

        ov    = MAX(0, MIN(COALESCE(end_s, :now), :e) - MAX(start_s, :s))
        extra = CASE WHEN run_end_s >= :s AND run_end_s < :e
                     THEN MAX(0, :min - (run_end_s - run_start_s)) ELSE 0 END
        exists seconds  = CASE resource WHEN 'exists' THEN ov ELSE 0 END
        running seconds = CASE resource WHEN 'running' THEN ov WHEN 'stop' THEN extra ELSE 0 END
        paused seconds  = CASE resource WHEN 'paused' THEN ov ELSE 0 END

    and, per (meter, state) of the registry, ``SUM(<state> seconds * <meter source>)`` (e.g.
    ram while paused: ``SUM(paused * ram_mb)``). Only the month buckets the windows touch (and
    open pieces) are read.
    """
    dialect = session.get_bind().dialect.name
    p = UsagePiece
    lo, hi = min(c[0] for c in cuts), max(c[1] for c in cuts)
    piece_end = func.coalesce(p.end_s, literal(now))
    states = [s for s in STATES if any(st == s for _, st in METER_STATES)]
    # The inner query computes each window's seconds per state once per piece; the OFFSET 0
    # keeps both databases from flattening it and evaluating them once per meter.
    per_piece: list[Any] = []
    for i, (s, e) in enumerate(cuts):
        ov = _greatest(dialect, literal(0), _least(dialect, piece_end, literal(e))
                       - _greatest(dialect, p.start_s, literal(s)))
        extra = case(
            (and_(p.run_end_s >= s, p.run_end_s < e),
             _greatest(dialect, literal(0), literal(minimum) - (p.run_end_s - p.run_start_s))),
            else_=0,
        )
        per_piece += [_state_seconds(st, ov, extra).label(f"{st}{i}") for st in states]
    inner = (
        select(p.project_id, p.server_id, p.flavor_id, p.vcpus, p.ram_mb, p.disk_gb, *per_piece)
        .where(p.bucket.in_(buckets(lo, hi)), p.start_s < hi, piece_end >= lo)
    )
    if project_id is not None:
        inner = inner.where(p.project_id == project_id)
    q = inner.offset(0).subquery()
    columns: list[Any] = []
    for i in range(len(cuts)):
        for meter, st in METER_STATES:
            col = q.c[f"{st}{i}"]
            columns.append(_sum(col if meter.source is None else col * q.c[meter.source]))
    stmt = (select(func.min(q.c.project_id), q.c.server_id, q.c.flavor_id, *columns)
            .group_by(q.c.server_id, q.c.flavor_id))
    out = []
    width = len(METER_STATES)
    # Core execution: plain tuples, no ORM row processing (10,000 rows for a month report).
    for r in session.connection().execute(stmt).all():
        v = tuple(x or 0 for x in r[3:])
        out.append(SegmentRow(r[0], r[1], r[2],
                              [v[i:i + width] for i in range(0, len(v), width)]))
    return out


def servers(session: Session, ids: Sequence[str]) -> dict[str, UsageServer]:
    """Summary rows of the given servers."""
    out: dict[str, UsageServer] = {}
    for i in range(0, len(ids), 500):
        chunk = list(ids[i:i + 500])
        for s in session.scalars(select(UsageServer).where(UsageServer.server_id.in_(chunk))):
            out[s.server_id] = s
    return out


def adjustments(session: Session, start: int, end: int,
                project_id: str | None = None) -> list[LedgerEntry]:
    """Adjustment entries recorded inside [start, end)."""
    stmt = select(LedgerEntry).where(
        LedgerEntry.kind == "adjustment", LedgerEntry.at_s >= start, LedgerEntry.at_s < end
    ).order_by(LedgerEntry.at_s, LedgerEntry.seq)
    if project_id is not None:
        stmt = stmt.where(LedgerEntry.project_id == project_id)
    return list(session.scalars(stmt))


def rate_cards(session: Session) -> list[RateCard]:
    """Every rate card, oldest first."""
    return list(session.scalars(select(RateCard).order_by(RateCard.valid_from)))


def rate_card_page(session: Session, *, after: RateCard | None,
                   limit: int) -> Sequence[RateCard]:
    """Rate cards by (valid_from, id), starting after the card ``after``."""
    query = select(RateCard)
    if after is not None:
        query = query.where(after_key((RateCard.valid_from, RateCard.id),
                                      (after.valid_from, after.id)))
    return session.scalars(query.order_by(RateCard.valid_from, RateCard.id).limit(limit)).all()


def closed_period(session: Session, period: str) -> ClosedPeriod | None:
    """A closed period, if closed."""
    return session.get(ClosedPeriod, period)


def period_report(session: Session, period: str, scope: str) -> PeriodReport | None:
    """A frozen report."""
    return session.get(PeriodReport, (period, scope))


def hosts_silent_since(session: Session, cutoff: datetime) -> Sequence[Host]:
    """The hosts that sent a heartbeat, but none since ``cutoff`` (the down ones): an idle
    fleet's sweep then loads no host at all.

    SELECT * FROM hosts WHERE last_heartbeat_at < :cutoff ORDER BY id
    """
    return session.scalars(
        select(Host).where(Host.last_heartbeat_at < cutoff).order_by(Host.id)
    ).all()


def running_servers_on(session: Session, host_id: str) -> list[tuple[Server, UsageServer]]:
    """Live servers of a host that the ledger bills as running or paused, in server id order.

    A paused guest holds its RAM (billed), so a host going down ends its billing like a running
    one's.

    SELECT s.*, u.* FROM servers s JOIN usage_servers u ON u.server_id = s.id
    WHERE s.host_id = :host AND s.deleted_at IS NULL AND u.state IN ('running', 'paused')
    ORDER BY s.id
    """
    rows = session.execute(
        select(Server, UsageServer).join(UsageServer, UsageServer.server_id == Server.id)
        .where(Server.host_id == host_id, Server.deleted_at.is_(None),
               UsageServer.state.in_(("running", "paused")))
        .order_by(Server.id)
    ).all()
    return [(server, summary) for server, summary in rows]
