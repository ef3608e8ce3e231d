"""Usage metering: monthly reports (table, JSON or CSV) and one server's usage."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import render
from cli.client import CliError
from cli.context import state
from cli.identity import resolve_project
from cli.servers import resolve_server

app = typer.Typer(help="Usage and billing reports.", no_args_is_help=True)

MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def usage_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Table columns of a report: ids, then every meter's ``*_hours`` the API sent, then cost.

    The meters come from the report itself (the API's meter registry), so a new meter shows
    up here without a CLI change.
    """
    hours: dict[str, None] = {}
    for row in rows:
        hours.update(dict.fromkeys(k for k in row if k.endswith("_hours")))
    return ["start", "project_id", "scaling_group", "servers", "server_id", "state", *hours,
            "adjustments_cost", "cost"]


def month_bounds(month: str) -> tuple[str, str]:
    """Start and end (exclusive) of ``YYYY-MM`` as ISO 8601 UTC; raises CliError."""
    m = MONTH.match(month)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise CliError(f"--month must look like 2026-11, not {month!r}.", code="usage")
    year, mon = int(m.group(1)), int(m.group(2))
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=UTC)
    return start.isoformat().replace("+00:00", "Z"), end.isoformat().replace("+00:00", "Z")


def this_month() -> str:
    """The current month as ``YYYY-MM`` (UTC)."""
    return datetime.now(UTC).strftime("%Y-%m")


def report_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows of a usage report: one per project (and per server, per period)."""
    periods = report.get("periods") or [{"start": report.get("start"),
                                         "projects": report.get("projects", [])}]
    rows: list[dict[str, Any]] = []
    for period in periods:
        for project in period.get("projects", []):
            rows.append({"start": period.get("start"), **project})
            for server in project.get("servers", []) or []:
                rows.append({"start": period.get("start"), "project_id": project["project_id"],
                             **server})
            for group in project.get("scaling_groups", []) or []:
                rows.append({"start": period.get("start"), "project_id": project["project_id"],
                             "scaling_group": group.get("name") or "(none)", **group})
    return rows


@app.command("report")
def usage_report(
    ctx: typer.Context,
    month: Annotated[str | None, typer.Option(help="YYYY-MM (default: this month).")] = None,
    project: Annotated[str | None, typer.Option(help="Only this project (admins: any).")
                       ] = None,
    group_by: Annotated[str | None, typer.Option(
        help="server, scaling_group, day or month.")] = None,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Write the report as CSV.")
                        ] = None,
) -> None:
    """Usage and cost of a month, per project (admins: every project)."""
    st = state(ctx)
    start, end = month_bounds(month or this_month())
    pid = resolve_project(st.api, project)["id"] if project else None
    params = {"start": start, "end": end, "project_id": pid, "group_by": group_by}
    if csv_file is not None:
        text = st.api.get_text("/v1/usage", "text/csv", **params)
        try:
            csv_file.write_text(text)
        except OSError as exc:
            raise CliError(f"Cannot write {csv_file}: {exc}", code="bad_file") from None
    report: dict[str, Any] = st.api.get("/v1/usage", **params)
    if st.json:
        render.emit_json(report)
        return
    currency = report.get("currency") or ""
    rows = report_rows(report)
    st.show(rows, usage_columns(rows),
            title=f"usage {start} .. {end} {currency}".rstrip())
    if csv_file is not None:
        render.message(f"Wrote the CSV report to {csv_file}.")


@app.command("show")
def usage_show(ctx: typer.Context, server: str,
               month: Annotated[str | None, typer.Option(
                   help="YYYY-MM (default: the server's whole life).")] = None) -> None:
    """One server's billed time and its ledger."""
    st = state(ctx)
    s = resolve_server(st.api, server)
    start, end = month_bounds(month) if month else (None, None)
    body: dict[str, Any] = st.api.get(f"/v1/usage/servers/{s['id']}", start=start, end=end)
    if st.json:
        render.emit_json(body)
        return
    lists = {k: v for k, v in body.items() if isinstance(v, list)}
    render.record({k: v for k, v in body.items() if k not in lists},
                  title=f"usage of {s['name']}")
    for key, rows in lists.items():
        if rows and isinstance(rows[0], dict):
            render.table(rows, list(rows[0].keys()), title=key)
