"""Who may see which usage, per-server usage, and small lookups for the routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import Principal
from api.errors import NotFound
from api.models import ClosedPeriod, LedgerEntry, RateCard, UsageServer
from api.pagination import Page, invalid_marker, page_of
from api.usage import reports, repository
from api.usage.meters import SECONDS_FIELDS
from api.usage.reports import GroupBy, iso
from api.usage.rules import epoch, pieces, window_totals


def visible_project(session: Session, principal: Principal, project_id: str | None) -> str | None:
    """The project a report covers: None (all) only for admins.

    Raises NotFound (project_not_found) for another tenant's or an unknown project.
    """
    if not principal.is_admin:
        if project_id is not None and project_id != principal.project_id:
            raise NotFound("no such project", code="project_not_found")
        return principal.project_id
    if project_id is not None:
        reports.require_project(session, project_id)
    return project_id


def frozen_if_exact_month(session: Session, start: datetime, end: datetime,
                          project_id: str | None, group_by: GroupBy | None,
                          minimum: int) -> tuple[str, str] | None:
    """The frozen (json, csv) when [start, end) is exactly a closed month asked per server."""
    if group_by != "server" or start.day != 1 or start.time() != datetime.min.time():
        return None
    period = f"{start.year:04d}-{start.month:02d}"
    if reports.period_window(period) != (epoch(start), epoch(end)):
        return None
    return reports.frozen_report(session, period, project_id, now=end, minimum=minimum)


def entry_by_key(session: Session, key: str) -> LedgerEntry:
    """The entry recorded under ``key``; raises NotFound."""
    entry = repository.find_by_key(session, key)
    if entry is None:
        raise NotFound("no such ledger entry", code="ledger_entry_not_found")
    return entry


def closed_periods(session: Session) -> list[ClosedPeriod]:
    """Closed months, oldest first."""
    return list(session.scalars(select(ClosedPeriod).order_by(ClosedPeriod.start_s)))


def rate_cards(session: Session) -> list[RateCard]:
    """Every rate card, oldest first."""
    return repository.rate_cards(session)


def rate_card_page(session: Session, *, limit: int, marker: str | None) -> Page[RateCard]:
    """A page of every rate card, oldest first; raises DomainError ``invalid_marker`` for a
    marker that is no rate card."""
    mark = None
    if marker is not None:
        mark = session.get(RateCard, marker)
        if mark is None:
            raise invalid_marker()
    rows = repository.rate_card_page(session, after=mark, limit=limit + 1)
    return page_of(rows, limit, lambda c: c.id)


def server_usage(session: Session, principal: Principal, server_id: str, *,
                 start: datetime | None, end: datetime | None, now: datetime,
                 minimum: int) -> dict[str, Any]:
    """A server's billed seconds in [start, end) and its ledger entries.

    Default window: from its first entry to now. Raises NotFound (server_not_found) for an
    unknown server or another tenant's.
    """
    summary = session.get(UsageServer, server_id)
    if summary is None or (not principal.is_admin and summary.project_id != principal.project_id):
        raise NotFound("no usage recorded for that server", code="server_not_found")
    now_s = epoch(now)
    a = epoch(start) if start else summary.first_s
    b = epoch(end) if end else max(now_s, a + 1)
    totals = window_totals(pieces(repository.entries_of(session, server_id)), a, b, now_s,
                           minimum)
    entries = session.scalars(
        select(LedgerEntry).where(LedgerEntry.server_id == server_id)
        .order_by(LedgerEntry.at_s, LedgerEntry.seq)
    )
    return {
        "server_id": server_id, "project_id": summary.project_id, "state": summary.state,
        "first_seen": iso(summary.first_s), "last_seen": iso(summary.last_s),
        "start": iso(a), "end": iso(b),
        **{f: totals.get(f) for f in SECONDS_FIELDS},
        "entries": [
            {"seq": e.seq, "kind": e.kind, "at": iso(e.at_s), "source": e.source,
             "clamped": e.clamped,
             "reported_at": e.reported_at.isoformat() if e.reported_at else None,
             "vcpus": e.vcpus, "ram_mb": e.ram_mb, "disk_gb": e.disk_gb,
             "flavor_id": e.flavor_id, "amount": e.amount, "reason": e.reason}
            for e in entries
        ],
    }
