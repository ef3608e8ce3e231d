"""Usage metering: monthly reports and one server's usage."""

from __future__ import annotations

import csv
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


def month_bounds(month: str | None) -> tuple[str, str]:
    """Start and end (exclusive) of ``YYYY-MM`` (default: this month) as ISO 8601 UTC.

    Raises CliError for a malformed month.
    """
    if month is None:
        now = datetime.now(UTC)
        year, mon = now.year, now.month
    else:
        m = MONTH.match(month)
        if not m or not 1 <= int(m.group(2)) <= 12:
            raise CliError(f"--month must look like 2026-11, not {month!r}.", code="usage")
        year, mon = int(m.group(1)), int(m.group(2))
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=UTC)
    return start.isoformat().replace("+00:00", "Z"), end.isoformat().replace("+00:00", "Z")


def _rows(body: Any) -> list[dict[str, Any]]:
    """The row list of a usage answer, whatever key holds it."""
    if isinstance(body, list):
        return [r for r in body if isinstance(r, dict)]
    if isinstance(body, dict):
        for key in ("items", "rows", "usage", "groups", "lines", "servers", "projects"):
            if isinstance(body.get(key), list):
                return [r for r in body[key] if isinstance(r, dict)]
    return []


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update({f"{k}.{ik}": iv for ik, iv in v.items()})
        else:
            out[k] = v
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write rows (nested objects flattened to ``a.b`` columns) as CSV; raises CliError."""
    flat = [_flat(r) for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    try:
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(flat)
    except OSError as exc:
        raise CliError(f"Cannot write {path}: {exc}", code="bad_file") from None


@app.command("report")
def usage_report(
    ctx: typer.Context,
    month: Annotated[str | None, typer.Option(help="YYYY-MM (default: this month).")] = None,
    project: Annotated[str | None, typer.Option(help="Only this project (admins: any).")
                       ] = None,
    group_by: Annotated[str | None, typer.Option(help="project, server or flavor.")] = None,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Also write the rows as CSV.")
                        ] = None,
) -> None:
    """Usage of a month, per project (or as grouped), with totals."""
    st = state(ctx)
    start, end = month_bounds(month)
    pid = resolve_project(st.api, project)["id"] if project else None
    body = st.api.get("/v1/usage", start=start, end=end, project_id=pid, group_by=group_by)
    rows = _rows(body)
    if csv_file is not None:
        write_csv(rows, csv_file)
    if st.json:
        render.emit_json(body)
        return
    st.show([_flat(r) for r in rows], [], title=f"usage {start} .. {end}")
    if isinstance(body, dict):
        extra = {k: v for k, v in body.items() if not isinstance(v, list)}
        if extra:
            render.record(extra)
    if csv_file is not None:
        render.message(f"Wrote {len(rows)} rows to {csv_file}.")


@app.command("show")
def usage_show(ctx: typer.Context, server: str,
               month: Annotated[str | None, typer.Option(help="YYYY-MM (default: this month).")
                                ] = None) -> None:
    """One server's usage in a month."""
    st = state(ctx)
    s = resolve_server(st.api, server)
    start, end = month_bounds(month)
    body = st.api.get("/v1/usage", start=start, end=end, project_id=s.get("project_id"),
                      group_by="server", server_id=s["id"])
    rows = [r for r in _rows(body)
            if s["id"] in (r.get("server_id"), r.get("id"), (r.get("server") or {}).get("id")
                           if isinstance(r.get("server"), dict) else None)]
    if st.json:
        render.emit_json(rows[0] if len(rows) == 1 else rows)
        return
    if not rows:
        render.message(f"No usage recorded for {s['name']} between {start} and {end}.")
        return
    for r in rows:
        render.record(_flat(r), title=f"usage of {s['name']} {start} .. {end}")
