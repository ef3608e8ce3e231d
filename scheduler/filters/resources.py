"""Resources fit: every requested resource class passes the fit rule (``scheduler.capacity``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from itertools import compress
from operator import attrgetter, is_not

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
        return ResourcesCheck(tuple(spec.resources.items()))


Reasons = list[tuple[str, int, str, str]]


class ResourcesCheck:
    """The prepared test of one request; :meth:`many` checks a whole host list (the pipeline
    uses it) and re-tests only the hosts whose fit bounds changed since the last list it
    checked for the same request shape (:class:`VerdictMemo`)."""

    __slots__ = ("fits", "key", "reasons")

    def __init__(self, requested: tuple[tuple[str, int], ...]) -> None:
        self.key = requested
        self.fits = fit_check(dict(requested))
        self.reasons: Reasons = [(rc, amount, not_enough(rc), unit_limit(rc))
                                 for rc, amount in requested]

    def __call__(self, host: HostState) -> str | None:
        return None if self.fits(host) else _reason(host, self.reasons)

    def many(self, hosts: Sequence[HostState]) -> list[str | None]:
        """``[self(h) for h in hosts]``, reusing the verdicts of unchanged fit bounds."""
        return _MEMO.verdicts(self.key, hosts, self)


def _reason(host: HostState, reasons: Reasons) -> str:
    """The named reason of a refused host: the first requested class that fails (its capacity
    first, then its unit limits)."""
    for rc, amount, short, outside in reasons:
        inv = host.inventories.get(rc)
        if inv is None or inv.used + amount > inv.capacity:
            return short
        if amount < inv.min_unit or amount > inv.max_unit:
            return outside
    return not_enough(reasons[0][0]) if reasons else "resources"


_FIT = attrgetter("_fit")


class VerdictMemo:
    """The last host list's verdicts per request shape, keyed by the hosts' fit bounds.

    A verdict is a function of the request shape and a host's ``_fit`` tuple alone, and
    ``HostState.refresh`` always builds a new tuple. So where the n-th host of a list holds the
    very tuple the n-th host held last time (an identity test, in one C-level pass), its
    verdict is the remembered one; only the others are tested again. A placement service
    that keeps its snapshot between requests (only the claimed host changes) thus tests one
    host instead of every host. The answer is always the one a fresh check gives.
    """

    # Request shapes remembered (flavors in use); the oldest is dropped beyond this.
    SHAPES = 64

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[tuple[tuple[str, int], ...],
                         tuple[list[tuple[int, ...]], list[str | None]]] = {}

    def verdicts(self, key: tuple[tuple[str, int], ...], hosts: Sequence[HostState],
                 check: Callable[[HostState], str | None]) -> list[str | None]:
        """``[check(h) for h in hosts]`` for the request shape ``key``."""
        bounds: list[tuple[int, ...]] = list(map(_FIT, hosts))
        with self._lock:
            last = self._last.get(key)
        if last is not None and len(last[0]) == len(bounds):
            seen, verdicts = last
            changed = list(compress(range(len(bounds)), map(is_not, bounds, seen)))
            if len(changed) * 4 <= len(bounds):
                verdicts = list(verdicts)  # the remembered list is shared: copy it
                for i in changed:
                    verdicts[i] = check(hosts[i])
            else:
                verdicts = list(map(check, hosts))
        else:
            verdicts = list(map(check, hosts))
        with self._lock:
            self._last.pop(key, None)
            self._last[key] = (bounds, verdicts)
            if len(self._last) > self.SHAPES:
                del self._last[next(iter(self._last))]
        return verdicts


_MEMO = VerdictMemo()
