"""Usage HTTP routes: /v1/usage (reports, periods, adjustments) and /v1/rates."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response

from api.db import new_id, utcnow
from api.deps import AdminUser, CurrentUser, SessionDep, SettingsDep
from api.errors import NotFound
from api.fields import ID_PATTERN, PathId
from api.models import ClosedPeriod, LedgerEntry, RateCard
from api.pagination import MAX_PAGE, Marker, PageLimit, link_next
from api.usage import ledger, rates, reports, service
from api.usage.meters import PRICE_KEYS
from api.usage.reports import GroupBy
from api.usage.rules import from_epoch
from api.usage.schemas import (
    AdjustmentCreate,
    LedgerEntryOut,
    PeriodOut,
    RateCardCreate,
    RateCardOut,
)

router = APIRouter(prefix="/v1")

AcceptHeader = Annotated[str | None, Header()]
# A report answers JSON, or CSV when the Accept header asks for text/csv.
REPORT_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": {
    "application/json": {"schema": {"type": "object"}},
    "text/csv": {"schema": {"type": "string"}}}}}
# Checked before it reaches SQL: PostgreSQL rejects NUL bytes in text parameters.
ProjectFilter = Annotated[str | None, Query(min_length=1, max_length=64, pattern=ID_PATTERN)]


def _utc(value: datetime) -> datetime:
    # A time without a zone in a query string means UTC (every window is UTC).
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _wants_csv(accept: str | None) -> bool:
    return bool(accept) and "text/csv" in (accept or "")


def _send(json_text: str, csv_text: str, accept: str | None) -> Response:
    if _wants_csv(accept):
        return Response(csv_text, media_type="text/csv; charset=utf-8")
    return Response(json_text, media_type="application/json")


@router.get("/usage", tags=["usage"], responses=REPORT_RESPONSES)
def usage_report(
    principal: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    start: datetime,
    end: datetime,
    project_id: ProjectFilter = None,
    group_by: GroupBy | None = None,
    accept: AcceptHeader = None,
) -> Response:
    """Usage and cost per project (and per server, day or month) in [start, end), UTC.

    Tenants see their own project (another project answers 404); admins any or all.
    A closed month asked for exactly with ``group_by=server`` is its frozen report.
    """
    scope = service.visible_project(session, principal, project_id)
    frozen = service.frozen_if_exact_month(session, _utc(start), _utc(end), scope, group_by,
                                           settings.billing_minimum_run_seconds)
    if frozen is not None:
        return _send(*frozen, accept)
    report = reports.build_report(
        session, start=_utc(start), end=_utc(end), now=utcnow(),
        minimum=settings.billing_minimum_run_seconds, project_id=scope, group_by=group_by,
    )
    return _send(reports.render_json(report), reports.render_csv(report), accept)


@router.get("/usage/servers/{server_id}", tags=["usage"])
def server_usage(
    server_id: PathId,
    principal: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, Any]:
    """One server's billed seconds in a window (default: all its life) and its ledger."""
    return service.server_usage(
        session, principal, server_id,
        start=_utc(start) if start else None, end=_utc(end) if end else None,
        now=utcnow(), minimum=settings.billing_minimum_run_seconds,
    )


@router.post("/usage/adjustments", status_code=201, response_model=LedgerEntryOut,
             tags=["usage"])
def create_adjustment(body: AdjustmentCreate, admin: AdminUser,
                      session: SessionDep) -> LedgerEntryOut:
    """Record a correction (admin); it lands in the current, open period."""
    reports.require_project(session, body.project_id)
    now = utcnow()
    entry = ledger.record(
        session, kind="adjustment", project_id=body.project_id, server_id=body.server_id,
        vcpus=0, ram_mb=0, disk_gb=0, at=now,
        idempotency_key=body.idempotency_key or f"adjustment:{new_id()}", source="api",
        reason=body.reason, admin_id=admin.user_id, amount=body.amount, now=now,
    )
    if entry is None:  # the same idempotency key again: answer with the first entry
        entry = service.entry_by_key(session, body.idempotency_key or "")
    return _entry_out(entry)


def _entry_out(e: LedgerEntry) -> LedgerEntryOut:
    return LedgerEntryOut(
        seq=e.seq, kind=e.kind, project_id=e.project_id, server_id=e.server_id,
        flavor_id=e.flavor_id, vcpus=e.vcpus, ram_mb=e.ram_mb, disk_gb=e.disk_gb, at=e.at,
        reported_at=e.reported_at, clamped=e.clamped, source=e.source, reason=e.reason,
        admin_id=e.admin_id, amount=e.amount, recorded_at=e.recorded_at,
    )


def _period_out(p: ClosedPeriod) -> PeriodOut:
    return PeriodOut(period=p.period, start=from_epoch(p.start_s),
                     end=from_epoch(p.end_s), closed_at=p.closed_at,
                     closed_by=p.closed_by)


@router.post("/usage/periods/{period}/close", status_code=201, response_model=PeriodOut,
             tags=["usage"])
def close_period(period: str, admin: AdminUser, session: SessionDep,
                 settings: SettingsDep) -> PeriodOut:
    """Close a month that has ended (admin): its reports are frozen byte for byte."""
    closed = reports.close_period(session, period, closed_by=admin.user_id, now=utcnow(),
                                  minimum=settings.billing_minimum_run_seconds)
    return _period_out(closed)


@router.get("/usage/periods", response_model=list[PeriodOut], tags=["usage"])
def list_periods(_: CurrentUser, session: SessionDep) -> list[PeriodOut]:
    """Closed months, oldest first."""
    return [_period_out(p) for p in service.closed_periods(session)]


@router.get("/usage/periods/{period}", tags=["usage"], responses=REPORT_RESPONSES)
def show_period(period: str, principal: CurrentUser, session: SessionDep,
                settings: SettingsDep, project_id: ProjectFilter = None,
                accept: AcceptHeader = None) -> Response:
    """The frozen report of a closed month (404 period_open while it is open)."""
    scope = service.visible_project(session, principal, project_id)
    frozen = reports.frozen_report(session, period, scope, now=utcnow(),
                                   minimum=settings.billing_minimum_run_seconds)
    if frozen is None:
        raise NotFound("the period is not closed", code="period_open")
    return _send(*frozen, accept)


def _card_out(c: RateCard) -> RateCardOut:
    return RateCardOut(id=c.id, valid_from=c.valid_from, currency=c.currency,
                       **{k: str(c.prices.get(k, "0")) for k in PRICE_KEYS},
                       flavor_hour={k: str(v) for k, v in c.flavor_hour.items()},
                       created_at=c.created_at)


@router.get("/rates", response_model=list[RateCardOut], tags=["rates"])
def list_rates(_: CurrentUser, session: SessionDep, response: Response,
               limit: PageLimit = MAX_PAGE, marker: Marker = None) -> list[RateCardOut]:
    """Every rate card, past, present and future, oldest first. Paginated."""
    page = service.rate_card_page(session, limit=limit, marker=marker)
    return [_card_out(c) for c in link_next(response, "/v1/rates", limit, page)]


@router.post("/rates", status_code=201, response_model=RateCardOut, tags=["rates"])
def create_rate(body: RateCardCreate, admin: AdminUser, session: SessionDep) -> RateCardOut:
    """Add a rate card in force from ``valid_from`` (admin; not in the past)."""
    card = rates.create_rate_card(
        session, valid_from=_utc(body.valid_from), currency=body.currency,
        flavor_hour=body.flavor_hour, created_by=admin.user_id, now=utcnow(),
        **{k: getattr(body, k) for k in PRICE_KEYS},
    )
    return _card_out(card)


@router.get("/rates/{card_id}", response_model=RateCardOut, tags=["rates"])
def show_rate(card_id: PathId, _: CurrentUser, session: SessionDep) -> RateCardOut:
    """One rate card."""
    return _card_out(rates.get_rate_card(session, card_id))


@router.delete("/rates/{card_id}", status_code=204, tags=["rates"])
def delete_rate(card_id: PathId, _: AdminUser, session: SessionDep) -> Response:
    """Withdraw a card that is not in force yet (admin)."""
    rates.delete_rate_card(session, card_id, utcnow())
    return Response(status_code=204)
