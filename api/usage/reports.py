"""Usage reports: seconds and cost per project and server in a window; closing periods.

Windows are start-inclusive, end-exclusive, whole UTC seconds. Seconds are exact integers; money
is Decimal, computed per server line at full precision and rounded once per line to
``MONEY_PLACES`` (half-even); a project's cost is the sum of its rounded lines, so lines always
add up to the total shown.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any, Literal

from sqlalchemy.orm import Session

from api.errors import Conflict, InvalidInput, NotFound
from api.models import ClosedPeriod, PeriodReport, Project
from api.scaling import repository as scaling_repository
from api.usage import repository
from api.usage.meters import FLAVOR_METER, METER_STATES, METERS, SECONDS_FIELDS
from api.usage.rates import Prices, segments
from api.usage.rules import Totals, epoch, from_epoch, next_month_start

GroupBy = Literal["day", "month", "server", "scaling_group"]
MONEY_PLACES = Decimal("0.000001")
HOUR_PLACES = Decimal("0.000001")
_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
# The longest window a live report accepts: a little over a year.
MAX_WINDOW_S = 367 * 86400


def iso(seconds: int) -> str:
    """RFC 3339 UTC with a Z."""
    return from_epoch(seconds).isoformat().replace("+00:00", "Z")


def _hours(seconds: int, per: int = 1) -> str:
    with localcontext() as ctx:
        ctx.prec = 50
        return str((Decimal(seconds) / (3600 * per)).quantize(HOUR_PLACES, ROUND_HALF_EVEN))


@dataclass
class ServerLine:
    """One server's seconds and cost in the window."""

    server_id: str
    # seconds per meter, in registry order (``meters.METERS``)
    seconds: list[int] = field(default_factory=lambda: [0] * len(METERS))
    cost: Decimal = Decimal(0)  # unrounded until rendered

    @property
    def totals(self) -> Totals:
        """The seconds as ``Totals``."""
        return Totals(*self.seconds)


# For each (meter, state) pair the SQL sums: the index of its meter in ``METERS``.
_METER_OF_PAIR = [METERS.index(m) for m, _ in METER_STATES]


def unit_prices(prices: Prices, flavor_id: str | None) -> list[Decimal | None]:
    """Hourly price of one unit-second of each pair of ``METER_STATES``; None: free.

    Each (meter, state) second costs the meter's price key per hour, per ``hours_divisor``
    units of its source (exact: a price has at most 30 digits, the context 50). While running,
    a flavor price replaces the flavor-covered meters' prices and is charged per second of
    ``FLAVOR_METER``. Call inside a 50-digit context.
    """
    flavor_price = prices.flavor_hour.get(flavor_id) if flavor_id else None
    out: list[Decimal | None] = []
    for meter, state in METER_STATES:
        if flavor_price is not None and state == "running" and meter.name == FLAVOR_METER:
            out.append(flavor_price)
        elif flavor_price is not None and state == "running" and meter.flavor_covered:
            out.append(None)
        elif meter.price_key is not None:
            out.append(prices.hour[meter.price_key] / meter.hours_divisor)
        else:
            out.append(None)
    return out


def _cost(units: list[Decimal | None], seconds: Sequence[int]) -> Decimal:
    # Exact until the one division by 3600 (the caller's context has 50 digits).
    per_hour = Decimal(0)
    for unit, s in zip(units, seconds, strict=True):
        if s and unit is not None:
            per_hour += s * unit
    return per_hour / 3600


def server_lines(session: Session, start: int, end: int, now: int, minimum: int,
                 project_id: str | None) -> dict[str, dict[str, ServerLine]]:
    """project id -> server id -> line, over every rate segment of [start, end)."""
    out: dict[str, dict[str, ServerLine]] = defaultdict(dict)
    segs = segments(repository.rate_cards(session), start, end)
    rows = repository.segment_sums(session, [(s, e) for s, e, _ in segs], now, minimum,
                                   project_id)
    # Prices per second of each (meter, state), per segment and flavor: computed once each.
    units: dict[tuple[int, str | None], list[Decimal | None]] = {}
    with localcontext() as ctx:
        ctx.prec = 50
        for r in rows:
            line = out[r.project_id].get(r.server_id)
            if line is None:
                line = out[r.project_id][r.server_id] = ServerLine(r.server_id)
            acc = line.seconds
            for k, ((_, _, prices), pairs) in enumerate(zip(segs, r.totals, strict=True)):
                for i, s in zip(_METER_OF_PAIR, pairs, strict=True):
                    acc[i] += s
                if prices is not None and any(pairs):
                    u = units.get((k, r.flavor_id))
                    if u is None:
                        u = units[(k, r.flavor_id)] = unit_prices(prices, r.flavor_id)
                    line.cost += _cost(u, pairs)
    return out


def _money(value: Decimal) -> Decimal:
    return value.quantize(MONEY_PLACES, ROUND_HALF_EVEN)


def _totals_json(t: Totals) -> dict[str, Any]:
    # Every meter's exact seconds, then its hours (rounded for display), in registry order.
    return {
        **{m.seconds_field: t.get(m.seconds_field) for m in METERS},
        **{m.hours_field: _hours(t.get(m.seconds_field), m.hours_divisor) for m in METERS},
    }


def _window(session: Session, start: int, end: int, now: int, minimum: int,
            project_id: str | None, with_servers: bool) -> list[dict[str, Any]]:
    lines = server_lines(session, start, end, now, minimum, project_id)
    adjustments: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in repository.adjustments(session, start, end, project_id):
        adjustments[a.project_id].append({
            "id": a.seq, "at": iso(a.at_s), "server_id": a.server_id,
            "amount": str(Decimal(a.amount or "0")), "reason": a.reason, "admin_id": a.admin_id,
        })
    projects = sorted(set(lines) | set(adjustments) | ({project_id} if project_id else set()))
    summaries = repository.servers(
        session, sorted({s for p in lines.values() for s in p}) if with_servers else []
    )
    blocks = []
    for pid in projects:
        total = [0] * len(METERS)
        usage_cost = Decimal(0)
        server_rows = []
        for sid in sorted(lines.get(pid, {})):
            line = lines[pid][sid]
            total = [x + y for x, y in zip(total, line.seconds, strict=True)]
            cost = _money(line.cost)
            usage_cost += cost
            if with_servers:
                s = summaries.get(sid)
                server_rows.append({
                    "server_id": sid, **_totals_json(line.totals), "cost": str(cost),
                    "first_seen": iso(s.first_s) if s else None,
                    "last_seen": iso(s.last_s) if s else None,
                    "state": s.state if s else None,
                })
        adj_cost = sum((Decimal(a["amount"]) for a in adjustments.get(pid, [])), Decimal(0))
        block: dict[str, Any] = {
            "project_id": pid, **_totals_json(Totals(*total)), "usage_cost": str(usage_cost),
            "adjustments_cost": str(adj_cost), "cost": str(usage_cost + adj_cost),
            "adjustments": adjustments.get(pid, []),
        }
        if with_servers:
            block["servers"] = server_rows
        blocks.append(block)
    return blocks


def _cuts(start: int, end: int, group_by: GroupBy | None) -> list[tuple[int, int]]:
    if group_by not in ("day", "month"):
        return [(start, end)]
    out = []
    s = start
    while s < end:
        nxt = (s // 86400 + 1) * 86400 if group_by == "day" else next_month_start(s)
        out.append((s, min(nxt, end)))
        s = min(nxt, end)
    return out


def build_report(session: Session, *, start: datetime, end: datetime, now: datetime,
                 minimum: int, project_id: str | None = None,
                 group_by: GroupBy | None = None) -> dict[str, Any]:
    """The usage report of ``project_id`` (None: every project) for [start, end).

    Raises InvalidInput (invalid_window) for an empty, reversed or over-long window.
    """
    a, b = epoch(start), epoch(end)
    if b <= a or b - a > MAX_WINDOW_S:
        raise InvalidInput("need start < end, at most 367 days apart", code="invalid_window")
    cards = repository.rate_cards(session)
    report: dict[str, Any] = {
        "start": iso(a), "end": iso(b), "group_by": group_by,
        "currency": cards[0].currency if cards else None,
        "minimum_run_seconds": minimum,
    }
    with_servers = group_by in ("server", "scaling_group")
    now_s = epoch(now)
    if group_by in ("day", "month"):
        report["periods"] = [
            {"start": iso(s), "end": iso(e),
             "projects": _window(session, s, e, now_s, minimum, project_id, False)}
            for s, e in _cuts(a, b, group_by)
        ]
    else:
        report["projects"] = _window(session, a, b, now_s, minimum, project_id, with_servers)
    if group_by == "scaling_group":
        _by_scaling_group(session, report["projects"])
    return report


def _by_scaling_group(session: Session, blocks: list[dict[str, Any]]) -> None:
    """Replace each project's ``servers`` by ``scaling_groups``: the servers' seconds and cost
    added up per scaling group that launched them (``scaling_group_id`` null: the others,
    including servers of groups since deleted)."""
    ids = [s["server_id"] for b in blocks for s in b.get("servers", [])]
    owners = scaling_repository.groups_of_servers(session, ids)
    for block in blocks:
        groups: dict[str | None, dict[str, Any]] = {}
        for row in block.pop("servers", []):
            gid, name = owners.get(row["server_id"], (None, None))
            group = groups.setdefault(gid, {"scaling_group_id": gid, "name": name,
                                            "servers": 0, "cost": Decimal(0),
                                            **{m.seconds_field: 0 for m in METERS}})
            group["servers"] += 1
            group["cost"] += Decimal(row["cost"])
            for m in METERS:
                group[m.seconds_field] += row[m.seconds_field] or 0
        block["scaling_groups"] = [
            {**g, "cost": str(_money(g["cost"])),
             **{m.hours_field: _hours(g[m.seconds_field], m.hours_divisor) for m in METERS}}
            for _, g in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[1]["name"]
                                                                or ""))]


CSV_COLUMNS = [
    "period_start", "period_end", "line", "project_id", "server_id", *SECONDS_FIELDS, "cost",
    "currency", "first_seen", "last_seen", "state", "reason",
]


# Cells a spreadsheet reads as a formula when they start with one of these (OWASP CSV
# injection); such a text cell is written with a leading single quote, shown as text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Columns that hold numbers the report computed: never escaped (a negative cost stays a number).
CSV_NUMBERS = frozenset({*SECONDS_FIELDS, "cost"})


def csv_text_cell(value: Any) -> Any:
    """``value`` made safe for a spreadsheet: a text starting like a formula gets a ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v if k in CSV_NUMBERS else csv_text_cell(v) for k, v in row.items()}


def render_json(report: dict[str, Any]) -> str:
    """The canonical JSON bytes of a report (stable key order)."""
    return json.dumps(report, separators=(",", ":"))


def render_csv(report: dict[str, Any]) -> str:
    """One row per project total, server line and adjustment (RFC 4180, CRLF line ends).

    Text cells are formula-escaped (``csv_text_cell``). CRLF line ends also make the writer
    quote any cell holding a CR or LF, so such a cell can never split a row.
    """
    rows: list[dict[str, Any]] = []
    periods = report.get("periods") or [
        {"start": report["start"], "end": report["end"], "projects": report["projects"]}
    ]
    cur = report["currency"] or ""
    for period in periods:
        base = {"period_start": period["start"], "period_end": period["end"], "currency": cur}
        for p in period["projects"]:
            keys = SECONDS_FIELDS
            rows.append({**base, "line": "project", "project_id": p["project_id"],
                         **{k: p[k] for k in keys}, "cost": p["cost"]})
            for s in p.get("servers", []):
                rows.append({**base, "line": "server", "project_id": p["project_id"],
                             "server_id": s["server_id"], **{k: s[k] for k in keys},
                             "cost": s["cost"], "first_seen": s["first_seen"],
                             "last_seen": s["last_seen"], "state": s["state"]})
            for adj in p["adjustments"]:
                rows.append({**base, "line": "adjustment", "project_id": p["project_id"],
                             "server_id": adj["server_id"] or "", "cost": adj["amount"],
                             "reason": adj["reason"]})
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\r\n")
    w.writeheader()
    w.writerows(_csv_row(r) for r in rows)
    return buf.getvalue()


def period_window(period: str) -> tuple[int, int]:
    """[start, end) epoch seconds of a ``YYYY-MM`` month; raises InvalidInput."""
    m = _PERIOD.match(period)
    if not m:
        raise InvalidInput("period must be YYYY-MM", code="invalid_period")
    start = epoch(datetime(int(m[1]), int(m[2]), 1, tzinfo=UTC))
    return start, next_month_start(start)


def close_period(session: Session, period: str, *, closed_by: str | None, now: datetime,
                 minimum: int) -> ClosedPeriod:
    """Freeze the month's reports (all projects and each project with usage), byte for byte.

    Raises InvalidInput (invalid_period) and Conflict (period_not_ended, period_closed).
    """
    start, end = period_window(period)
    if end > epoch(now):
        raise Conflict("the month has not ended yet", code="period_not_ended")
    if repository.closed_period(session, period) is not None:
        raise Conflict("the period is already closed", code="period_closed")
    report = build_report(session, start=from_epoch(start), end=from_epoch(end), now=now,
                          minimum=minimum, group_by="server")
    session.add(PeriodReport(period=period, scope="all", report_json=render_json(report),
                             report_csv=render_csv(report)))
    for block in report["projects"]:
        single = {**report, "projects": [block]}
        session.add(PeriodReport(period=period, scope=block["project_id"],
                                 report_json=render_json(single), report_csv=render_csv(single)))
    closed = ClosedPeriod(period=period, start_s=start, end_s=end, closed_by=closed_by,
                          closed_at=now)
    session.add(closed)
    session.flush()
    return closed


def frozen_report(session: Session, period: str, project_id: str | None, *, now: datetime,
                  minimum: int) -> tuple[str, str] | None:
    """(json, csv) of a closed month for a scope; None if the month is open.

    A project without usage in a closed month has no stored report; its empty report is built
    on the fly (nothing can enter a closed month, so it is stable too).
    Raises InvalidInput (invalid_period).
    """
    start, end = period_window(period)
    if repository.closed_period(session, period) is None:
        return None
    stored = repository.period_report(session, period, project_id or "all")
    if stored is not None:
        return stored.report_json, stored.report_csv
    report = build_report(session, start=from_epoch(start), end=from_epoch(end), now=now,
                          minimum=minimum, project_id=project_id, group_by="server")
    return render_json(report), render_csv(report)


def require_project(session: Session, project_id: str) -> None:
    """Raises NotFound (project_not_found) for an unknown project."""
    if session.get(Project, project_id) is None:
        raise NotFound("no such project", code="project_not_found")

