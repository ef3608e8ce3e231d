"""The resource classes, declared once.

Every table, view and check that deals in resource classes iterates ``RESOURCE_CLASSES``: the
scheduler's host state and fit checks, the claim, the snapshot, the hosts view, the pool-wide
allocation ratios and the quotas. Adding a class is one entry here (plus, if it needs them, a
Settings field for its pool-wide ratio, a server/flavor column that requests it and a quota
default; see docs/scheduling.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

VCPU, MEMORY_MB, DISK_GB = "VCPU", "MEMORY_MB", "DISK_GB"


@dataclass(frozen=True, slots=True)
class ResourceClass:
    """One resource class: what it is called, counted in, and where its numbers live."""

    name: str
    unit: str
    # The pool-wide allocation ratio when the Settings field below is not set.
    default_allocation_ratio: float
    # The Settings field holding the pool-wide ratio (an inventory's own ratio wins over it).
    ratio_setting: str
    # The server and flavor attribute with the amount a server requests (and holds).
    request_field: str
    # The quota resource the requested amount counts against.
    quota_key: str


RESOURCE_CLASSES: tuple[ResourceClass, ...] = (
    ResourceClass(VCPU, "vCPU", 4.0, "cpu_allocation_ratio", "vcpus", "vcpus"),
    ResourceClass(MEMORY_MB, "MB", 1.0, "ram_allocation_ratio", "ram_mb", "ram_mb"),
    ResourceClass(DISK_GB, "GB", 1.0, "disk_allocation_ratio", "disk_gb", "disk_gb"),
)

BY_NAME: Mapping[str, ResourceClass] = {rc.name: rc for rc in RESOURCE_CLASSES}
NAMES: tuple[str, ...] = tuple(BY_NAME)


def default_ratio(name: str) -> float:
    """The registry's default allocation ratio of ``name`` (1.0 for an unknown class)."""
    rc = BY_NAME.get(name)
    return rc.default_allocation_ratio if rc is not None else 1.0


def pool_ratios(settings: object) -> dict[str, float]:
    """The pool-wide allocation ratio of every class, read from a settings object's
    ``ratio_setting`` fields (the registry default where the object has no such field)."""
    return {rc.name: float(getattr(settings, rc.ratio_setting, rc.default_allocation_ratio))
            for rc in RESOURCE_CLASSES}


def requested(source: object) -> dict[str, int]:
    """The amounts ``source`` (a server, a flavor, any object with the registry's request
    fields) requests, by class; a zero amount is not requested at all."""
    amounts = {rc.name: int(getattr(source, rc.request_field) or 0) for rc in RESOURCE_CLASSES}
    return {name: amount for name, amount in amounts.items() if amount > 0}
