"""Loading a scheduler snapshot from SQL: one aggregated query for all hosts.

    SELECT h.*, i.resource_class, i.total, i.reserved,
           coalesce(i.allocation_ratio, <pool ratio of the class>), i.min_unit,
           coalesce(i.max_unit, i.total), coalesce(u.used, 0)
      FROM hosts h
      LEFT JOIN inventories i ON i.host_id = h.id
      LEFT JOIN (SELECT host_id, resource_class, sum(used) AS used
                   FROM allocations GROUP BY host_id, resource_class) u
             ON u.host_id = i.host_id AND u.resource_class = i.resource_class
     ORDER BY h.id

One statement, so it reads one consistent state on PostgreSQL too: each host's generation
matches the allocations summed beside it, which is what the claim's optimistic check relies on.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from api.config import Settings
from api.db import utcnow
from api.models import Allocation, Host, Inventory, Server, ServerGroup
from scheduler.claim import max_unit_expr, ratio_expr
from scheduler.framework import (
    DISK_GB,
    MEMORY_MB,
    VCPU,
    HostState,
    InventoryState,
    ServerGroupSpec,
    Snapshot,
)


def pool_ratios(settings: Settings) -> dict[str, float]:
    """The pool-wide allocation ratio of each resource class."""
    return {VCPU: settings.cpu_allocation_ratio, MEMORY_MB: settings.ram_allocation_ratio,
            DISK_GB: settings.disk_allocation_ratio}


def load_hosts(session: Session, settings: Settings) -> Snapshot:
    """Every host with its inventories and summed allocations, as of now."""
    used = (
        select(Allocation.host_id, Allocation.resource_class,
               func.sum(Allocation.used).label("used"))
        .group_by(Allocation.host_id, Allocation.resource_class)
        .subquery()
    )
    stmt = (
        select(Host.id, Host.name, Host.availability_zone, Host.architecture, Host.enabled,
               Host.disabled_reason, Host.aggregates, Host.last_heartbeat_at, Host.generation,
               Inventory.resource_class, Inventory.total, Inventory.reserved,
               ratio_expr(pool_ratios(settings)), Inventory.min_unit, max_unit_expr(),
               func.coalesce(used.c.used, 0))
        .outerjoin(Inventory, Inventory.host_id == Host.id)
        .outerjoin(used, and_(used.c.host_id == Inventory.host_id,
                              used.c.resource_class == Inventory.resource_class))
        .order_by(Host.id)
    )
    hosts: list[HostState] = []
    current: HostState | None = None
    for (hid, name, zone, arch, enabled, reason, aggregates, heartbeat, generation,
         rc, total, reserved, ratio, min_unit, max_unit, in_use) in session.execute(stmt):
        if current is None or current.id != hid:
            current = HostState(
                id=hid, name=name, availability_zone=zone, architecture=arch,
                enabled=bool(enabled), disabled_reason=reason, aggregates=aggregates or {},
                last_heartbeat=heartbeat.timestamp() if heartbeat is not None else None,
                generation=generation)
            hosts.append(current)
        if rc is not None:
            current.inventories[rc] = InventoryState(
                total=total, reserved=reserved, allocation_ratio=float(ratio),
                min_unit=min_unit, max_unit=max_unit, used=int(in_use))
    for host in hosts:
        host.refresh()
    return Snapshot(hosts=hosts, now=utcnow().timestamp(),
                    host_down_after_seconds=float(settings.host_down_after_seconds))


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
