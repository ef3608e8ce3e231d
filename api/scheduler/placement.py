"""``place()``: the entry point ``POST /v1/servers`` calls inside its create transaction.

Snapshot -> pipeline -> claim, retried with a fresh snapshot when a concurrent claim wins the
race. Nothing here commits: the caller's unit of work commits the server row, the quota usage
and the allocations together, or none of them.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from api.config import Settings
from api.errors import Conflict, DomainError
from api.metrics import observe_placement
from api.models import Allocation
from api.scheduler.snapshot import load_group, load_hosts, pool_ratios, snapshot_cache
from scheduler.claim import ClaimOutcome, claim
from scheduler.framework import RequestSpec, Snapshot
from scheduler.pipeline import Decision, Multipliers, decide

log = logging.getLogger("minicloud.scheduler")

_PHRASES = {
    "disabled": "disabled",
    "down": "down (no recent heartbeat)",
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
        extra: dict[str, Any] = {"hosts": decision.hosts,
                                 "refusals": dict(sorted(decision.refusals.items()))}
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
    """Weigher multipliers from the settings."""
    return Multipliers(
        ram=settings.scheduler_ram_weight_multiplier,
        cpu=settings.scheduler_cpu_weight_multiplier,
        soft_affinity=settings.scheduler_soft_affinity_weight_multiplier,
        soft_anti_affinity=settings.scheduler_soft_anti_affinity_weight_multiplier,
    )


def evaluate(session: Session, settings: Settings, spec: RequestSpec, *, fresh: bool = True
             ) -> tuple[RequestSpec, Snapshot, Decision, int | None]:
    """Read a snapshot and run the pipeline, without claiming anything.

    ``fresh`` reads every host in full; otherwise the process's ``SnapshotCache`` re-reads
    only hosts whose generation moved.

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
    snapshot = (load_hosts(session, settings) if fresh
                else snapshot_cache(session, settings).load(session, settings))
    return spec, snapshot, decide(spec, snapshot, multipliers(settings)), group_generation


def place(session: Session, settings: Settings, spec: RequestSpec, *,
          request_id: str | None = None, explain_hosts: bool = False) -> PlacementResult:
    """Choose a host for ``spec`` and claim its resources for ``spec.server_id``.

    ``request_id`` (if given) replaces ``spec.request_id`` as the tie-break seed. Writes one
    allocation row per requested resource class; flushes, never commits; does not touch the
    server row (the caller sets ``host_id`` from the result).

    Raises NoValidHost (409 ``no_valid_host``) when no host passes the filters, with host names
    only if ``explain_hosts``; Conflict (409 ``placement_busy``) if concurrent claims won
    ``settings.scheduler_max_attempts`` times in a row.
    """
    if request_id:
        spec = replace(spec, request_id=request_id)
    ratios = pool_ratios(settings)
    conflicts = 0
    cache = snapshot_cache(session, settings)
    for attempt in range(1, settings.scheduler_max_attempts + 1):
        current, snapshot, decision, group_generation = evaluate(session, settings, spec,
                                                                 fresh=False)
        if decision.host is None:
            # The cached copy may be pessimistic (freed allocations do not bump generations):
            # a refusal is only ever answered from a full read.
            current, snapshot, decision, group_generation = evaluate(session, settings, spec)
        observe_placement(decision)
        if decision.host is None:
            raise NoValidHost.from_decision(decision, snapshot, explain_hosts)
        group = current.server_group
        # The ranked runners-up come from the same snapshot: when a concurrent claim took the
        # best host, the next best is still a valid choice unless the group moved too.
        # Concurrent placements all see the same ranking, so after losing the best host they
        # try the runners-up in an order seeded by their request id, spreading out instead of
        # queueing again on the second best.
        # On the first attempt a host row locked by a concurrent claim is skipped rather than
        # waited for (it will have moved on when that claim commits); later attempts wait, so
        # a small pool under a storm still converges instead of skipping every host.
        best, *rest = decision.ranked
        random.Random(f"{spec.request_id}/{attempt}").shuffle(rest)
        for host in (best, *rest):
            # Each try runs in a savepoint: on PostgreSQL a losing UPDATE still locks the row it
            # re-checked, and holding that lock while trying the next host would let claimers
            # deadlock each other. Rolling the savepoint back releases it.
            savepoint = session.begin_nested()
            outcome = claim(
                session, server_id=spec.server_id, host_id=host.id,
                host_generation=host.generation, resources=spec.resources, pool_ratios=ratios,
                group_id=group.id if group else None, group_policy=group.policy if group else None,
                group_generation=group_generation, wait=attempt > 1)
            if outcome is not ClaimOutcome.CLAIMED:
                savepoint.rollback()
            else:
                savepoint.commit()
                cache.claimed(session, host, spec.resources)
                record = decision.summary()
                record.update(host_id=host.id, host=host.name, attempts=attempt,
                              conflicts=conflicts, request_id=spec.request_id)
                return PlacementResult(host.id, host.name, host.availability_zone, attempt,
                                       conflicts, record)
            conflicts += 1
            cache.forget(host.id)
            log.debug("claim conflict %s on %s (attempt %d)", outcome.value, host.id, attempt)
            if outcome is ClaimOutcome.GROUP_CONFLICT:
                break
    raise Conflict("Too many concurrent placements; try again.", code="placement_busy")


def reclaim(session: Session, settings: Settings, spec: RequestSpec, host_id: str, *,
            explain_hosts: bool = False) -> PlacementResult:
    """Re-claim ``spec``'s (new) sizes for ``spec.server_id`` on the host it already holds.

    For a resize: in a savepoint, the server's current allocations are deleted (so the fit
    check counts them as freed), the one host is re-read and filtered like a placement
    (status, resources, image), then claimed with the race-free claim; the new allocation rows
    replace the old ones atomically, or the savepoint rolls back and the old ones stay. Server
    group and zone filters do not apply (the server stays where it is). Flushes, never commits.

    Raises NoValidHost (409 ``no_valid_host``) when the host has no room for the new sizes (or
    is disabled or down), Conflict ``placement_busy`` when concurrent claims on the host won
    ``settings.scheduler_max_attempts`` times in a row.
    """
    spec = replace(spec, server_group=None, availability_zone=None)
    ratios = pool_ratios(settings)
    for attempt in range(1, settings.scheduler_max_attempts + 1):
        savepoint = session.begin_nested()
        session.execute(delete(Allocation).where(Allocation.server_id == spec.server_id)
                        .execution_options(synchronize_session=False))
        snapshot = load_hosts(session, settings, only=[host_id])
        decision = decide(spec, snapshot, multipliers(settings))
        if decision.host is None:
            savepoint.rollback()
            raise NoValidHost.from_decision(decision, snapshot, explain_hosts)
        host = decision.host
        outcome = claim(session, server_id=spec.server_id, host_id=host.id,
                        host_generation=host.generation, resources=spec.resources,
                        pool_ratios=ratios)
        if outcome is ClaimOutcome.CLAIMED:
            savepoint.commit()
            snapshot_cache(session, settings).forget(host.id)
            record = decision.summary()
            record.update(host_id=host.id, host=host.name, attempts=attempt,
                          request_id=spec.request_id)
            return PlacementResult(host.id, host.name, host.availability_zone, attempt,
                                   attempt - 1, record)
        savepoint.rollback()
        log.debug("re-claim conflict %s on %s (attempt %d)", outcome.value, host_id, attempt)
    raise Conflict("Too many concurrent placements; try again.", code="placement_busy")
