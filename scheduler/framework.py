"""The scheduler's vocabulary: the request, the host snapshot, plugin protocols, reason codes.

Everything here is plain data. Filters and weighers are pure functions over it: no I/O, no
clock, no randomness (the pipeline seeds its one tie-break from the request id).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import ge
from typing import Protocol

from scheduler.capacity import capacity, fit_bounds
from scheduler.resources import DISK_GB as DISK_GB
from scheduler.resources import MEMORY_MB as MEMORY_MB
from scheduler.resources import NAMES
from scheduler.resources import VCPU as VCPU

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
DEGRADED = "degraded"


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
    # Amount per resource class (``scheduler.resources``); only classes actually requested.
    resources: Mapping[str, int]
    image_min_ram: int = 0
    image_min_disk: int = 0
    image_architecture: str | None = None
    # Flavor extra_specs: every key/value must be among the host's aggregate tags.
    extra_specs: Mapping[str, object] = field(default_factory=dict)
    availability_zone: str | None = None
    server_group: ServerGroupSpec | None = None
    # Seeds the tie-break: the same request on the same snapshot picks the same host.
    request_id: str = ""

    def amount(self, resource_class: str) -> int:
        """The amount requested of ``resource_class`` (0 if not requested)."""
        return self.resources.get(resource_class, 0)


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
    # Seconds since the epoch when the agent's reconcile loop last completed a pass (as the
    # API saw its pass count move), or None if the agent never reported its progress.
    last_progress: float | None = None
    generation: int = 0
    inventories: dict[str, InventoryState] = field(default_factory=dict)
    # Derived from ``inventories`` by ``refresh()``: the free capacity per resource class
    # (``capacity - used``; 0.0 for a class the host has none of), read by the weighers.
    free: dict[str, float] = field(default_factory=dict, init=False, compare=False)
    # For ``fit_check`` only: per class of the registry, in its order, ``(high, -low)`` of
    # ``scheduler.capacity.fit_bounds`` ((-1, -1) without an inventory), flattened so one
    # C-level ``map(ge, ...)`` tests every class at once. Always a new tuple per ``refresh``:
    # the resources filter remembers verdicts by this tuple's identity.
    _fit: tuple[int, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Recompute ``free`` and the fit bounds after ``inventories`` changed."""
        free: dict[str, float] = {}
        bounds: list[int] = []
        for rc in NAMES:
            inv = self.inventories.get(rc)
            if inv is None:
                free[rc] = 0.0
                bounds += (-1, -1)
            else:
                free[rc] = inv.capacity - inv.used
                low, high = fit_bounds(inv.used, inv.total, inv.reserved, inv.allocation_ratio,
                                       inv.min_unit, inv.max_unit)
                bounds += (high, -low)
        self.free = free
        self._fit = tuple(bounds)


def fit_check(resources: Mapping[str, int]) -> Callable[[HostState], bool]:
    """A per-host test of the fit rule for every class in ``resources`` at once.

    Per requested class ``high >= amount`` and ``-low >= -amount`` (``low <= amount <= high``,
    ``scheduler.capacity.fit_bounds``); a class not requested gets bounds that always pass.
    """
    never, always = -(10**18), 10**18
    wanted: list[int] = []
    for rc in NAMES:
        amount = resources.get(rc)
        wanted += (never, -always) if amount is None else (amount, -amount)
    unknown = set(resources) - set(NAMES)
    if unknown:
        # A class outside the registry has no inventory anywhere: nothing fits.
        return lambda _host: False
    vector = tuple(wanted)

    def fits(host: HostState) -> bool:
        return all(map(ge, host._fit, vector))

    return fits


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All hosts at one instant, plus that instant (for heartbeat freshness)."""

    hosts: list[HostState]
    now: float
    host_down_after_seconds: float = 60.0
    host_degraded_after_seconds: float = 300.0


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
