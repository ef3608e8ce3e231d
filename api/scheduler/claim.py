"""The race-free claim: optimistic concurrency on generations plus a capacity re-check in SQL.

A claim for server S on host H, in the caller's transaction:

1. One UPDATE bumps H's generation only if the caller's copy of H is current, H is enabled and
   every requested class still fits by the fit rule (``scheduler.capacity.fit_rule``, built
   here as SQL, the same rule the in-memory resources filter solves per host)::

      UPDATE hosts SET generation = generation + 1
       WHERE id = :host AND generation = :seen AND enabled
         AND (SELECT count(*) FROM inventories i
               WHERE i.host_id = :host AND i.resource_class IN (:classes)
                 AND coalesce((SELECT sum(a.used) FROM allocations a
                                WHERE a.host_id = i.host_id
                                  AND a.resource_class = i.resource_class), 0) + :requested
                     <= (i.total - i.reserved) * coalesce(i.allocation_ratio, :pool_ratio)
                 AND :requested >= i.min_unit
                 AND :requested <= coalesce(i.max_unit, i.total)) = :classes_count

   One row: on PostgreSQL the row lock it takes serializes every later claim on H until our
   transaction ends; on SQLite the write already holds the database write lock. The
   generation guards the re-check: every claim on H bumps it in the transaction that inserts
   its allocations, so a statement that finds ``:seen`` current sees all of H's allocations.
   No row: a conflict, and nothing was written. Only then does a second statement read H's
   generation and fit, to name it: a host conflict (another claim got there first, or H was
   disabled or deleted), a held host (current and fitting: a claim in flight held the row and
   this try skipped it) or a capacity conflict (e.g. a ratio lowered without a bump).
   On PostgreSQL a losing UPDATE may still hold H's row lock: when another transaction
   changed the row after the statement's snapshot, PostgreSQL locks the newest version
   before it re-checks the WHERE clause, and keeps the lock when the re-check fails (also
   through ``FOR UPDATE SKIP LOCKED``). Only a row skipped because another claim held it
   (``HOST_HELD``) is certainly not locked.
2. For hard (anti-)affinity groups:
   ``UPDATE server_groups SET generation = generation + 1 WHERE id = :group AND generation = :seen``
   so two members placed concurrently cannot both rely on the same member list. Done last, so a
   transaction that holds the group row never waits for anything else (no lock cycles).
3. Insert one allocation row per requested class.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    Insert,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from api.db import new_id
from api.models import Allocation, Host, Inventory, ServerGroup
from scheduler.capacity import fit_rule

HARD_GROUP_POLICIES = ("affinity", "anti-affinity")

# The statements are built on the Core tables: executed through a session they skip the ORM's
# statement layer (no entities are loaded or synchronized), which costs more than the SQL on
# the create path.
HOSTS = cast(Table, Host.__table__)
INVENTORIES = cast(Table, Inventory.__table__)
ALLOCATIONS = cast(Table, Allocation.__table__)
SERVER_GROUPS = cast(Table, ServerGroup.__table__)


class ClaimOutcome(enum.Enum):
    """How a claim ended: CLAIMED, or which optimistic check lost the race."""

    CLAIMED = "claimed"
    HOST_CONFLICT = "host_conflict"
    # PostgreSQL, ``wait=False``: the row was held by another claim in flight and skipped;
    # nothing was written and no lock taken.
    HOST_HELD = "host_held"
    CAPACITY_CONFLICT = "capacity_conflict"
    GROUP_CONFLICT = "group_conflict"


def ratio_expr(pool_ratios: Mapping[str, float]) -> ColumnElement[Any]:
    """The effective allocation ratio of an inventory row: its own, else the pool's default."""
    inv = INVENTORIES.c
    return func.coalesce(
        inv.allocation_ratio,
        case({rc: literal(ratio) for rc, ratio in pool_ratios.items()},
             value=inv.resource_class, else_=literal(1.0)),
    )


def max_unit_expr() -> ColumnElement[Any]:
    """The effective max_unit: unset means the whole (physical) total."""
    return func.coalesce(INVENTORIES.c.max_unit, INVENTORIES.c.total)


def used_expr() -> ColumnElement[Any]:
    """What is allocated of this inventory row's class on its host (correlated subquery)."""
    return func.coalesce(
        select(func.sum(ALLOCATIONS.c.used))
        .where(ALLOCATIONS.c.host_id == INVENTORIES.c.host_id,
               ALLOCATIONS.c.resource_class == INVENTORIES.c.resource_class)
        .correlate(INVENTORIES)
        .scalar_subquery(),
        0,
    )


def fit_clause(requested: ColumnElement[Any], pool_ratios: Mapping[str, float]
               ) -> ColumnElement[bool]:
    """The fit rule over an ``inventories`` row, in SQL."""
    inv = INVENTORIES.c
    clause: ColumnElement[bool] = fit_rule(
        used_expr(), requested, inv.total, inv.reserved, ratio_expr(pool_ratios),
        inv.min_unit, max_unit_expr(), and_)
    return clause


@lru_cache(maxsize=64)
def _statements(classes: tuple[str, ...], ratios: tuple[tuple[str, float], ...], wait: bool,
                wake: bool = False) -> tuple[Update, Select[Any], Update]:
    """The claim's statements for these requested classes, with bound parameters: the host
    bump with its fit re-check, the read that explains a lost claim, and the group bump.

    Built once per class set, pool ratios, ``wait`` and ``wake``: building and hashing the
    expression trees on every claim cost more than running them.
    """
    hosts = HOSTS.c
    inv = INVENTORIES.c
    requested = case({rc: bindparam(f"req_{rc}") for rc in classes},
                     value=inv.resource_class, else_=literal(0))
    fitting = (
        select(func.count())
        .select_from(INVENTORIES)
        .where(inv.host_id == bindparam("host_id"),
               inv.resource_class.in_(classes),
               fit_clause(requested, dict(ratios)))
        .scalar_subquery()
    )
    claimable = (hosts.id == bindparam("host_id"), hosts.generation == bindparam("seen"),
                 hosts.enabled.is_(True), fitting == len(classes))
    if wait:
        bump_host = update(HOSTS).where(*claimable)
    else:
        # PostgreSQL: ... WHERE id = (SELECT id FROM hosts WHERE ... FOR UPDATE SKIP LOCKED).
        # A host row locked by another claim in flight will have a new generation when that
        # claim commits, so waiting for it only to conflict is wasted time: skip it now.
        # (SQLite has no row locks; the subquery is then a plain re-check.)
        unlocked = (select(hosts.id).where(*claimable)
                    .with_for_update(skip_locked=True).scalar_subquery())
        bump_host = update(HOSTS).where(hosts.id == unlocked)
    bump_host = bump_host.values(generation=hosts.generation + 1)
    if wake:
        bump_host = bump_host.values(desired_generation=hosts.desired_generation + 1)
    explain = select(hosts.generation, hosts.enabled, fitting).where(
        hosts.id == bindparam("host_id"))
    groups = SERVER_GROUPS.c
    bump_group = (
        update(SERVER_GROUPS)
        .where(groups.id == bindparam("group_id"), groups.generation == bindparam("seen"))
        .values(generation=groups.generation + 1)
    )
    return bump_host, explain, bump_group


_INSERT_ALLOCATIONS: Insert = insert(ALLOCATIONS)


def claim(session: Session, *, server_id: str, host_id: str, host_generation: int,
          resources: Mapping[str, int], pool_ratios: Mapping[str, float],
          group_id: str | None = None, group_policy: str | None = None,
          group_generation: int | None = None, wait: bool = True,
          wake: bool = False) -> ClaimOutcome:
    """Claim ``resources`` on one host for ``server_id``; flushes, never commits.

    ``wait=False`` treats a host row locked by another transaction (PostgreSQL) as a host
    conflict at once instead of waiting for that transaction to end. ``wake=True`` also
    moves the host's ``desired_generation`` (the agent's cursor) in the same UPDATE, for a
    caller that would bump it next anyway (a create; ``lifecycle.placed``).

    Returns the outcome. A conflict on the host writes nothing, but on PostgreSQL any but
    ``HOST_HELD`` may still hold the host's row lock (module docstring), and a group
    conflict leaves the host bumped and locked. Raises nothing of its own.
    """
    classes = tuple(sorted(resources))
    bump_host, explain, bump_group = _statements(classes, tuple(sorted(pool_ratios.items())),
                                                 wait, wake)
    params = {"host_id": host_id, "seen": host_generation,
              **{f"req_{rc}": resources[rc] for rc in classes}}
    bumped = session.execute(bump_host, params)
    if getattr(bumped, "rowcount", 0) != 1:
        row = session.execute(explain, params).first()
        if row is None or row[0] != host_generation or not row[1]:
            return ClaimOutcome.HOST_CONFLICT  # moved, disabled or gone: the copy is behind
        if row[2] == len(classes):
            # Current and fitting, so a claim in flight held the row: the copy will be behind
            # once that claim commits.
            return ClaimOutcome.HOST_HELD
        return ClaimOutcome.CAPACITY_CONFLICT

    if group_id is not None and group_policy in HARD_GROUP_POLICIES:
        group_bumped = session.execute(bump_group,
                                       {"group_id": group_id, "seen": group_generation})
        if getattr(group_bumped, "rowcount", 0) != 1:
            return ClaimOutcome.GROUP_CONFLICT

    session.execute(_INSERT_ALLOCATIONS, [
        {"id": new_id(), "server_id": server_id, "host_id": host_id, "resource_class": rc,
         "used": amount}
        for rc, amount in resources.items()
    ])
    return ClaimOutcome.CLAIMED
