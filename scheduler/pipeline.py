"""filter -> weigh -> normalize -> pick: a pure function over a snapshot.

The order of the filters is the order of this list, cheapest and most selective first, and it
is also how refusals are attributed: a host is refused by the first filter that rejects it.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import add, attrgetter, eq, ge, gt, mul, sub
from typing import Any

from scheduler.filters.aggregates import AggregatesFilter
from scheduler.filters.availability_zone import AvailabilityZoneFilter
from scheduler.filters.image import ImageFilter
from scheduler.filters.progress import HostProgressFilter
from scheduler.filters.resources import ResourcesFilter
from scheduler.filters.server_group import ServerGroupFilter
from scheduler.filters.status import HostStatusFilter
from scheduler.framework import Filter, HostState, RequestSpec, Snapshot, Weigher
from scheduler.weighers.resources import cpu_weigher, ram_weigher
from scheduler.weighers.server_group import SoftAffinityWeigher, SoftAntiAffinityWeigher

FILTERS: tuple[Filter, ...] = (
    HostStatusFilter(),        # 1. two attribute reads: drops disabled and silent hosts early
    HostProgressFilter(),      # 2. one compare: drops hosts whose agent loop is stuck
    ResourcesFilter(),         # 3. the fit rule for each requested resource class
    AvailabilityZoneFilter(),  # 4. one string compare, only when a zone is requested
    ServerGroupFilter(),       # 5. hard affinity / anti-affinity, only for such groups
    ImageFilter(),             # 6. image minimums and CPU architecture
    AggregatesFilter(),        # 7. flavor extra_specs vs host tags: a dict walk, so last
)

WEIGHERS: tuple[Weigher, ...] = (
    ram_weigher(),
    cpu_weigher(),
    SoftAffinityWeigher(),
    SoftAntiAffinityWeigher(),
)

# Two totals closer than this are a tie (they come from sums of normalized floats).
TIE = 1e-9
TOP = 5
_ID = attrgetter("id")


FILTER_NAMES = tuple(f.name for f in FILTERS)
WEIGHER_NAMES = tuple(w.name for w in WEIGHERS)


class UnknownWeigher(ValueError):
    """A multiplier names no weigher, or a weigher has no multiplier and there is no default."""


class Multipliers:
    """Weigher multipliers keyed by weigher plugin name, with a default for the unnamed ones.

    Negative resource multipliers pack instead of spread; 0 switches a weigher off. Validated
    when built: a name that is not a weigher of ``WEIGHERS``, or (with ``default=None``) a
    weigher left without a multiplier, raises ``UnknownWeigher`` naming it, so a typo in the
    configuration fails at startup instead of silently weighing 0.
    """

    __slots__ = ("_by_name",)

    def __init__(self, by_name: Mapping[str, float] | None = None, *,
                 default: float | None = 1.0) -> None:
        given = dict(by_name or {})
        unknown = sorted(set(given) - set(WEIGHER_NAMES))
        if unknown:
            raise UnknownWeigher(
                f"weigher multiplier(s) for unknown weigher(s) {', '.join(unknown)}; "
                f"the weighers are {', '.join(WEIGHER_NAMES)}")
        missing = [name for name in WEIGHER_NAMES if name not in given]
        if missing and default is None:
            raise UnknownWeigher(
                f"no multiplier for weigher(s) {', '.join(missing)} and no default multiplier")
        self._by_name = {name: float(given.get(name, default or 0.0)) for name in WEIGHER_NAMES}

    def of(self, weigher: str) -> float:
        """The multiplier of ``weigher``; raises UnknownWeigher for a name not in WEIGHERS."""
        try:
            return self._by_name[weigher]
        except KeyError:
            raise UnknownWeigher(f"no weigher named {weigher!r}") from None

    def as_dict(self) -> dict[str, float]:
        """Every weigher's multiplier, by name."""
        return dict(self._by_name)


@dataclass(slots=True)
class Decision:
    """The outcome of one pipeline run: the pick, the runners-up, and why others were refused."""

    host: HostState | None
    # The pick first, then the next best by score: claim fallbacks and the recorded breakdown.
    ranked: list[HostState]
    hosts: int
    candidates: int
    refusals: Counter[str] = field(default_factory=Counter)
    # Filter plugin name -> hosts it refused (each refused host counts for the first filter
    # that refused it, in FILTERS order).
    refusals_by_filter: Counter[str] = field(default_factory=Counter)
    # host id -> reason code, for every refused host.
    refused: dict[str, str] = field(default_factory=dict)
    # host id -> {"total": ..., weigher: weighted normalized score} for the ranked hosts.
    scores: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready record of the decision (for the server's events)."""
        return {
            "host_id": self.host.id if self.host else None,
            "hosts": self.hosts,
            "candidates": self.candidates,
            "refusals": dict(self.refusals),
            "refusals_by_filter": dict(self.refusals_by_filter),
            "top": [{"host_id": h.id, "host": h.name, **self.scores.get(h.id, {})}
                    for h in self.ranked],
        }


def scale(values: list[float], multiplier: float = 1.0) -> tuple[float, float]:
    """(low, factor) so that ``(v - low) * factor`` is ``multiplier`` times v normalized to
    [0, 1] by min/max; all values equal -> factor 0 (the weigher has no opinion)."""
    low, high = min(values), max(values)
    return low, (multiplier / (high - low) if high > low else 0.0)


def normalize(values: list[float]) -> list[float]:
    """``values`` scaled to [0, 1] by min/max, as the pipeline weighs them."""
    low, factor = scale(values)
    return [(v - low) * factor for v in values]


def largest(totals: list[float], count: int) -> list[tuple[float, int]]:
    """The ``count`` largest ``(total, index)`` pairs, largest first: the same list as
    ``heapq.nlargest(count, zip(totals, range(len(totals))))`` (equal totals: the higher
    index first), found in C-level passes instead of a Python loop over every host."""
    n = len(totals)
    if n <= count:
        return sorted(zip(totals, range(n), strict=True), reverse=True)
    kth = sorted(totals)[n - count]  # the count-th largest total
    # Every pair with a total above kth is among the largest (fewer than count of them); the
    # rest are the highest indices among those equal to kth.
    above = list(compress(range(n), map(gt, totals, repeat(kth))))
    equal = list(compress(range(n), map(eq, totals, repeat(kth))))
    chosen = above + equal[len(equal) - (count - len(above)):]
    return sorted(zip(map(totals.__getitem__, chosen), chosen, strict=True), reverse=True)


def filter_hosts(spec: RequestSpec, snapshot: Snapshot
                 ) -> tuple[list[HostState], dict[str, str], Counter[str]]:
    """Run the filters in order; return the survivors, host id -> reason of the refused, and
    how many hosts each filter (by plugin name) refused."""
    survivors = snapshot.hosts
    refused: dict[str, str] = {}
    by_filter: Counter[str] = Counter()
    for flt in FILTERS:
        check = flt.prepare(spec, snapshot)
        if check is None:
            continue
        # A check may offer ``many`` (one call for the whole list, like a weigher's score).
        many = getattr(check, "many", None)
        reasons: list[str | None] = (many(survivors) if many is not None
                                     else list(map(check, survivors)))
        kept = reasons.count(None)
        if kept == len(reasons):
            continue
        by_filter[flt.name] += len(reasons) - kept
        for host, reason in zip(survivors, reasons, strict=True):
            if reason is not None:
                refused[host.id] = reason
        survivors = [host for host, reason in zip(survivors, reasons, strict=True)
                     if reason is None]
    return survivors, refused, by_filter


def decide(spec: RequestSpec, snapshot: Snapshot,
           multipliers: Multipliers | None = None) -> Decision:
    """Choose a host for ``spec`` in ``snapshot``; ``Decision.host`` is None when none fits."""
    multipliers = multipliers or Multipliers()
    candidates, refused, by_filter = filter_hosts(spec, snapshot)
    decision = Decision(host=None, ranked=[], hosts=len(snapshot.hosts),
                        candidates=len(candidates), refusals=Counter(refused.values()),
                        refusals_by_filter=by_filter, refused=refused)
    if not candidates:
        return decision

    totals: list[float] | None = None
    # (weigher, raw scores, min, multiplier / (max - min)): the weighted normalized score of
    # host i is (raw[i] - min) * factor; only the ranked hosts' breakdown is ever spelled out.
    parts: list[tuple[str, list[float], float, float]] = []
    if len(candidates) > 1:
        for weigher in WEIGHERS:
            multiplier = multipliers.of(weigher.name)
            score = weigher.prepare(spec) if multiplier else None
            if score is None:
                continue
            # A weigher's score may offer ``many`` (one call for the whole list).
            many = getattr(score, "many", None)
            raw = many(candidates) if many is not None else list(map(score, candidates))
            low, factor = scale(raw, multiplier)
            parts.append((weigher.name, raw, low, factor))
            if not factor:
                continue  # every host scores 0: nothing to add
            # (v - low) * factor per host, added up weigher by weigher, in C-level maps.
            weighted = map(mul, map(sub, raw, repeat(low)), repeat(factor))
            totals = list(weighted) if totals is None else list(map(add, totals, weighted))
    if totals is None:
        totals = [0.0] * len(candidates)

    # Tie-break: among the hosts sharing the best total, a choice seeded by the request id, over
    # hosts in id order, so replaying the request on the same snapshot picks the same host.
    top = largest(totals, TOP + 1)
    threshold = top[0][0] - TIE
    if top[-1][0] >= threshold and len(totals) > len(top):
        # Many ties: every index whose total reaches the threshold, in index order.
        tied_ids = list(compress(range(len(totals)), map(ge, totals, repeat(threshold))))
    else:
        tied_ids = [i for t, i in top if t >= threshold]
    # Sorted with a C-level key (the ids by index): many hosts tie in an evenly filled pool.
    tied = sorted(tied_ids, key=list(map(_ID, candidates)).__getitem__) \
        if len(tied_ids) > 1 else tied_ids
    pick = random.Random(spec.request_id).choice(tied)
    others = [i for _, i in top if i != pick]
    order = [pick, *others][:TOP]
    decision.host = candidates[pick]
    decision.ranked = [candidates[i] for i in order]
    decision.scores = {
        candidates[i].id: {"total": round(totals[i], 6),
                           **{name: round((raw[i] - low) * factor, 6)
                              for name, raw, low, factor in parts}}
        for i in order
    }
    return decision
