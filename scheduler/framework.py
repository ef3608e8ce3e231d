"""The scheduler's vocabulary: the request, the host snapshot, plugin protocols, reason codes.

Everything here is plain data. Filters and weighers are pure functions over it: no I/O, no
clock, no randomness (the pipeline seeds its one tie-break from the request id).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from scheduler.capacity import capacity

VCPU, MEMORY_MB, DISK_GB = "VCPU", "MEMORY_MB", "DISK_GB"
# The order of the per-class tuples in HostState.
RESOURCE_ORDER = (VCPU, MEMORY_MB, DISK_GB)

# Refusal reasons. Once published, a code keeps its meaning: clients and dashboards count them.
DISABLED = "disabled"
DOWN = "down"
AVAILABILITY_ZONE = "availability_zone"
AFFINITY = "affinity"
ANTI_AFFINITY = "anti_affinity"
IMAGE_MIN_RAM = "image_min_ram"
IMAGE_MIN_DISK = "image_min_disk"
ARCHITECTURE = "architecture"
AGGREGATE = "aggregate"


def not_enough(resource_class: str) -> str:
    """Reason code: the host's free capacity of ``resource_class`` is below the request."""
    return f"not_enough_{resource_class}"


def unit_limit(resource_class: str) -> str:
    """Reason code: the request is outside the inventory's min_unit..max_unit."""
    return f"unit_limit_{resource_class}"


@dataclass(frozen=True, slots=True)
class ServerGroupSpec:
    """The server group a request joins; ``member_host_ids`` maps host id -> members there."""

    id: str
    policy: str  # affinity | anti-affinity | soft-affinity | soft-anti-affinity
    member_host_ids: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """What one server needs from a host."""

    server_id: str
    project_id: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    image_min_ram: int = 0
    image_min_disk: int = 0
    image_architecture: str | None = None
    # Flavor extra_specs: every key/value must be among the host's aggregate tags.
    extra_specs: Mapping[str, object] = field(default_factory=dict)
    availability_zone: str | None = None
    server_group: ServerGroupSpec | None = None
    # Seeds the tie-break: the same request on the same snapshot picks the same host.
    request_id: str = ""

    @property
    def resources(self) -> dict[str, int]:
        """The amounts requested per resource class; zero amounts are not requested at all."""
        wanted = {VCPU: self.vcpus, MEMORY_MB: self.ram_mb, DISK_GB: self.disk_gb}
        return {rc: amount for rc, amount in wanted.items() if amount > 0}


@dataclass(slots=True)
class InventoryState:
    """One resource class on one host, with what is already allocated.

    ``capacity`` is ``(total - reserved) * allocation_ratio`` (see ``scheduler.capacity``),
    computed once when the snapshot is built.
    """

    total: int
    reserved: int
    allocation_ratio: float
    min_unit: int
    max_unit: int
    used: int
    capacity: float = 0.0

    def __post_init__(self) -> None:
        self.capacity = capacity(self.total, self.reserved, self.allocation_ratio)

    @property
    def free(self) -> float:
        """Capacity left (may be negative on an overcommitted host after a ratio cut)."""
        return self.capacity - self.used


@dataclass(slots=True)
class HostState:
    """One host as the scheduler sees it at snapshot time."""

    id: str
    name: str
    availability_zone: str = "nova"
    architecture: str = "x86_64"
    enabled: bool = True
    disabled_reason: str | None = None
    aggregates: Mapping[str, object] = field(default_factory=dict)
    # Seconds since the epoch of the last heartbeat, or None if never seen.
    last_heartbeat: float | None = None
    generation: int = 0
    inventories: dict[str, InventoryState] = field(default_factory=dict)
    # Derived from ``inventories`` by ``refresh()``, in RESOURCE_ORDER, for the hot loops:
    # (headroom, min_unit) per class, headroom = min(floor(capacity) - used, max_unit), so that
    # for whole amounts ``min_unit <= requested <= headroom`` is exactly the fit rule; -1 when
    # the host has no inventory of the class. And the free capacity per class (floats, 0 if
    # absent), read by the weighers.
    limits: tuple[int, ...] = ()
    free_vcpu: float = 0.0
    free_memory_mb: float = 0.0
    free_disk_gb: float = 0.0

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Recompute ``limits`` and the ``free_*`` fields after ``inventories`` changed."""
        limits: list[int] = []
        free: list[float] = []
        for rc in RESOURCE_ORDER:
            inv = self.inventories.get(rc)
            if inv is None:
                limits += [-1, 1]
                free.append(0.0)
            else:
                limits += [min(math.floor(inv.capacity) - inv.used, inv.max_unit), inv.min_unit]
                free.append(inv.capacity - inv.used)
        self.limits = tuple(limits)
        self.free_vcpu, self.free_memory_mb, self.free_disk_gb = free


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All hosts at one instant, plus that instant (for heartbeat freshness)."""

    hosts: list[HostState]
    now: float
    host_down_after_seconds: float = 60.0


# A prepared per-host check: returns a reason code to refuse the host, None to keep it.
HostCheck = Callable[[HostState], str | None]


class Filter(Protocol):
    """A hard constraint. ``prepare`` returns None when it does not apply to this request."""

    name: str

    def prepare(self, spec: RequestSpec, snapshot: Snapshot) -> HostCheck | None: ...


# A prepared per-host raw score (higher is better before the multiplier is applied).
HostScore = Callable[[HostState], float]


class Weigher(Protocol):
    """A preference. ``prepare`` returns None when it does not apply to this request."""

    name: str

    def prepare(self, spec: RequestSpec) -> HostScore | None: ...
