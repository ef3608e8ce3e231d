"""Resources fit: every requested resource class passes the fit rule (``scheduler.capacity``)."""

from __future__ import annotations

from scheduler.framework import (
    HostCheck,
    HostState,
    RequestSpec,
    Snapshot,
    fit_check,
    not_enough,
    unit_limit,
)


class ResourcesFilter:
    """Refuses a host with ``not_enough_<RC>`` or ``unit_limit_<RC>`` for the first failing class.

    The test is ``framework.fit_check``: the fit rule per requested class, solved once per
    host (``scheduler.capacity.fit_bounds``). A host without an inventory of a requested class
    has none of it: ``not_enough``.
    """

    name = "resources"

    def prepare(self, spec: RequestSpec, snapshot: Snapshot) -> HostCheck:
        """Always applies (a request always asks for some vCPU and RAM)."""
        fits = fit_check(spec.resources)
        reasons = [(rc, amount, not_enough(rc), unit_limit(rc))
                   for rc, amount in spec.resources.items()]

        def check(host: HostState) -> str | None:
            return None if fits(host) else _reason(host, reasons)

        return check


def _reason(host: HostState, reasons: list[tuple[str, int, str, str]]) -> str:
    """The named reason of a refused host: the first requested class that fails (its capacity
    first, then its unit limits)."""
    for rc, amount, short, outside in reasons:
        inv = host.inventories.get(rc)
        if inv is None or inv.used + amount > inv.capacity:
            return short
        if amount < inv.min_unit or amount > inv.max_unit:
            return outside
    return not_enough(reasons[0][0]) if reasons else "resources"
