"""Host and request builders for the scheduler's table-driven tests (plain functions, no DB)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from scheduler.framework import (
    DISK_GB,
    MEMORY_MB,
    VCPU,
    HostState,
    InventoryState,
    RequestSpec,
    ServerGroupSpec,
    Snapshot,
)
from scheduler.resources import requested

NOW = 1_000_000.0


def inv(total: int, used: int = 0, *, reserved: int = 0, ratio: float = 1.0, min_unit: int = 1,
        max_unit: int | None = None) -> InventoryState:
    """One inventory; ``max_unit`` defaults to ``total`` like the SQL snapshot does."""
    return InventoryState(total=total, reserved=reserved, allocation_ratio=ratio,
                          min_unit=min_unit, max_unit=total if max_unit is None else max_unit,
                          used=used)


def host(name: str, *, vcpu: InventoryState | None = None, ram: InventoryState | None = None,
         disk: InventoryState | None = None, **attrs: Any) -> HostState:
    """A fresh, enabled host: 8 vCPU x 4.0, 16384 MB, 100 GB unless told otherwise."""
    inventories = {VCPU: vcpu or inv(8, ratio=4.0), MEMORY_MB: ram or inv(16384),
                   DISK_GB: disk or inv(100)}
    attrs.setdefault("last_heartbeat", NOW)
    return HostState(id=f"id-{name}", name=name, inventories=inventories, **attrs)


def request(*, vcpus: int = 1, ram_mb: int = 1024, disk_gb: int = 10,
            group: tuple[str, dict[str, int]] | None = None, **attrs: Any) -> RequestSpec:
    """A request; ``group`` is (policy, {host id: members there})."""
    server_group = ServerGroupSpec("g1", group[0], group[1]) if group else None
    return RequestSpec(server_id="s1", project_id="p1",
                       resources=sizes(vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb),
                       server_group=server_group, **attrs)


def sizes(*, vcpus: int, ram_mb: int, disk_gb: int) -> dict[str, int]:
    """Requested amounts by resource class, as the placement service's builder reads them
    from a flavor (a zero amount is not requested)."""
    return requested(SimpleNamespace(vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb))


def snapshot(*hosts: HostState, down_after: float = 60.0) -> Snapshot:
    """The hosts at ``NOW``."""
    return Snapshot(hosts=list(hosts), now=NOW, host_down_after_seconds=down_after)
