"""Recording billable changes in the append-only usage ledger.

Called by the servers service (created, resized, deleted), the agent endpoints (observed
running, paused and stopped, with the agent's time), the host monitor (host_down at the last
heartbeat that saw a server running) and admins (adjustment). Each call only flushes; the
caller's unit of work commits.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.db import utcnow
from api.errors import InvalidInput
from api.metrics import observe_ledger_write
from api.models import LedgerEntry, UsagePiece, UsageServer
from api.usage import repository
from api.usage.rules import KINDS, Entry, epoch, from_epoch, pieces, state_after

Source = Literal["api", "agent"]
LedgerKind = Literal[
    "created", "running", "paused", "stopped", "resized", "deleted", "host_down", "adjustment",
]


def bounds(session: Session, server_id: str | None, kind: str,
           now: datetime) -> tuple[int, int]:
    """The API's bounds for a new entry's time, in epoch seconds: [lower, upper].

    Lower: not inside a closed period, and (except ``created``) not before the server's first
    entry. Upper: the API's now.
    """
    lower = repository.latest_closed_end(session) or 0
    if server_id is not None and kind != "created":
        summary = session.get(UsageServer, server_id)
        if summary is not None:
            lower = max(lower, summary.first_s)
    return lower, epoch(now)


def record(
    session: Session,
    *,
    kind: LedgerKind,
    project_id: str,
    server_id: str | None,
    vcpus: int,
    ram_mb: int,
    disk_gb: int,
    at: datetime,
    idempotency_key: str,
    source: Source,
    reason: str | None = None,
    admin_id: str | None = None,
    flavor_id: str | None = None,
    amount: Decimal | None = None,
    now: datetime | None = None,
    new_server: bool = False,
) -> LedgerEntry | None:
    """Record one billable change; return it, or None if ``idempotency_key`` is known.

    ``new_server`` says that the server row was inserted in this unit of work (its
    ``created`` entry): nothing can be recorded for it yet, not even by a concurrent twin (its
    id is new and uncommitted), so the idempotency look-up, the summary lock and the re-read of
    its entries and pieces are skipped: 4 statements and a savepoint less on every create.

    A time outside the API's bounds (after ``now``, before the server's first entry, or inside
    a closed period) is clamped to the nearest bound, flagged ``clamped`` and the reported time
    kept in ``reported_at``. ``now`` defaults to the API clock (tests pass a fixed one).
    Raises InvalidInput for an unknown kind or source, a naive time, negative sizes, a server
    entry without ``server_id`` or an adjustment without amount and reason.
    """
    if kind not in KINDS or source not in ("api", "agent"):
        raise InvalidInput(f"unknown ledger kind {kind!r} or source {source!r}",
                           code="invalid_ledger_entry")
    if at.tzinfo is None:
        raise InvalidInput("ledger times must be timezone-aware UTC", code="invalid_ledger_entry")
    if min(vcpus, ram_mb, disk_gb) < 0:
        raise InvalidInput("sizes cannot be negative", code="invalid_ledger_entry")
    if kind == "adjustment":
        if amount is None or not reason:
            raise InvalidInput("an adjustment needs an amount and a reason",
                               code="invalid_ledger_entry")
    elif server_id is None:
        raise InvalidInput("a server entry needs server_id", code="invalid_ledger_entry")
    if new_server and (kind != "created" or server_id is None):
        raise InvalidInput("only a created entry starts a new server",
                           code="invalid_ledger_entry")
    if not new_server and repository.find_by_key(session, idempotency_key) is not None:
        return None
    now = now or utcnow()
    summary = repository.lock_server(session, server_id) \
        if server_id and kind != "adjustment" and not new_server else None
    lower, upper = bounds(session, server_id if kind != "adjustment" else None, kind, now)
    at_s = epoch(at)
    clamped_s = min(max(at_s, lower), upper)
    clamped = clamped_s != at_s
    values = dict(
        idempotency_key=idempotency_key, kind=kind, project_id=project_id, server_id=server_id,
        flavor_id=flavor_id, vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb,
        at=from_epoch(clamped_s) if clamped else at, at_s=clamped_s,
        reported_at=at if clamped else None, clamped=clamped, source=source, reason=reason,
        admin_id=admin_id, amount=None if amount is None else str(amount), recorded_at=now,
    )
    if new_server and server_id is not None:
        # Core inserts (the ORM's flushes cost more than the statements), and no read back:
        # this entry is the server's only one.
        entry = LedgerEntry(seq=repository.insert_entry(session, values), **values)
        entries = [Entry(entry.seq, entry.at_s, entry.kind, entry.vcpus, entry.ram_mb,
                         entry.disk_gb, entry.flavor_id)]
        repository.insert_pieces(session, project_id, server_id, pieces(entries))
        repository.insert_summary(session, server_id=server_id, project_id=project_id,
                                  first_s=entry.at_s, last_s=entry.at_s,
                                  state=state_after(entries))
        observe_ledger_write(kind)
        return entry
    entry = LedgerEntry(**values)
    try:
        # A savepoint: a concurrent twin with the same key loses here and changes nothing.
        with session.begin_nested():
            session.add(entry)
            session.flush()
    except IntegrityError:
        if repository.find_by_key(session, idempotency_key) is not None:
            return None
        raise
    if server_id is not None and kind != "adjustment":
        _refresh(session, project_id, server_id, summary)
    observe_ledger_write(kind)
    return entry


def _refresh(session: Session, project_id: str, server_id: str,
             summary: UsageServer | None) -> None:
    entries = repository.entries_of(session, server_id)
    repository.replace_pieces(session, project_id, server_id, pieces(entries))
    first = min(e.at_s for e in entries)
    last = max(e.at_s for e in entries)
    if summary is None:
        session.add(UsageServer(server_id=server_id, project_id=project_id, first_s=first,
                                last_s=last, state=state_after(entries)))
    else:
        summary.first_s, summary.last_s, summary.state = first, last, state_after(entries)
    session.flush()


def rebuild(session: Session) -> int:
    """Recompute every derived row from the ledger; return the number of servers.

    The derived tables are a cache of the ledger: dropping and rebuilding them changes no report.
    """
    session.execute(delete(UsagePiece))
    session.execute(delete(UsageServer))
    ids = session.execute(
        select(LedgerEntry.server_id, LedgerEntry.project_id)
        .where(LedgerEntry.server_id.is_not(None), LedgerEntry.kind != "adjustment")
        .distinct()
    ).all()
    for server_id, project_id in ids:
        if server_id is not None:
            _refresh(session, project_id, server_id, None)
    return len(ids)
