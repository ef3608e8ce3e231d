"""Loading a scheduler snapshot from SQL: two cheap queries for all hosts.

    SELECT id, name, availability_zone, architecture, enabled, disabled_reason, aggregates,
           last_heartbeat_at, loop_progress_at, generation FROM hosts ORDER BY id;

    SELECT i.host_id, i.resource_class, i.total, i.reserved,
           coalesce(i.allocation_ratio, <pool ratio of the class>), i.min_unit,
           coalesce(i.max_unit, i.total),
           coalesce((SELECT sum(a.used) FROM allocations a
                      WHERE a.host_id = i.host_id AND a.resource_class = i.resource_class), 0)
      FROM inventories i;

A partial re-read (the hosts whose generation moved) is one statement instead: those hosts
LEFT JOIN their inventories, the ids in one parameter (``id = ANY(:ids)`` on PostgreSQL, an
expanding ``IN`` elsewhere; built once).

The usage subquery is ``api.scheduler.claim.used_expr``, the same expression the claim re-checks
with; per inventory row it is an index lookup on allocations.host_id, which SQLite runs far
faster than joining a GROUP BY over all allocations.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from itertools import filterfalse
from typing import Any, cast

from sqlalchemy import Select, String, Text, any_, bindparam, event, func, literal, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, SessionTransaction

from api.agent import notifier
from api.config import Settings
from api.db import utcnow
from api.metrics import CLAIMS_FOLLOWED, SNAPSHOT_READS
from api.models import Allocation, Server, ServerGroup
from api.scheduler.claim import HOSTS, INVENTORIES, max_unit_expr, ratio_expr, used_expr
from scheduler import resources
from scheduler.framework import HostState, InventoryState, ServerGroupSpec, Snapshot


def pool_ratios(settings: Settings) -> dict[str, float]:
    """The pool-wide allocation ratio of each resource class (``scheduler.resources``)."""
    return resources.pool_ratios(settings)


@lru_cache(maxsize=8)
def _statements(ratios: tuple[tuple[str, float], ...], postgres: bool = False
                ) -> tuple[Select[Any], Select[Any], Select[Any]]:
    """All hosts, all inventories, and the hosts in the parameter ``ids`` joined with their
    inventories (a partial re-read in one round trip).

    On PostgreSQL ``ids`` is one array (``id = ANY(:ids)``): the SQL text is the same for any
    number of ids, so the server keeps it prepared; elsewhere an expanding ``IN``.
    """
    # Building the expressions costs more than running them on a small pool: build once.
    # Core tables, like the claim's statements: no ORM layer on rows that are read as tuples.
    host, inv = HOSTS.c, INVENTORIES.c
    host_columns = (host.id, host.name, host.availability_zone, host.architecture,
                    host.enabled, host.disabled_reason, host.aggregates,
                    host.last_heartbeat_at, host.loop_progress_at, host.generation)
    inventory_columns = (inv.resource_class, inv.total, inv.reserved,
                         ratio_expr(dict(ratios)), inv.min_unit, max_unit_expr(), used_expr())
    hosts = select(*host_columns).order_by(host.id)
    inventories = select(inv.host_id, *inventory_columns)
    some = (select(*host_columns, *inventory_columns)
            .select_from(HOSTS.outerjoin(INVENTORIES, inv.host_id == host.id))
            .where(host.id == any_(bindparam("ids", type_=postgresql.ARRAY(String)))
                   if postgres else host.id.in_(bindparam("ids", expanding=True)))
            .order_by(host.id))
    return hosts, inventories, some


_HostRow = tuple[str, str, str, str, bool, str | None, Any, Any, Any, int]


def _read_hosts(session: Session, settings: Settings,
                only: list[str] | None = None) -> list[HostState]:
    """Host rows, then their inventories with usage (all hosts); or the ids in ``only`` with
    their inventories in one statement."""
    hosts_stmt, inventories_stmt, some_stmt = _statements(
        tuple(sorted(pool_ratios(settings).items())),
        session.get_bind().dialect.name == "postgresql")
    inventories: dict[str, dict[str, InventoryState]] = {}
    host_rows: dict[str, _HostRow] = {}
    if only is not None:
        # One statement sees one snapshot: generations and usage agree.
        for row in session.execute(some_stmt, {"ids": only}):
            host_rows[row[0]] = cast(_HostRow, tuple(row[:10]))
            rc, total, reserved, ratio, min_unit, max_unit, in_use = row[10:]
            if rc is not None:
                inventories.setdefault(row[0], {})[rc] = InventoryState(
                    total=total, reserved=reserved, allocation_ratio=float(ratio),
                    min_unit=min_unit, max_unit=max_unit, used=int(in_use))
        rows: Iterable[_HostRow] = host_rows.values()
    else:
        rows = cast(list[_HostRow], session.execute(hosts_stmt).all())
        # Usage is read after the generations: a claim committing in between bumped a
        # generation this snapshot holds the old value of, so claiming on that host conflicts
        # and re-reads.
        for hid, rc, total, reserved, ratio, min_unit, max_unit, in_use in (
                session.execute(inventories_stmt)):
            inventories.setdefault(hid, {})[rc] = InventoryState(
                total=total, reserved=reserved, allocation_ratio=float(ratio),
                min_unit=min_unit, max_unit=max_unit, used=int(in_use))
    return [
        HostState(id=hid, name=name, availability_zone=zone, architecture=arch,
                  enabled=bool(enabled), disabled_reason=reason, aggregates=aggregates or {},
                  last_heartbeat=_epoch(heartbeat), last_progress=_epoch(progress),
                  generation=generation, inventories=inventories.get(hid, {}))
        for hid, name, zone, arch, enabled, reason, aggregates, heartbeat, progress, generation
        in rows
    ]


def _epoch(at: datetime | None) -> float | None:
    return at.timestamp() if at is not None else None


def _snapshot(hosts: list[HostState], settings: Settings) -> Snapshot:
    return Snapshot(hosts=hosts, now=utcnow().timestamp(),
                    host_down_after_seconds=float(settings.host_down_after_seconds),
                    host_degraded_after_seconds=float(settings.host_degraded_after_seconds))


def load_hosts(session: Session, settings: Settings,
               only: list[str] | None = None) -> Snapshot:
    """Every host (or the ids in ``only``) with inventories and summed allocations, as of
    now (no cache)."""
    return _snapshot(_read_hosts(session, settings, only), settings)


class SnapshotCache:
    """A per-process copy of the pool, refreshed by generation.

    Each ``load`` first reads a one-row fingerprint of the pool, ``SELECT count(*),
    sum(generation) FROM hosts``. Generations only grow, so when the fingerprint is the one
    the copy was read at (plus the bumps of this process's own committed claims, applied to
    the copy by ``claimed``), nothing the filters look at changed but the hosts' liveness
    (heartbeat and loop progress), and the copy is used as it is. Otherwise it reads ``id,
    generation`` of every host and re-reads in full only the hosts whose generation moved,
    plus new ones.

    Liveness is written by every heartbeat and only moves forward, so a cached value is
    never newer than the real one: a host the copy shows up (a heartbeat within the down
    limit) or not degraded is so. Only the hosts the copy shows down or degraded could read
    differently; their liveness is re-read at most every ``HEARTBEAT_REFRESH`` seconds.
    Every host's liveness is re-read every ``MARKS_REFRESH`` seconds at most (a quarter of
    the degraded limit, if shorter): a host that never reported loop progress may start to.
    So the cost of a load does not grow with the heartbeats of a large up fleet.

    On PostgreSQL each claim also rides on its host's notification (``claim_note``) to the
    other API processes, whose copies follow it (``followed``) exactly as this one follows
    its own claims at their commit: their fingerprints then match again without a read. A
    claim whose notification has not arrived yet, or any change made without one, moves the
    fingerprint: the generations alone then come as one aggregated row (``_compare``), read
    with the fingerprint when the last load already found other processes' changes.
    ``claiming`` / ``busy`` track the hosts this process's open transactions claimed, which
    ``place`` tries last.

    Every claim bumps its host's generation, and so must every other change of a host or its
    inventory that the filters look at (admin PATCH, agent inventory, enable/disable). A change
    that does not bump (a server deletion freeing allocations) only makes the copy
    pessimistic; ``place`` re-reads in full before answering ``no_valid_host``. So does a
    heartbeat: a cached heartbeat is never newer than the real one. Optimistic changes
    (a coincidence of sums across processes) are caught by the claim's generation check and
    SQL re-check, after which ``forget`` marks the host stale and drops the fingerprint: the
    next load re-reads that host (through the one-row generation compare on PostgreSQL), not
    the whole pool.
    """

    # The liveness of hosts that look down or degraded is re-read at least this often.
    HEARTBEAT_REFRESH = 2.0
    # Every host's liveness is re-read at least this often (less with a short degraded limit).
    MARKS_REFRESH = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hosts: dict[str, HostState] = {}
        self._ordered: list[HostState] = []
        self._position: dict[str, int] = {}  # host id -> index in _ordered
        self._fingerprint: tuple[int, int] | None = None
        self._marks_at = 0.0  # every host's liveness read (time.monotonic())
        self._suspects_at = 0.0  # the suspect hosts' liveness read
        # PostgreSQL: "id:generation" of every host in the copy (``_compare`` matches the
        # database's against it), None if the copy is incomplete.
        self._tokens: frozenset[str] | None = None
        self._others_moved = False  # the last load found other processes' changes
        # Hosts this process's transactions claimed and have not ended yet -> how many.
        self._claiming: dict[str, int] = {}

    def load(self, session: Session, settings: Settings) -> Snapshot:
        """A snapshot of every host, re-reading only what changed since the last load."""
        snapshot = self._load(session, settings)
        refresh = min(self.HEARTBEAT_REFRESH, settings.host_down_after_seconds / 4)
        with self._lock:
            now = time.monotonic()
            if now - self._suspects_at < refresh:
                return snapshot
            self._suspects_at = now
        return self._refresh_suspects(session, settings, snapshot)

    def _refresh_suspects(self, session: Session, settings: Settings,
                          snapshot: Snapshot) -> Snapshot:
        """Re-read the heartbeat and loop progress of the hosts whose cached ones make them
        down or degraded (the only hosts a fresher read could change: a cached value is never
        newer than the real one), and put them in the copy."""
        down_before = snapshot.now - snapshot.host_down_after_seconds
        degraded_before = snapshot.now - snapshot.host_degraded_after_seconds
        suspects = [h.id for h in snapshot.hosts
                    if h.last_heartbeat is None or h.last_heartbeat < down_before
                    or (h.last_progress is not None and h.last_progress < degraded_before)]
        if not suspects:
            return snapshot
        postgres = session.get_bind().dialect.name == "postgresql"
        if len(suspects) * 2 > len(snapshot.hosts):
            rows = session.execute(_LIVENESS).all()
        else:
            rows = session.execute(_LIVENESS_ANY if postgres else _LIVENESS_IN,
                                   {"ids": suspects}).all()
        with self._lock:
            updates: dict[str, HostState] = {}
            for hid, heartbeat, progress in rows:
                current = self._hosts.get(hid)
                seen, moved = _epoch(heartbeat), _epoch(progress)
                if current is not None and hid in self._position and \
                        (current.last_heartbeat, current.last_progress) != (seen, moved):
                    updates[hid] = replace(current, last_heartbeat=seen, last_progress=moved)
            if updates:
                # Same ids and generations: positions and the compare's tokens stay.
                ordered = list(self._ordered)
                for hid, updated in updates.items():
                    ordered[self._position[hid]] = updated
                self._hosts = {**self._hosts, **updates}
                self._ordered = ordered
            hosts = self._ordered
        return _snapshot(hosts, settings)

    def _load(self, session: Session, settings: Settings) -> Snapshot:
        """``load`` without the re-read of suspect hosts' liveness."""
        postgres = session.get_bind().dialect.name == "postgresql"
        compared_row: tuple[str | None] | None = None
        if postgres and self._others_moved and self._tokens is not None:
            # Other processes claimed before the last load: the fingerprint has most likely
            # moved again, so read it and the generations in one statement.
            count, total, listed = session.execute(_FINGERPRINT_COMPARE).one()
            compared_row = (listed,)
        else:
            count, total = session.execute(_FINGERPRINT).one()
        fingerprint = (int(count), int(total or 0))
        refresh = min(self.HEARTBEAT_REFRESH, settings.host_down_after_seconds / 4)
        # Every host's liveness, this often: a host whose loop progress was never reported
        # may report one, which ages; a read at most a quarter of the degraded limit old
        # cannot miss it turning degraded.
        every = max(refresh, min(self.MARKS_REFRESH, settings.host_degraded_after_seconds / 4))
        with self._lock:
            heartbeats_due = time.monotonic() - self._marks_at >= every
            # Only a hint for the next load's statement; every decision below is exact.
            self._others_moved = self._fingerprint not in (None, fingerprint)
            if fingerprint == self._fingerprint and not heartbeats_due:
                _READ_UNCHANGED.inc()
                return _snapshot(self._ordered, settings)
            known = dict(self._hosts)
        if not heartbeats_due and postgres:
            compared = self._compare(session, settings, fingerprint, compared_row)
            if compared is not None:
                _READ_COMPARED.inc()
                return compared
        (_READ_LIVENESS if heartbeats_due else _READ_GENERATIONS).inc()
        marks_at = time.monotonic()
        marks: Sequence[tuple[str, int, Any, Any]]
        if heartbeats_due:
            marks = cast(Sequence[tuple[str, int, Any, Any]], session.execute(_MARKS).all())
        else:
            # Only generations moved (another process's claims, most often): the heartbeats
            # and loop progress are not due yet, so read the generations alone and keep the
            # cached ones, which are never newer than the real ones.
            marks = [(hid, generation, _KEEP, _KEEP)
                     for hid, generation in session.execute(_GENERATIONS)]
        stale = [hid for hid, generation, _, _ in marks
                 if (h := known.get(hid)) is None or h.generation != generation]
        if len(stale) * 2 > len(marks):
            fresh = _read_hosts(session, settings)
        else:
            fresh = _read_hosts(session, settings, stale) if stale else []
        for host in fresh:
            known[host.id] = host
        hosts: list[HostState] = []
        complete = True
        for hid, generation, heartbeat, progress in marks:
            cached = known.get(hid)
            if cached is None or cached.generation != generation:
                complete = False
                continue  # changed again between the two reads: absent from this snapshot
            if heartbeat is _KEEP:
                hosts.append(cached)
                continue
            seen, moved = _epoch(heartbeat), _epoch(progress)
            if (cached.last_heartbeat, cached.last_progress) != (seen, moved):
                # HostState objects are shared with concurrent readers: replace, never mutate.
                cached = replace(cached, last_heartbeat=seen, last_progress=moved)
            hosts.append(cached)
        with self._lock:
            self._hosts = {h.id: h for h in hosts}
            self._ordered = hosts
            self._position = {h.id: i for i, h in enumerate(hosts)}
            # The fingerprint was read before the marks: a change committed in between makes
            # the next load's fingerprint differ, so it reads again.
            self._fingerprint = fingerprint if complete else None
            self._tokens = frozenset(map(_token, hosts)) if complete and postgres else None
            if heartbeats_due:
                self._marks_at = self._suspects_at = marks_at
        return _snapshot(hosts, settings)

    def _compare(self, session: Session, settings: Settings, fingerprint: tuple[int, int],
                 row: tuple[str | None] | None) -> Snapshot | None:
        """PostgreSQL: compare every host's generation in one row instead of one row per host.

        ``SELECT string_agg(id || ':' || generation, ',') FROM hosts``, unordered (sorting
        1,000 ids by collation cost the database more than the rest of the check): the
        entries not among the copy's ``id:generation`` set are the hosts that moved
        (a set lookup per host, in C), and only those are re-read. With as many entries as
        the copy and every moved id known, the ids are exactly the copy's. None (read the
        marks instead) when hosts came or went, the copy is incomplete or many hosts moved. A
        host that moved again before its re-read is taken as re-read (newer), and the
        fingerprint is then not kept. ``row`` is that row when the load already read it with
        the fingerprint.
        """
        with self._lock:
            ordered, tokens, position = self._ordered, self._tokens, self._position
            hosts_by_id = self._hosts
        if tokens is None:
            return None
        (listed,) = row if row is not None else session.execute(_COMPARE).one()
        if listed is None:
            return None
        seen: list[str] = listed.split(",")
        if len(seen) != len(ordered):
            return None
        moved = list(filterfalse(tokens.__contains__, seen))
        if len(moved) * 2 > len(seen):
            return None
        seen_generation = dict(token.rpartition(":")[::2] for token in moved)
        ids = list(seen_generation)
        if not all(map(position.__contains__, ids)):
            return None  # a new host (and so one gone): the marks place it
        fresh = {h.id: h for h in _read_hosts(session, settings, ids)} if ids else {}
        hosts = list(ordered)
        changed = set(tokens)
        ahead = False  # a host moved again after the row: newer than the fingerprint
        for hid in ids:
            host = fresh.get(hid)
            if host is None:
                return None  # deleted in between: the marks see it gone
            i = position[hid]
            changed.discard(_token(hosts[i]))
            changed.add(_token(host))
            ahead = ahead or host.generation != int(seen_generation[hid])
            hosts[i] = host
        with self._lock:
            # Same ids in the same order: positions do not change.
            self._hosts = {**hosts_by_id, **fresh}
            self._ordered = hosts
            self._tokens = frozenset(changed)
            # Each host is as new as its last read, none older than the fingerprint; with a
            # host newer than it, the next load must compare again.
            self._fingerprint = None if ahead else fingerprint
        return _snapshot(hosts, settings)

    def _replace(self, updated: HostState) -> None:
        """Put ``updated`` in the copy in place of the host with its id (lock held).

        The dict, list and set are replaced, never changed in place: a load in progress holds
        the ones it read together and writes them back together.
        """
        position = self._position[updated.id]
        previous = self._ordered[position]
        self._hosts = {**self._hosts, updated.id: updated}
        # A C-level copy, then the one entry replaced, in place of a Python scan of every host.
        ordered = list(self._ordered)
        ordered[position] = updated
        self._ordered = ordered
        if self._tokens is not None:
            self._tokens = self._tokens.difference((_token(previous),)).union(
                (_token(updated),))

    def claimed(self, session: Session, host: HostState, resources: Mapping[str, int]) -> None:
        """Once ``session`` commits, account a claim of ``resources`` on ``host`` in the copy.

        The claim moved the host from ``host.generation`` to the next and added exactly
        ``resources`` (its generation check proved nothing else changed in between), so the
        copy can follow without a read. Rolled back: nothing happens. On PostgreSQL the claim
        also rides on the host's notification (``notifier.annotate``), so the other API
        processes' copies follow it too (``followed``).
        """

        def apply(_session: Session) -> None:
            with self._lock:
                current = self._hosts.get(host.id)
                if current is not None and current.generation == host.generation + 1:
                    return  # a load (or this process's listener) already has the claim
                if (current is None or current.generation != host.generation
                        or self._fingerprint is None):
                    self._fingerprint = None
                    return
                self._follow(current, resources)

        event.listen(session, "after_commit", apply, once=True)
        notifier.annotate(session, host.id, claim_note(host.generation, resources))

    def followed(self, host_id: str, generation: int, resources: Mapping[str, int]) -> None:
        """Account a claim another process committed (moving ``host_id`` from ``generation``
        to the next, adding ``resources``), as told by its notification.

        Applied only to a host the copy holds at exactly ``generation``, which the claim's
        generation check proved was the whole state before it: the copy stays never newer
        than the database, and its fingerprint moves with it. Otherwise nothing happens:
        a copy that missed or overtook the claim finds out from the fingerprint.
        """
        with self._lock:
            current = self._hosts.get(host_id)
            if current is not None and current.generation == generation \
                    and host_id in self._position:
                self._follow(current, resources)
                CLAIMS_FOLLOWED.inc()

    def _follow(self, current: HostState, resources: Mapping[str, int]) -> None:
        """Put ``current`` one claim of ``resources`` later in the copy (lock held)."""
        self._replace(replace(current, generation=current.generation + 1, inventories={
            rc: replace(inv, used=inv.used + resources.get(rc, 0))
            for rc, inv in current.inventories.items()}))
        if self._fingerprint is not None:
            count, total = self._fingerprint
            self._fingerprint = (count, total + 1)

    def claiming(self, session: Session, host_id: str) -> None:
        """Count ``host_id`` as claimed by this process until ``session``'s transaction ends.

        Until then the host's row is locked and its generation moves at the commit: another
        placement of this process that tries it first would lose (``place`` tries it last).
        """
        with self._lock:
            self._claiming[host_id] = self._claiming.get(host_id, 0) + 1
        session.info.setdefault(_CLAIMING, []).append((self, host_id))

    def busy(self) -> frozenset[str]:
        """The hosts of ``claiming`` whose transactions have not ended."""
        with self._lock:
            return frozenset(self._claiming) if self._claiming else _NONE

    def _claim_ended(self, host_id: str) -> None:
        with self._lock:
            left = self._claiming.pop(host_id, 0) - 1
            if left > 0:
                self._claiming[host_id] = left

    def forget(self, host_id: str) -> None:
        """Mark one host stale, so the next load re-reads it in full (and only it, unless
        others moved too).

        The copy keeps the host's place with an impossible generation (``_FORGOTTEN``):
        the generation compare and the marks both see it as moved and re-read it. The
        snapshot with that entry is never handed out: the fingerprint is dropped, so the
        next load compares before answering.
        """
        with self._lock:
            self._fingerprint = None
            current = self._hosts.get(host_id)
            if current is not None and host_id in self._position:
                self._replace(replace(current, generation=_FORGOTTEN))


_FINGERPRINT = select(func.count(), func.sum(HOSTS.c.generation)).select_from(HOSTS)
_MARKS = select(HOSTS.c.id, HOSTS.c.generation, HOSTS.c.last_heartbeat_at,
                HOSTS.c.loop_progress_at).order_by(HOSTS.c.id)
_GENERATIONS = select(HOSTS.c.id, HOSTS.c.generation).order_by(HOSTS.c.id)
_LIVENESS = select(HOSTS.c.id, HOSTS.c.last_heartbeat_at, HOSTS.c.loop_progress_at)
_LIVENESS_IN = _LIVENESS.where(HOSTS.c.id.in_(bindparam("ids", expanding=True)))
_LIVENESS_ANY = _LIVENESS.where(
    HOSTS.c.id == any_(bindparam("ids", type_=postgresql.ARRAY(String))))
_KEEP = object()  # in place of a heartbeat and loop progress: keep the cached ones
_COMPARE = select(func.string_agg(
    HOSTS.c.id.concat(":").concat(sql_cast(HOSTS.c.generation, Text)), literal(","),
)).select_from(HOSTS)
_FINGERPRINT_COMPARE = select(*_FINGERPRINT.selected_columns, *_COMPARE.selected_columns)
_FORGOTTEN = -1  # generations start at 0 and only grow
_READ_UNCHANGED, _READ_COMPARED, _READ_GENERATIONS, _READ_LIVENESS = (
    SNAPSHOT_READS.labels(how) for how in ("unchanged", "compared", "generations", "liveness"))
_CLAIMING = "minicloud.scheduler.claiming"  # session.info: (cache, host id) of its claims
_NONE: frozenset[str] = frozenset()


@event.listens_for(Session, "after_transaction_end")
def _claims_ended(session: Session, transaction: SessionTransaction) -> None:
    # Only the outermost transaction's end (commit or rollback) releases the claimed rows.
    if transaction.parent is None and (ended := session.info.pop(_CLAIMING, None)):
        for cache, host_id in ended:
            cache._claim_ended(host_id)


def _token(host: HostState) -> str:
    """``id:generation``, as an entry of ``_COMPARE``'s list."""
    return f"{host.id}:{host.generation}"


_CACHES: dict[tuple[str, tuple[tuple[str, float], ...]], SnapshotCache] = {}
_CACHES_LOCK = threading.Lock()
_CLAIM = "claim"
_PROCESS = uuid.uuid4().hex[:12]  # this process, in its claim notes


def claim_note(generation: int, resources: Mapping[str, int], process: str = _PROCESS) -> str:
    """A claim as a notification note:
    ``claim/<process>/<generation before>/VCPU=1,MEMORY_MB=512``."""
    amounts = ",".join(f"{rc}={amount}" for rc, amount in sorted(resources.items()))
    return f"{_CLAIM}/{process}/{generation}/{amounts}"


def parse_claim_note(note: str) -> tuple[str, int, dict[str, int]] | None:
    """``(process, generation before, resources)`` of a ``claim_note``; None for any other
    note (or a malformed one)."""
    kind, process, generation, amounts = [*note.split("/", 3), "", "", ""][:4]
    if kind != _CLAIM:
        return None
    try:
        return process, int(generation), {
            rc: int(amount) for rc, _, amount in
            (pair.partition("=") for pair in amounts.split(",") if pair)}
    except ValueError:
        return None


def _claims_elsewhere(host_id: str, notes: list[str]) -> None:
    """The listener's subscriber: every cache of this process follows the claims other
    processes notified (its own claims it followed at their commit, ``claimed``).

    A process may hold caches of several databases (tests); host ids are random UUIDs, so a
    claim only ever matches the host it was made on.
    """
    claims = [c for c in map(parse_claim_note, notes) if c is not None and c[0] != _PROCESS]
    if claims:
        with _CACHES_LOCK:
            caches = list(_CACHES.values())
        for cache in caches:
            for _, generation, resources in claims:
                cache.followed(host_id, generation, resources)


notifier.subscribe(_claims_elsewhere)


def snapshot_cache(session: Session, settings: Settings) -> SnapshotCache:
    """The process's cache for this database and these pool ratios."""
    key = (str(session.get_bind().engine.url), tuple(sorted(pool_ratios(settings).items())))
    with _CACHES_LOCK:
        cache = _CACHES.get(key)
        if cache is None:
            cache = _CACHES[key] = SnapshotCache()
        return cache


@dataclass(frozen=True, slots=True)
class GroupState:
    """A server group as of now: its generation and where its members run."""

    spec: ServerGroupSpec
    generation: int


def load_group(session: Session, group_id: str, policy: str) -> GroupState | None:
    """The group's generation, then its members' hosts (from their allocations).

    Read in that order: a member placed in between also bumped the generation, so the claim's
    group check fails and the placement re-reads, never trusting a stale member list.
    """
    generation = session.scalar(
        select(ServerGroup.generation).where(ServerGroup.id == group_id))
    if generation is None:
        return None
    rows = session.execute(
        select(Allocation.host_id, func.count(func.distinct(Allocation.server_id)))
        .join(Server, Server.id == Allocation.server_id)
        .where(Server.server_group_id == group_id, Server.deleted_at.is_(None))
        .group_by(Allocation.host_id)
    ).all()
    members = {host_id: int(count) for host_id, count in rows}
    return GroupState(ServerGroupSpec(id=group_id, policy=policy, member_host_ids=members),
                      int(generation))
