"""Spread (positive multiplier) or pack (negative multiplier) by free RAM and free vCPU."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from operator import attrgetter, getitem

from scheduler.framework import MEMORY_MB, VCPU, HostState, RequestSpec


class FreeScore:
    """A host's free capacity of one resource class; :meth:`many` scores a whole list
    without a Python call per host (the pipeline uses it: every request weighs every host)."""

    __slots__ = ("resource_class",)

    def __init__(self, resource_class: str) -> None:
        self.resource_class = resource_class

    def __call__(self, host: HostState) -> float:
        return host.free[self.resource_class]

    def many(self, hosts: Sequence[HostState]) -> list[float]:
        """``[self(h) for h in hosts]``, in C-level ``map``s."""
        return list(map(getitem, map(_FREE, hosts), repeat(self.resource_class, len(hosts))))


_FREE = attrgetter("free")


class FreeResourceWeigher:
    """Raw score: the free capacity of one resource class (``capacity - used``; 0 if absent),
    precomputed by ``HostState.refresh``."""

    def __init__(self, name: str, resource_class: str) -> None:
        self.name = name
        self.resource_class = resource_class

    def prepare(self, spec: RequestSpec) -> FreeScore:
        """Always applies."""
        return FreeScore(self.resource_class)


def ram_weigher() -> FreeResourceWeigher:
    """Free MEMORY_MB."""
    return FreeResourceWeigher("ram", MEMORY_MB)


def cpu_weigher() -> FreeResourceWeigher:
    """Free VCPU."""
    return FreeResourceWeigher("cpu", VCPU)
