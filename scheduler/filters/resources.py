"""Resources fit: every requested resource class passes the fit rule (``scheduler.capacity``)."""

from __future__ import annotations

from scheduler.framework import HostCheck, HostState, RequestSpec, Snapshot, not_enough, unit_limit


class ResourcesFilter:
    """Refuses a host with ``not_enough_<RC>`` or ``unit_limit_<RC>`` for the first failing class.

    The test is the fit rule with the capacity precomputed per inventory:
    ``used + requested <= capacity`` and ``min_unit <= requested <= max_unit``.
    A host without an inventory of a requested class has none of it: ``not_enough``.
    """

    name = "resources"

    def prepare(self, spec: RequestSpec, snapshot: Snapshot) -> HostCheck:
        """Always applies (a request always asks for some vCPU and RAM)."""
        wanted = [(rc, amount, not_enough(rc), unit_limit(rc))
                  for rc, amount in spec.resources.items()]

        def check(host: HostState) -> str | None:
            inventories = host.inventories
            for rc, amount, short, outside in wanted:
                inv = inventories.get(rc)
                if inv is None or inv.used + amount > inv.capacity:
                    return short
                if amount < inv.min_unit or amount > inv.max_unit:
                    return outside
            return None

        return check
