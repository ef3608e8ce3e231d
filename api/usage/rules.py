"""Billing rules as pure functions: a server's ledger entries -> billable pieces -> seconds.

No I/O here. The SQL report path (``api.usage.repository``) stores the pieces this module
derives and sums them with the same arithmetic as :func:`window_totals`; tests check both agree
and check this module against an independent second-by-second count.

Rules (see docs/billing.md):

* Entries of one server are applied in order of (second, sequence). All entries of the same
  second are applied together; only the state after the last of them counts for that second,
  so a stop and a start in the same second do not open a new run.
* Disk (and plain "server" existence) accrues from the first entry (``created``) to ``deleted``,
  also while stopped. vCPU and RAM accrue while observed running (``running`` opens a run;
  ``stopped``, ``host_down`` and ``deleted`` close it). BUILD and ERROR are never "running".
* ``paused``: RAM (and disk) accrue, vCPU and running seconds do not. A pause is not a stop: a
  pause inside a run keeps the run open, and ``running`` after it resumes vCPU in the same run
  (no new minimum per start); the run ends at the next ``stopped``, ``host_down`` or
  ``deleted``, its length counting the paused seconds. A ``paused`` outside a run (the agent
  never saw the guest run) accrues RAM but opens no run.
* ``resized`` (and any entry with a new snapshot) changes vcpus/ram/disk from that second on.
* Minimum per start: a run shorter than ``minimum_run_seconds`` is billed the missing seconds
  extra, attributed to the second the run ended (so a window that closed before the run ended
  never changes, and report(a, c) == report(a, b) + report(b, c)). Open runs have no extra yet.
* Nothing accrues after ``deleted``; later entries of that server are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from typing import Literal

Kind = Literal[
    "created", "running", "paused", "stopped", "resized", "deleted", "host_down", "adjustment",
]
KINDS: tuple[str, ...] = (
    "created", "running", "paused", "stopped", "resized", "deleted", "host_down", "adjustment",
)
STOPPING = frozenset({"stopped", "host_down", "deleted"})

Resource = Literal["compute", "paused", "disk", "stop"]
Mode = Literal["off", "running", "paused"]


@dataclass(frozen=True)
class Entry:
    """The billing-relevant part of one ledger entry."""

    seq: int
    at_s: int  # whole seconds since the epoch, UTC
    kind: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    flavor_id: str | None = None


@dataclass(frozen=True)
class Piece:
    """A billable stretch [start_s, end_s) of one server with a constant snapshot.

    ``compute`` pieces: observed running. ``paused`` pieces: observed paused. ``disk`` pieces:
    existing. ``stop`` markers (start_s == end_s == run_end_s) carry a finished run (paused
    seconds inside it included), for the minimum-per-start extra.
    ``end_s`` None means still open (bills up to "now"). Closed compute and disk pieces never
    cross a UTC month boundary, so a month's report reads only that month's pieces.
    """

    resource: Resource
    start_s: int
    end_s: int | None
    vcpus: int
    ram_mb: int
    disk_gb: int
    flavor_id: str | None
    run_start_s: int | None = None
    run_end_s: int | None = None

    @property
    def bucket(self) -> int:
        """The UTC month (YYYYMM) holding a closed piece; 0 for an open one."""
        if self.end_s is None:
            return 0
        return month_bucket(self.start_s)


@dataclass(frozen=True)
class Totals:
    """Integer seconds billed inside a window (minimum-per-start extra included)."""

    server_seconds: int = 0
    running_seconds: int = 0
    vcpu_seconds: int = 0
    ram_mib_seconds: int = 0
    disk_gib_seconds: int = 0

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.server_seconds + other.server_seconds,
            self.running_seconds + other.running_seconds,
            self.vcpu_seconds + other.vcpu_seconds,
            self.ram_mib_seconds + other.ram_mib_seconds,
            self.disk_gib_seconds + other.disk_gib_seconds,
        )


def epoch(at: datetime) -> int:
    """Whole seconds since the epoch (floor) of an aware datetime."""
    return int(at.timestamp() // 1)


def from_epoch(seconds: int) -> datetime:
    """The aware UTC datetime of ``seconds`` since the epoch."""
    return datetime.fromtimestamp(seconds, UTC)


def month_bucket(seconds: int) -> int:
    """YYYYMM of the UTC month containing ``seconds``."""
    d = from_epoch(seconds)
    return d.year * 100 + d.month


def next_month_start(seconds: int) -> int:
    """The first second of the UTC month after the one containing ``seconds``."""
    d = from_epoch(seconds)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return epoch(datetime(year, month, 1, tzinfo=UTC))


def _split_months(piece: Piece) -> list[Piece]:
    if piece.resource == "stop" or piece.end_s is None:
        return [piece]
    out: list[Piece] = []
    start = piece.start_s
    while start < piece.end_s:
        end = min(piece.end_s, next_month_start(start))
        out.append(Piece(piece.resource, start, end, piece.vcpus, piece.ram_mb, piece.disk_gb,
                         piece.flavor_id, piece.run_start_s, piece.run_end_s))
        start = end
    return out


def ordered(entries: Iterable[Entry]) -> list[Entry]:
    """Entries in billing order: by second, then by ledger sequence."""
    return sorted(entries, key=lambda e: (e.at_s, e.seq))


def pieces(entries: Iterable[Entry]) -> list[Piece]:
    """Derive the billable pieces of one server from its ledger entries (any order)."""
    out: list[Piece] = []
    exists = deleted = run_open = False
    mode: Mode = "off"
    snap: tuple[int, int, int, str | None] = (0, 0, 0, None)
    disk_from = mode_from = run_start = 0
    for second, group in groupby(ordered(e for e in entries if e.kind != "adjustment"),
                                 key=lambda e: e.at_s):
        if deleted:
            break
        new_exists, new_mode, new_open, new_snap = exists, mode, run_open, snap
        for e in group:
            new_exists = True
            new_snap = (e.vcpus, e.ram_mb, e.disk_gb, e.flavor_id)
            if e.kind == "running":
                new_mode, new_open = "running", True
            elif e.kind == "paused":
                new_mode = "paused"  # keeps a run open, opens none
            elif e.kind in STOPPING:
                new_mode, new_open = "off", False
            if e.kind == "deleted":
                deleted = True
                break
        if deleted:
            new_exists, new_mode, new_open = False, "off", False
        # Close what changed at this second, then open what starts.
        if exists and (not new_exists or new_snap[2] != snap[2] or new_snap[3] != snap[3]):
            out.append(Piece("disk", disk_from, second, *snap))
            disk_from = second
        if mode != "off" and (new_mode != mode or new_snap != snap):
            out.append(Piece("compute" if mode == "running" else "paused", mode_from, second,
                             *snap, run_start_s=run_start if run_open else None))
        if run_open and not new_open:
            out.append(Piece("stop", second, second, *snap,
                             run_start_s=run_start, run_end_s=second))
        if new_exists and not exists:
            disk_from = second
        if new_mode != "off" and (new_mode != mode or new_snap != snap):
            mode_from = second
        if new_open and not run_open:
            run_start = second
        exists, mode, run_open, snap = new_exists, new_mode, new_open, new_snap
    if exists:
        out.append(Piece("disk", disk_from, None, *snap))
    if mode != "off":
        out.append(Piece("compute" if mode == "running" else "paused", mode_from, None, *snap,
                         run_start_s=run_start if run_open else None))
    result: list[Piece] = []
    for p in out:
        result.extend(_split_months(p))
    return result


def overlap(piece: Piece, start: int, end: int, now: int) -> int:
    """Seconds of ``piece`` inside [start, end), an open piece ending at ``now``."""
    piece_end = now if piece.end_s is None else piece.end_s
    return max(0, min(piece_end, end) - max(piece.start_s, start))


def extra_seconds(piece: Piece, start: int, end: int, minimum: int) -> int:
    """Minimum-per-start seconds a ``stop`` marker adds to the window [start, end)."""
    if piece.resource != "stop" or piece.run_end_s is None or piece.run_start_s is None:
        return 0
    if not start <= piece.run_end_s < end:
        return 0
    return max(0, minimum - (piece.run_end_s - piece.run_start_s))


def piece_totals(piece: Piece, start: int, end: int, now: int, minimum: int) -> Totals:
    """What one piece bills inside [start, end)."""
    if piece.resource == "disk":
        s = overlap(piece, start, end, now)
        return Totals(server_seconds=s, disk_gib_seconds=s * piece.disk_gb)
    if piece.resource == "paused":
        return Totals(ram_mib_seconds=overlap(piece, start, end, now) * piece.ram_mb)
    s = (overlap(piece, start, end, now) if piece.resource == "compute"
         else extra_seconds(piece, start, end, minimum))
    return Totals(running_seconds=s, vcpu_seconds=s * piece.vcpus,
                  ram_mib_seconds=s * piece.ram_mb)


def window_totals(server_pieces: Sequence[Piece], start: int, end: int, now: int,
                  minimum: int) -> Totals:
    """Seconds one server bills inside [start, end), given the report time ``now``."""
    total = Totals()
    for p in server_pieces:
        total = total + piece_totals(p, start, end, now, minimum)
    return total


def state_after(entries: Iterable[Entry]) -> str:
    """The server's billing state after its entries: building, running, paused, stopped or
    deleted."""
    state = "building"
    for e in ordered(entries):
        if e.kind == "deleted":
            return "deleted"
        if e.kind in ("running", "paused"):
            state = e.kind
        elif e.kind in ("stopped", "host_down"):
            state = "stopped"
    return state
