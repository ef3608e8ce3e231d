"""Output: rich tables for people, JSON for scripts, one readable line for errors.

Every string that reaches the terminal may come from a tenant (names, descriptions, console
output, error details), so none is ever read as Rich markup (each goes out as a ``Text``) and
each loses its terminal control sequences first (``terminal_safe``).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cli.client import CliError

# Escape sequences a terminal acts on: OSC (titles, hyperlinks, clipboard), CSI (cursor,
# colours, screen clearing), DCS/SOS/PM/APC strings and two-byte escapes, in their 7-bit and
# 8-bit (C1) forms; an unterminated sequence is dropped up to where it stops.
_ESCAPE_SEQUENCES = re.compile(r"""
      (?:\x1b\]|\x9d) [^\x07\x1b\x9c]* (?:\x07|\x1b\\|\x9c)?
    | (?:\x1b\[|\x9b) [0-?]* [ -/]* [@-~]?
    | (?:\x1b[PX^_]|[\x90\x98\x9e\x9f]) [^\x1b\x9c]* (?:\x1b\\|\x9c)?
    | \x1b [ -/]* [0-~]?
""", re.VERBOSE)
# Every other C0 and C1 control except tab and newline (a lone carriage return could
# overwrite what was printed before it on the line).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """``text`` without terminal control sequences or control characters (keeps tab, newline).

    CRLF line ends (serial consoles) become newlines.
    """
    return _CONTROLS.sub("", _ESCAPE_SEQUENCES.sub("", text.replace("\r\n", "\n")))


def plain(text: str) -> Text:
    """``text`` made terminal-safe, as a ``Text`` Rich prints literally (never as markup)."""
    return Text(terminal_safe(text))


def console(stderr: bool = False) -> Console:
    """A console on the current stdout/stderr (tests swap them between commands).

    When the output is not a terminal, lines are not cut at 80 columns: ids stay whole.
    """
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 200
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


def cell(value: Any) -> str:
    """A table cell: objects with a name show the name, lists are joined, None is empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        if "name" in value:
            return str(value["name"])
        if "code" in value and "message" in value:
            return f"{value['code']}: {value['message']}"
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    return str(value)


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *,
          title: str | None = None) -> None:
    """Print rows as a table with the given columns (those missing from every row are
    dropped; when none is present, the keys of the first row are used)."""
    present = [c for c in columns if any(c in r for r in rows)]
    if not present and rows:
        present = list(rows[0].keys())
    t = Table(title=plain(title) if title else None, header_style="bold")
    for c in present or list(columns):
        t.add_column(plain(c.upper().replace("_", " ")), overflow="fold")
    for r in rows:
        t.add_row(*(plain(cell(r.get(c))) for c in present))
    console().print(t)


def record(obj: dict[str, Any], *, title: str | None = None) -> None:
    """Print one object as a two-column FIELD/VALUE table."""
    t = Table(title=plain(title) if title else None, header_style="bold")
    t.add_column("FIELD")
    t.add_column("VALUE", overflow="fold")
    for k, v in obj.items():
        if isinstance(v, dict) and "id" in v and "name" in v:
            text = f"{v['name']} ({v['id']})"
        elif isinstance(v, dict | list) and v and k != "flavor":
            text = json.dumps(v)
        else:
            text = cell(v)
        t.add_row(plain(str(k)), plain(text))
    console().print(t)


def message(text: str) -> None:
    """A short confirmation for people (on stdout), printed literally."""
    console().print(plain(text))


def error(exc: CliError) -> None:
    """One readable message on stderr: the problem's detail, code, status and request id."""
    where = [exc.code]
    if exc.status:
        where.append(f"HTTP {exc.status}")
    if exc.request_id:
        where.append(f"request {exc.request_id}")
    err = console(stderr=True)
    detail, codes = escape(terminal_safe(exc.detail)), escape(terminal_safe(", ".join(where)))
    err.print(f"[bold red]Error:[/] {detail} [dim]({codes})[/]", markup=True, highlight=False)
    for e in exc.errors[:10] if len(exc.errors) > 1 else []:
        loc = ".".join(str(p) for p in e.get("loc", []) if p != "body")
        err.print(plain(f"  - {loc}: {e.get('msg', '')}"))
