"""The placement service: one request-spec builder and one ``place()`` for every caller.

Create, resize and simulate (and, later, migrate and evacuate) differ only by parameters:

- ``request_spec(...)`` builds the scheduler's RequestSpec from the rows a caller resolved
  (with the caller's visibility): the amounts per resource class come from the registry's
  request fields (``scheduler.resources``) of the server or flavor, the image's minimums and
  architecture, the flavor's extra_specs, the zone and the server group.
- ``place(...)`` = snapshot -> pipeline -> claim, retried with a fresh snapshot when a
  concurrent claim wins the race. ``exclude_hosts`` drops hosts from the snapshot,
  ``force_host`` considers only that host (a resize stays where it is), ``release_held``
  counts the server's current allocations as freed and replaces them atomically.
- ``evaluate(...)`` is the same without the claim (``POST /v1/scheduler/simulate``).

Nothing here commits: the caller's unit of work commits the server row, the quota usage and
the allocations together, or none of them.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import delete, event
from sqlalchemy.orm import Session, SessionTransaction

from api.config import Settings
from api.errors import Conflict, DomainError
from api.metrics import observe_placement
from api.models import Allocation, Flavor, Image, ServerGroup
from api.scheduler.claim import HARD_GROUP_POLICIES, ClaimOutcome, claim
from api.scheduler.snapshot import load_group, load_hosts, pool_ratios, snapshot_cache
from scheduler import resources
from scheduler.framework import RequestSpec, ServerGroupSpec, Snapshot
from scheduler.pipeline import Decision, Multipliers, decide

log = logging.getLogger("minicloud.scheduler")

_PHRASES = {
    "disabled": "disabled",
    "down": "down (no recent heartbeat)",
    "degraded": "degraded (its agent's reconcile loop makes no progress)",
    "availability_zone": "in another availability zone",
    "affinity": "affinity",
    "anti_affinity": "anti-affinity",
    "image_min_ram": "flavor RAM below the image's min_ram",
    "image_min_disk": "flavor disk below the image's min_disk",
    "architecture": "other architecture",
    "aggregate": "missing a required aggregate tag",
}


def describe(reason: str) -> str:
    """A reason code as words: ``not_enough_MEMORY_MB`` -> ``not enough MEMORY_MB``."""
    if reason.startswith("not_enough_"):
        return "not enough " + reason.removeprefix("not_enough_")
    if reason.startswith("unit_limit_"):
        return "outside the unit limits of " + reason.removeprefix("unit_limit_")
    return _PHRASES.get(reason, reason.replace("_", " "))


def refusal_sentence(hosts: int, refusals: Counter[str]) -> str:
    """``12 hosts: 7 not enough MEMORY_MB, 3 disabled, 2 anti-affinity`` (most frequent first)."""
    if hosts == 0:
        return "0 hosts: no compute host is enrolled."
    parts = [f"{n} {describe(reason)}"
             for reason, n in sorted(refusals.items(), key=lambda kv: (-kv[1], kv[0]))]
    return f"{hosts} host{'s' if hosts != 1 else ''}: " + ", ".join(parts)


class NoValidHost(DomainError):
    """No host passes every filter. Carries ``hosts`` and ``refusals`` (reason -> count), and
    ``per_host`` reasons only when built for an admin."""

    status, code, title = 409, "no_valid_host", "No valid host"

    @classmethod
    def from_decision(cls, decision: Decision, snapshot: Snapshot,
                      explain_hosts: bool) -> NoValidHost:
        """The problem for a failed decision; host names only if ``explain_hosts``."""
        extra: dict[str, Any] = {
            "hosts": decision.hosts,
            "refusals": dict(sorted(decision.refusals.items())),
            "refusals_by_filter": dict(sorted(decision.refusals_by_filter.items())),
        }
        if explain_hosts:
            names = {h.id: h.name for h in snapshot.hosts}
            extra["per_host"] = [
                {"host_id": hid, "host": names.get(hid, hid), "reason": reason}
                for hid, reason in sorted(decision.refused.items(),
                                          key=lambda kv: names.get(kv[0], kv[0]))
            ]
        return cls(refusal_sentence(decision.hosts, decision.refusals), **extra)


@dataclass(frozen=True, slots=True)
class PlacementResult:
    """Where the server went, and the record of how (for the server's events)."""

    host_id: str
    host_name: str
    availability_zone: str
    attempts: int
    conflicts: int
    # JSON-ready: chosen host, hosts, candidates, refusals, top-scored hosts with breakdown.
    decision: dict[str, Any] = field(default_factory=dict)


def multipliers(settings: Settings) -> Multipliers:
    """Weigher multipliers from the settings (validated when the settings were built)."""
    return settings.multipliers()


def request_spec(*, server_id: str, project_id: str, sizes: object, flavor: Flavor | None,
                 image: Image | None, group: ServerGroup | None = None,
                 availability_zone: str | None = None, request_id: str = "") -> RequestSpec:
    """What the scheduler needs to know about one server: the one request-spec builder.

    ``sizes`` is whatever holds the amounts (the server row, whose sizes were copied from its
    flavor at create; the new flavor of a resize; raw sizes of a simulation), read through the
    registry's request fields. ``flavor`` gives the extra_specs, ``image`` the minimums and
    architecture. The caller resolved every row with its own visibility.
    """
    props: dict[str, Any] = dict(image.properties or {}) if image is not None else {}
    arch = props.get("architecture")
    extra = flavor.extra_specs if flavor is not None else None
    return RequestSpec(
        server_id=server_id, project_id=project_id, resources=resources.requested(sizes),
        image_min_ram=image.min_ram if image is not None else 0,
        image_min_disk=image.min_disk if image is not None else 0,
        image_architecture=arch if isinstance(arch, str) else None,
        extra_specs={str(k): str(v) for k, v in (extra or {}).items()},
        availability_zone=availability_zone,
        server_group=ServerGroupSpec(id=group.id, policy=group.policy) if group else None,
        request_id=request_id,
    )


def _snapshot(session: Session, settings: Settings, *, fresh: bool,
              exclude_hosts: Collection[str], force_host: str | None) -> Snapshot:
    """The hosts a placement may consider: one forced host read as of now, else the pool
    (cached unless ``fresh``) without the excluded hosts."""
    if force_host is not None:
        snapshot = load_hosts(session, settings, only=[force_host])
    elif fresh:
        snapshot = load_hosts(session, settings)
    else:
        snapshot = snapshot_cache(session, settings).load(session, settings)
    if exclude_hosts:
        snapshot = replace(snapshot, hosts=[h for h in snapshot.hosts
                                            if h.id not in exclude_hosts])
    return snapshot


def evaluate(session: Session, settings: Settings, spec: RequestSpec, *, fresh: bool = True,
             exclude_hosts: Collection[str] = (), force_host: str | None = None
             ) -> tuple[RequestSpec, Snapshot, Decision, int | None]:
    """Read a snapshot and run the pipeline, without claiming anything.

    ``fresh`` reads every host in full; otherwise the process's ``SnapshotCache`` re-reads
    only hosts whose generation moved. ``exclude_hosts`` and ``force_host`` as for ``place``.

    Returns the spec with the group's current members, the snapshot, the decision and the
    group's generation (None without a group). Raises nothing of its own; an unknown group id
    is treated as no group.
    """
    group_generation: int | None = None
    if spec.server_group is not None:
        group = load_group(session, spec.server_group.id, spec.server_group.policy)
        if group is not None:
            spec = replace(spec, server_group=group.spec)
            group_generation = group.generation
    snapshot = _snapshot(session, settings, fresh=fresh, exclude_hosts=exclude_hosts,
                         force_host=force_host)
    return spec, snapshot, decide(spec, snapshot, multipliers(settings)), group_generation


def place(session: Session, settings: Settings, spec: RequestSpec, *,
          request_id: str | None = None, explain_hosts: bool = False,
          exclude_hosts: Collection[str] = (), force_host: str | None = None,
          release_held: bool = False, wake_host: bool = False) -> PlacementResult:
    """Choose a host for ``spec`` and claim its resources for ``spec.server_id``.

    Parameters that make one service of create, resize and (later) migrate/evacuate:
    ``exclude_hosts`` are never considered; ``force_host`` is the only host considered
    (read fresh, never from the cache); ``release_held`` first deletes the allocations
    ``spec.server_id`` already holds, in a savepoint, so the fit check counts them as freed:
    the new rows replace them atomically, or the savepoint rolls back and they stay.
    ``request_id`` (if given) replaces ``spec.request_id`` as the tie-break seed.
    ``wake_host`` moves the chosen host's agent cursor in the claim's own UPDATE (a host that
    loses a claim on SQLite, where no savepoint undoes it, may see its cursor move too: its
    agent re-reads once, no harm). Writes one
    allocation row per requested resource class; flushes, never commits; does not touch the
    server row (the caller sets ``host_id`` from the result).

    Raises NoValidHost (409 ``no_valid_host``) when no host passes the filters, with host names
    only if ``explain_hosts``; Conflict (409 ``placement_busy``) if concurrent claims won
    ``settings.scheduler_max_attempts`` times in a row.
    """
    if request_id:
        spec = replace(spec, request_id=request_id)
    # The claim's statements are Core (no autoflush): pending ORM changes go first.
    session.flush()
    # Row locks exist on PostgreSQL only: SQLite's one writer holds the whole database.
    row_locks = session.get_bind().dialect.name != "sqlite"
    ratios = pool_ratios(settings)
    conflicts = 0
    cache = snapshot_cache(session, settings)
    # A forced host or released allocations are read as of now in this transaction: the
    # process's cached copy knows neither.
    cached = force_host is None and not release_held
    # A lost try without a savepoint may still hold its host's row lock (``claim``): from then
    # on its transaction must never wait for a row, or claimers could deadlock each other.
    may_hold_lock = bool(session.info.get(_MAY_HOLD_LOCK))
    for attempt in range(1, settings.scheduler_max_attempts + 1):
        held = _release(session, spec.server_id) if release_held else None
        current, snapshot, decision, group_generation = evaluate(
            session, settings, spec, fresh=not cached, exclude_hosts=exclude_hosts,
            force_host=force_host)
        if decision.host is None and cached:
            # The cached copy may be pessimistic (freed allocations do not bump generations):
            # a refusal is only ever answered from a full read.
            current, snapshot, decision, group_generation = evaluate(
                session, settings, spec, exclude_hosts=exclude_hosts)
        observe_placement(decision)
        if decision.host is None:
            if held is not None:
                held.rollback()
            raise NoValidHost.from_decision(decision, snapshot, explain_hosts)
        group = current.server_group
        # The ranked runners-up come from the same snapshot: when a concurrent claim took the
        # best host, the next best is still a valid choice unless the group moved too.
        # Concurrent placements all see the same ranking, so after losing the best host they
        # try the runners-up in an order seeded by their request id, spreading out instead of
        # queueing again on the second best.
        # On the first attempt a host row locked by a concurrent claim is skipped rather than
        # waited for (it will have moved on when that claim commits); later attempts wait, so
        # a small pool under a storm still converges instead of skipping every host. A forced
        # host has no alternative: it is always waited for.
        # A host another transaction of this process claimed and has not committed yet would
        # only be lost (its row is locked, its generation moves): it is tried last. A lone
        # placement has none, so its choice is the pipeline's.
        best, *rest = decision.ranked
        random.Random(f"{spec.request_id}/{attempt}").shuffle(rest)
        tries = [best, *rest]
        if busy := cache.busy():
            tries.sort(key=lambda h: h.id in busy)  # stable: the ranked order otherwise
        wait = (attempt > 1 or force_host is not None) and not may_hold_lock
        # On PostgreSQL a try that may wait for a row, or claims for a hard group (whose
        # conflict comes after the host's bump), runs in a savepoint: a losing try may still
        # hold the host's row lock, and holding it while waiting for another row could
        # deadlock; rolling the savepoint back releases it. A try that skips locked rows
        # needs none (two statements less per create, and no rollback, which would make
        # psycopg drop the connection's prepared statements); if it loses other than by a
        # skipped row, the rest of this placement never waits. SQLite has no row locks, and
        # a losing try there wrote nothing (a group conflict: a host generation bump, which
        # only makes other claimers re-read): never a savepoint.
        guarded = row_locks and (wait or (group is not None
                                          and group.policy in HARD_GROUP_POLICIES))
        for host in tries:
            savepoint = session.begin_nested() if guarded else None
            outcome = claim(
                session, server_id=spec.server_id, host_id=host.id,
                host_generation=host.generation, resources=spec.resources, pool_ratios=ratios,
                group_id=group.id if group else None, group_policy=group.policy if group else None,
                group_generation=group_generation, wait=wait, wake=wake_host)
            if outcome is not ClaimOutcome.CLAIMED:
                if savepoint is not None:
                    savepoint.rollback()
                elif row_locks and outcome is not ClaimOutcome.HOST_HELD:
                    may_hold_lock = session.info[_MAY_HOLD_LOCK] = True
            else:
                if savepoint is not None:
                    savepoint.commit()
                if held is not None:
                    held.commit()
                    cache.forget(host.id)  # usage moved by new - old: re-read it
                else:
                    cache.claimed(session, host, spec.resources)
                cache.claiming(session, host.id)
                record = decision.summary()
                record.update(host_id=host.id, host=host.name, attempts=attempt,
                              conflicts=conflicts, request_id=spec.request_id)
                return PlacementResult(host.id, host.name, host.availability_zone, attempt,
                                       conflicts, record)
            conflicts += 1
            if outcome not in (ClaimOutcome.HOST_CONFLICT, ClaimOutcome.HOST_HELD) \
                    or not row_locks:
                # The copy was wrong about the host although its generation matched (or, on
                # SQLite, a try lost on its group after bumping the host): re-read it.
                cache.forget(host.id)
            # PostgreSQL: a held host (a row another claim holds, skipped) or a generation the
            # copy does not have yet; that claim's notification or the next
            # fingerprint brings the copy up to date, without a compare forced now.
            log.debug("claim conflict %s on %s (attempt %d)", outcome.value, host.id, attempt)
            if outcome is ClaimOutcome.GROUP_CONFLICT:
                break
        if held is not None:
            held.rollback()
    raise Conflict("Too many concurrent placements; try again.", code="placement_busy")


_MAY_HOLD_LOCK = "minicloud.scheduler.may_hold_lock"  # session.info, until the transaction ends


@event.listens_for(Session, "after_transaction_end")
def _row_locks_released(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_MAY_HOLD_LOCK, None)


def _release(session: Session, server_id: str) -> SessionTransaction:
    """Open a savepoint and delete the allocations ``server_id`` holds inside it."""
    savepoint = session.begin_nested()
    session.execute(delete(Allocation).where(Allocation.server_id == server_id)
                    .execution_options(synchronize_session=False))
    return savepoint
