"""Spread (positive multiplier) or pack (negative multiplier) by free RAM and free vCPU."""

from __future__ import annotations

from scheduler.framework import MEMORY_MB, VCPU, HostScore, HostState, RequestSpec


class FreeResourceWeigher:
    """Raw score: the free capacity of one resource class (``capacity - used``; 0 if absent),
    precomputed by ``HostState.refresh``."""

    def __init__(self, name: str, resource_class: str) -> None:
        self.name = name
        self.resource_class = resource_class

    def prepare(self, spec: RequestSpec) -> HostScore:
        """Always applies."""
        rc = self.resource_class

        def score(host: HostState) -> float:
            return host.free[rc]

        return score


def ram_weigher() -> FreeResourceWeigher:
    """Free MEMORY_MB."""
    return FreeResourceWeigher("ram", MEMORY_MB)


def cpu_weigher() -> FreeResourceWeigher:
    """Free VCPU."""
    return FreeResourceWeigher("cpu", VCPU)
