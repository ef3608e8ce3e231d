"""The scaling decision: a pure function of a group's state, its members' metrics and the time.

No database, no clock, no I/O: the reconciler (``api.scaling.reconciler``) reads the state,
calls :func:`decide` and :func:`scale_in_victims`, and writes what they return. The rules and
their defaults are documented in docs/scaling.md; in the order they apply:

1. **Scheduled actions** (cron, UTC) whose latest fire time falls after the last check set
   min, max and/or desired, oldest fire time first.
2. **Target tracking**: ``proposal = ceil(ready x observed / target)`` where ``observed`` is the
   average metric of the *ready* members (past their warm-up, with samples in the window).
   Inside the tolerance band (``|observed / target - 1| <= tolerance``) the proposal is the
   current desired.
3. **Warm-up**: a member younger than ``warmup_s`` is not ready: its metrics are ignored and
   it is not in ``ready`` (the proposal counts the load of the ready members only, so a
   member still booting is neither double-counted nor taken for an idle one); while one
   warms up, no scale-in happens (its load is not known yet).
4. **Scale-out cooldown**: no scale-out within ``scale_out_cooldown_s`` of the last one.
5. **Scale-in stabilisation** (the Kubernetes HPA's rule): the group scales in only to the
   highest proposal of the last ``scale_in_stabilization_s``.
6. **Clamping** to ``[min, max]``.

Scale-in protection is the victims' rule: :func:`scale_in_victims` never names a protected
member.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from croniter import croniter

ScaleInPolicy = Literal["oldest_first", "newest_first"]

DEFAULT_TOLERANCE = 0.1
DEFAULT_SCALE_OUT_COOLDOWN_S = 60
DEFAULT_SCALE_IN_STABILIZATION_S = 300
DEFAULT_WARMUP_S = 120
DEFAULT_METRIC_WINDOW_S = 60


@dataclass(frozen=True)
class TargetTracking:
    """Keep the average of ``metric`` over the ready members near ``target``."""

    target: float
    metric: str = "cpu_util"
    tolerance: float = DEFAULT_TOLERANCE
    scale_out_cooldown_s: int = DEFAULT_SCALE_OUT_COOLDOWN_S
    scale_in_stabilization_s: int = DEFAULT_SCALE_IN_STABILIZATION_S
    warmup_s: int = DEFAULT_WARMUP_S
    window_s: int = DEFAULT_METRIC_WINDOW_S


@dataclass(frozen=True)
class ScheduledAction:
    """At every fire time of ``cron`` (UTC), set whichever of min/max/desired is given."""

    name: str
    cron: str
    min_size: int | None = None
    max_size: int | None = None
    desired: int | None = None


@dataclass(frozen=True)
class Member:
    """A live member as the decision sees it."""

    server_id: str
    seq: int
    created_at: datetime
    protected: bool = False


@dataclass(frozen=True)
class GroupState:
    """What the decision needs of a group."""

    min_size: int
    max_size: int
    desired: int
    members: Sequence[Member] = ()
    policy: TargetTracking | None = None
    schedules: Sequence[ScheduledAction] = ()
    # (time, proposal) of the target tracking proposals within the stabilisation window.
    recommendations: Sequence[tuple[datetime, int]] = ()
    last_scale_out_at: datetime | None = None
    # The schedules fired up to this time (None: a new group, nothing fires on its first pass).
    schedule_checked_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    """The new min/max/desired, the rules that decided it and the state to keep."""

    min_size: int
    max_size: int
    desired: int
    rule: str
    reasons: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict)
    recommendations: tuple[tuple[datetime, int], ...] = ()
    last_scale_out_at: datetime | None = None
    schedule_checked_at: datetime | None = None


def valid_cron(expression: str) -> bool:
    """Whether ``expression`` is a five-field cron expression croniter understands."""
    return len(expression.split()) == 5 and croniter.is_valid(expression)


def _fired(schedules: Sequence[ScheduledAction], since: datetime,
           now: datetime) -> list[tuple[datetime, ScheduledAction]]:
    """Actions whose latest fire time is in (since, now], oldest first."""
    fired = []
    for action in schedules:
        last: datetime = croniter(action.cron, now).get_prev(datetime)
        # croniter returns ``now`` itself as the previous fire time only when it is one.
        if since < last <= now:
            fired.append((last, action))
    return sorted(fired, key=lambda item: (item[0], item[1].name))


def _apply_schedules(state: GroupState, now: datetime,
                     reasons: list[str], details: dict[str, Any]) -> GroupState:
    if state.schedule_checked_at is None:
        return state
    fired = _fired(state.schedules, state.schedule_checked_at, now)
    low, high, desired = state.min_size, state.max_size, state.desired
    for at, action in fired:
        if action.min_size is not None:
            low = action.min_size
            high = max(high, low)  # a raised minimum lifts a lower maximum with it
        if action.max_size is not None:
            high = action.max_size
            low = min(low, high)
        if action.desired is not None:
            desired = action.desired
        reasons.append(f"scheduled action {action.name!r} ({action.cron}) fired at "
                       f"{at.isoformat()}: min {low}, max {high}, desired {desired}")
    if fired:
        details["scheduled_actions"] = [a.name for _, a in fired]
    return replace(state, min_size=low, max_size=high, desired=desired)


def _proposal(state: GroupState, policy: TargetTracking, metrics: Mapping[str, float],
              now: datetime, reasons: list[str], details: dict[str, Any]) -> tuple[int, str]:
    """Target tracking's proposal for ``desired`` and the rule that settled it."""
    warm_after = timedelta(seconds=policy.warmup_s)
    warming = [m for m in state.members if now - m.created_at < warm_after]
    ready = [m for m in state.members
             if now - m.created_at >= warm_after and m.server_id in metrics]
    details.update(metric=policy.metric, target=policy.target, ready=len(ready),
                   warming=len(warming), members=len(state.members))
    if not ready:
        reasons.append(f"no member past its warm-up reports {policy.metric}: hold")
        return state.desired, "no_metrics"
    observed = sum(metrics[m.server_id] for m in ready) / len(ready)
    ratio = observed / policy.target
    details.update(observed=round(observed, 3), ratio=round(ratio, 4),
                   values={m.server_id: round(metrics[m.server_id], 3) for m in ready})
    if abs(round(ratio - 1, 9)) <= policy.tolerance:  # 55 / 50 is 10 %, not 10.000...09 %
        reasons.append(f"average {policy.metric} {observed:.1f} is within "
                       f"{policy.tolerance:.0%} of the target {policy.target:g}: hold")
        return state.desired, "tolerance"
    # round() first: 3 x 50 / 50 must stay 3, not become 4 through 3.0000000000000004.
    proposal = math.ceil(round(len(ready) * ratio, 9))
    details["proposal"] = proposal
    reasons.append(f"ceil({len(ready)} ready x {observed:.1f} / {policy.target:g}) "
                   f"= {proposal}")
    return proposal, "target_tracking"


def decide(state: GroupState, metrics: Mapping[str, float], now: datetime) -> Decision:
    """The group's new min/max/desired at ``now``, given each ready member's average metric.

    ``metrics`` maps server ids to the average of the policy's metric over its window (members
    without samples are absent). Pure: the same arguments always give the same decision.
    """
    reasons: list[str] = []
    details: dict[str, Any] = {}
    state = _apply_schedules(state, now, reasons, details)
    rule = "schedule" if reasons else "hold"
    desired = state.desired
    history = tuple(state.recommendations)
    last_out = state.last_scale_out_at
    policy = state.policy
    if policy is not None:
        proposal, rule = _proposal(state, policy, metrics, now, reasons, details)
        window = timedelta(seconds=policy.scale_in_stabilization_s)
        if rule != "no_metrics":
            history = (*[(t, v) for t, v in history if now - t < window], (now, proposal))
        warming = details["warming"]
        if proposal > desired:
            cooling = (last_out is not None
                       and now - last_out < timedelta(seconds=policy.scale_out_cooldown_s))
            if cooling:
                assert last_out is not None
                rule = "cooldown"
                reasons.append(f"scale-out cooldown: the last scale-out was at "
                               f"{last_out.isoformat()}, {policy.scale_out_cooldown_s} s "
                               "not yet passed: hold")
            else:
                desired = proposal
        elif proposal < desired:
            if warming:
                rule = "warmup"
                reasons.append(f"{warming} member(s) warming up: no scale-in until their "
                               "load is known")
            else:
                highest = max(v for _, v in history)
                details["stabilized"] = highest
                if highest >= desired:
                    rule = "stabilization"
                    reasons.append(f"the highest proposal of the last "
                                   f"{policy.scale_in_stabilization_s} s is {highest}: hold")
                else:
                    desired = highest
                    if highest > proposal:
                        rule = "stabilization"
                        reasons.append(f"scale in only to {highest}, the highest proposal "
                                       f"of the last {policy.scale_in_stabilization_s} s")
    if rule != "schedule" and reasons and desired == state.desired and details.get(
            "scheduled_actions"):
        rule = "schedule"  # the policy held: what changed (min/max) came from a schedule
    clamped = min(max(desired, state.min_size), state.max_size)
    if clamped != desired:
        rule = "clamp_min" if clamped > desired else "clamp_max"
        reasons.append(f"{desired} clamped to {clamped} (min {state.min_size}, "
                       f"max {state.max_size})")
        desired = clamped
    if policy is not None and desired > state.desired:
        last_out = now
    if not reasons:
        reasons.append("no policy or schedule changes desired: hold")
    return Decision(state.min_size, state.max_size, desired, rule, tuple(reasons), details,
                    history, last_out, now)


def scale_in_victims(members: Sequence[Member], count: int,
                     policy: ScaleInPolicy = "oldest_first") -> list[Member]:
    """The ``count`` members to remove by ``policy`` (by creation, then sequence number),
    never a protected one: fewer when not enough are unprotected."""
    candidates = sorted((m for m in members if not m.protected),
                        key=lambda m: (m.created_at, m.seq),
                        reverse=policy == "newest_first")
    return candidates[:max(count, 0)]
