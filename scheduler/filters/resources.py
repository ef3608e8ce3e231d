"""Resources fit: every requested resource class passes the fit rule (``scheduler.capacity``)."""

from __future__ import annotations

from scheduler.framework import (
    RESOURCE_ORDER,
    HostCheck,
    HostState,
    RequestSpec,
    Snapshot,
    not_enough,
    unit_limit,
)


class ResourcesFilter:
    """Refuses a host with ``not_enough_<RC>`` or ``unit_limit_<RC>`` for the first failing class.

    The test is the fit rule with the capacity precomputed per inventory:
    ``used + requested <= capacity`` and ``min_unit <= requested <= max_unit``.
    A host without an inventory of a requested class has none of it: ``not_enough``.
    """

    name = "resources"

    def prepare(self, spec: RequestSpec, snapshot: Snapshot) -> HostCheck:
        """Always applies (a request always asks for some vCPU and RAM)."""
        wanted = spec.resources
        # Fast path on HostState.limits: per class ``headroom >= need`` and ``need >= min_unit``
        # with headroom = min(floor(capacity) - used, max_unit). A class not requested gets
        # bounds that always pass.
        never, always = -(10**18), 10**18
        v_hi, r_hi, d_hi = (wanted.get(rc, never) for rc in RESOURCE_ORDER)
        v_lo, r_lo, d_lo = (wanted.get(rc, always) for rc in RESOURCE_ORDER)
        reasons = [(rc, amount, not_enough(rc), unit_limit(rc)) for rc, amount in wanted.items()]

        def check(host: HostState) -> str | None:
            lim = host.limits
            if (lim[0] >= v_hi and lim[2] >= r_hi and lim[4] >= d_hi
                    and v_lo >= lim[1] and r_lo >= lim[3] and d_lo >= lim[5]):
                return None
            return _reason(host, reasons)

        return check


def _reason(host: HostState, reasons: list[tuple[str, int, str, str]]) -> str:
    """The named reason of a refused host: the first requested class that fails."""
    for rc, amount, short, outside in reasons:
        inv = host.inventories.get(rc)
        if inv is None or inv.used + amount > inv.capacity:
            return short
        if amount < inv.min_unit or amount > inv.max_unit:
            return outside
    raise AssertionError("limits and inventories disagree; call HostState.refresh()")
