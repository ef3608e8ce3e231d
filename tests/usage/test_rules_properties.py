"""Property tests of the pure billing rules against an independent second-by-second count.

Times are a few hundred seconds around a UTC month boundary (2026-01-31 23:58), so month
splitting of pieces is exercised all the time.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from api.usage.rules import (
    Entry,
    Totals,
    epoch,
    month_bucket,
    pieces,
    state_after,
    window_totals,
)

BASE = epoch(datetime(2026, 1, 31, 23, 58, tzinfo=UTC))
SPAN = 400
KINDS = ["created", "running", "stopped", "resized", "deleted", "host_down", "running",
         "running", "stopped", "paused", "paused"]


@st.composite
def lifecycles(draw: st.DrawFn) -> list[Entry]:
    """A server's entries: mostly ordered, with repeats, same-second pairs and resizes."""
    n = draw(st.integers(0, 14))
    entries = []
    for seq in range(n):
        kind = "created" if seq == 0 else draw(st.sampled_from(KINDS))
        entries.append(Entry(
            seq=seq, at_s=BASE + draw(st.integers(0, SPAN - 1)), kind=kind,
            vcpus=draw(st.integers(1, 4)), ram_mb=draw(st.sampled_from([512, 1024, 2048])),
            disk_gb=draw(st.sampled_from([1, 20, 40])),
            flavor_id=draw(st.sampled_from(["f1", "f2", None])),
        ))
    return entries


def brute_force(entries: list[Entry], start: int, end: int, now: int, minimum: int) -> Totals:
    """Count second by second: the state in second t is the state after every entry <= t."""
    order = sorted(entries, key=lambda e: (e.at_s, e.seq))

    def state(t: int) -> tuple[bool, str, bool, Entry | None]:
        """(exists, mode off/running/paused, a run is open, last snapshot) during second t."""
        seen = [e for e in order if e.at_s <= t]
        if not seen or any(e.kind == "deleted" for e in seen):
            return False, "off", False, None
        mode, run_open = "off", False
        for e in seen:
            if e.kind == "running":
                mode, run_open = "running", True
            elif e.kind == "paused":
                mode = "paused"  # a pause is not a stop: the run (if any) stays open
            elif e.kind in ("stopped", "host_down"):
                mode, run_open = "off", False
        return True, mode, run_open, seen[-1]

    server = running_s = vcpu = ram = disk = 0
    lo = min([start, *(e.at_s for e in entries)]) - 1
    for t in range(start, min(end, now)):
        exists, mode, _, snap = state(t)
        if exists and snap is not None:
            server += 1
            disk += snap.disk_gb
            if mode == "running":
                running_s += 1
                vcpu += snap.vcpus
                ram += snap.ram_mb
            elif mode == "paused":
                ram += snap.ram_mb  # paused: RAM stays allocated, vCPUs stop
    # Minimum per start: a run ending at second t (open at t-1, not at t) inside the window;
    # its length counts the paused seconds inside it.
    for t in range(start, end):
        before = state(t - 1)
        if t - 1 >= lo and before[2] and not state(t)[2] and before[3] is not None:
            s = t - 1
            while s - 1 >= lo and state(s - 1)[2]:
                s -= 1
            extra = max(0, minimum - (t - s))
            running_s += extra
            vcpu += extra * before[3].vcpus
            ram += extra * before[3].ram_mb
    return Totals(server, running_s, vcpu, ram, disk)


def test_a_paused_stretch_bills_ram_and_disk_but_no_vcpu_and_keeps_the_run_open() -> None:
    # created 0, running 100, paused 130..1130, running again until stopped at 1150.
    # One run of 1050 s (the pause is inside it), so a 1200 s minimum adds 150 s.
    size = {"vcpus": 2, "ram_mb": 1024, "disk_gb": 10}
    entries = [Entry(i, BASE + sec, kind, **size) for i, (kind, sec) in enumerate(
        [("created", 0), ("running", 100), ("paused", 130), ("running", 1130),
         ("stopped", 1150)])]
    got = window_totals(pieces(entries), BASE, BASE + 2000, BASE + 2000, 1200)
    # running 30 + 20 + 150 extra; RAM also while paused (1000 s); disk all 2000 s.
    assert got == Totals(server_seconds=2000, running_seconds=200, vcpu_seconds=400,
                         ram_mib_seconds=(200 + 1000) * 1024, disk_gib_seconds=20000)
    assert got == brute_force(entries, BASE, BASE + 2000, BASE + 2000, 1200)
    assert state_after(entries[:3]) == "paused"


window = st.tuples(st.integers(BASE - 10, BASE + SPAN + 10),
                   st.integers(BASE - 10, BASE + SPAN + 10)).map(sorted)


@settings(max_examples=150, deadline=None)
@given(lifecycles(), window, st.integers(BASE, BASE + SPAN + 50), st.sampled_from([0, 60, 7]))
def test_matches_an_independent_second_by_second_count(
    entries: list[Entry], win: list[int], now: int, minimum: int
) -> None:
    entries = [e for e in entries if e.at_s <= now]
    start, end = win
    assert window_totals(pieces(entries), start, end, now, minimum) == brute_force(
        entries, start, end, now, minimum)


@settings(max_examples=150, deadline=None)
@given(st.lists(lifecycles(), min_size=1, max_size=6),
       st.lists(st.integers(BASE - 10, BASE + SPAN + 10), min_size=3, max_size=3).map(sorted),
       st.sampled_from([0, 60]))
def test_splitting_a_window_anywhere_changes_nothing_and_nothing_is_negative(
    servers: list[list[Entry]], cuts: list[int], minimum: int
) -> None:
    a, b, c = cuts
    now = BASE + SPAN
    for entries in servers:
        ps = pieces(entries)
        whole = window_totals(ps, a, c, now, minimum)
        assert whole == window_totals(ps, a, b, now, minimum) + window_totals(ps, b, c, now,
                                                                             minimum)
        assert min(vars(whole).values()) >= 0
        # Closed pieces never cross a month boundary (month reports read one bucket).
        for p in ps:
            if p.end_s is not None and p.resource != "stop":
                assert p.start_s < p.end_s
                assert p.bucket == month_bucket(p.start_s) == month_bucket(p.end_s - 1)


@settings(max_examples=100, deadline=None)
@given(lifecycles(), st.randoms())
def test_arrival_order_and_duplicates_do_not_matter(entries: list[Entry],
                                                   rnd: random.Random) -> None:
    # Entries carry their own time; the ledger sequence only breaks ties inside one second.
    # Distinct seconds make the true order unambiguous, as an agent's observations are.
    by_second = {e.at_s: e for e in entries}
    unique = sorted(by_second.values(), key=lambda e: e.at_s)
    shuffled = list(unique) + list(unique)  # every entry delivered twice
    rnd.shuffle(shuffled)
    # The ledger keeps the first copy of each idempotency key (here: the second it happened).
    seen: dict[int, Entry] = {}
    for i, e in enumerate(shuffled):
        seen.setdefault(e.at_s, Entry(i, e.at_s, e.kind, e.vcpus, e.ram_mb, e.disk_gb,
                                      e.flavor_id))
    now = BASE + SPAN
    for minimum in (0, 60):
        assert window_totals(pieces(list(seen.values())), BASE - 5, now, now, minimum) == \
            window_totals(pieces(unique), BASE - 5, now, now, minimum)
