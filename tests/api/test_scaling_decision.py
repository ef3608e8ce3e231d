"""The scaling decision (api.scaling.decision), table-driven, with the arithmetic in comments.

Every case starts from members created at T0 (long past their warm-up unless said) and is
decided at NOW; ``m(i)`` is member i, ``cpu`` maps member index -> average cpu_util.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from api.scaling.decision import (
    GroupState,
    Member,
    ScheduledAction,
    TargetTracking,
    decide,
    scale_in_victims,
    valid_cron,
)

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)
POLICY = TargetTracking(target=50, tolerance=0.1, scale_out_cooldown_s=60,
                        scale_in_stabilization_s=300, warmup_s=120)


def members(count: int, *, young: int = 0, protected: tuple[int, ...] = ()) -> list[Member]:
    """``count`` members; the last ``young`` were created 30 s ago (inside the warm-up)."""
    out = []
    for i in range(count):
        created = NOW - timedelta(seconds=30) if i >= count - young else T0 + timedelta(
            minutes=i)
        out.append(Member(f"s{i}", i + 1, created, protected=i in protected))
    return out


@dataclass
class Case:
    name: str
    desired: int
    cpu: dict[int, float]
    expect: int
    rule: str
    count: int = 0  # members (default: desired)
    young: int = 0
    min_size: int = 1
    max_size: int = 10
    history: list[tuple[int, int]] = field(default_factory=list)  # (seconds ago, proposal)
    last_out_ago: int | None = None
    policy: TargetTracking = POLICY


CASES = [
    # ceil(2 x 90 / 50) = ceil(3.6) = 4
    Case("scale out by the ratio", 2, {0: 90, 1: 90}, 4, "target_tracking"),
    # observed (80 + 40) / 2 = 60; 60 / 50 = 1.2 > 1.1; ceil(2 x 1.2) = ceil(2.4) = 3
    Case("the average of the members decides", 2, {0: 80, 1: 40}, 3, "target_tracking"),
    # 54 / 50 = 1.08: |1.08 - 1| = 0.08 <= 0.1 tolerance: hold at 2
    Case("inside the tolerance band: hold", 2, {0: 54, 1: 54}, 2, "tolerance"),
    # 56 / 50 = 1.12 > 1.1: ceil(2 x 1.12) = ceil(2.24) = 3
    Case("just outside the tolerance band", 2, {0: 56, 1: 56}, 3, "target_tracking"),
    # target 25: (33.7 + 94.9 + 96.4) / 3 = 75; 3 x 75 / 25 = 9 exactly, which floats make
    # 9.000000000000002 (a bare ceil would say 10)
    Case("exact ratios are not rounded up", 3, {0: 33.7, 1: 94.9, 2: 96.4}, 9,
         "target_tracking", policy=TargetTracking(target=25)),
    # 55 / 50 = 1.1: exactly on the 10 % edge of the band counts as inside: hold
    Case("the band's edge is inside", 2, {0: 55, 1: 55}, 2, "tolerance"),
    # ceil(2 x 100 / 50) = 4, but the last scale-out was 30 s ago < 60 s cooldown: hold at 2
    Case("scale-out cooldown", 2, {0: 100, 1: 100}, 2, "cooldown", last_out_ago=30),
    # the same 90 s after the last scale-out: cooldown over, 4
    Case("after the cooldown", 2, {0: 100, 1: 100}, 4, "target_tracking", last_out_ago=90),
    # ceil(4 x 10 / 50) = ceil(0.8) = 1, and no earlier proposal in the window: 1
    Case("scale in with an empty window", 4, {0: 10, 1: 10, 2: 10, 3: 10}, 1,
         "target_tracking"),
    # proposal ceil(4 x 10 / 50) = 1; window holds 4 (100 s ago) and 3 (50 s ago): max = 4 >= 4
    Case("stabilisation holds the scale-in", 4, {0: 10, 1: 10, 2: 10, 3: 10}, 4,
         "stabilization", history=[(100, 4), (50, 3)]),
    # window holds 3 (50 s ago) and 2; max(3, 2, 1) = 3 < 4: scale in only to 3
    Case("stabilisation scales in to the window's highest", 4, {0: 10, 1: 10, 2: 10, 3: 10}, 3,
         "stabilization", history=[(50, 3), (20, 2)]),
    # a proposal of 4 made 400 s ago is outside the 300 s window: max(1) = 1
    Case("old proposals leave the window", 4, {0: 10, 1: 10, 2: 10, 3: 10}, 1,
         "target_tracking", history=[(400, 4)]),
    # member 2 is warming up: ignored; ceil(2 ready x 100 / 50) = 4 > 3 desired: 4
    Case("a warming member's metrics are ignored", 3, {0: 100, 1: 100, 2: 0}, 4,
         "target_tracking", young=1),
    # 1 ready at 100 %: ceil(1 x 100 / 50) = 2 = desired 2 (one warming already): hold
    Case("warming members are not added twice", 2, {0: 100, 1: 100}, 2, "target_tracking",
         young=1),
    # ceil(2 ready x 10 / 50) = 1 < 3, but a member warms up: no scale-in
    Case("no scale-in during a warm-up", 3, {0: 10, 1: 10, 2: 10}, 3, "warmup", young=1),
    # every member warms up: nothing ready reports: hold
    Case("no ready member: hold", 2, {0: 90, 1: 90}, 2, "no_metrics", young=2),
    # members without samples do not count: ceil(1 x 100 / 50) = 2
    Case("members without samples do not count", 2, {0: 100}, 2, "target_tracking"),
    # ceil(3 x 100 / 50) = 6 > max 5: clamped to 5
    Case("clamped to max", 3, {0: 100, 1: 100, 2: 100}, 5, "clamp_max", max_size=5),
    # ceil(3 x 5 / 50) = ceil(0.3) = 1 < min 2: clamped to 2
    Case("clamped to min", 3, {0: 5, 1: 5, 2: 5}, 2, "clamp_min", min_size=2),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_target_tracking(case: Case) -> None:
    state = GroupState(
        min_size=case.min_size, max_size=case.max_size, desired=case.desired,
        members=members(case.count or case.desired, young=case.young), policy=case.policy,
        recommendations=[(NOW - timedelta(seconds=ago), v) for ago, v in case.history],
        last_scale_out_at=(None if case.last_out_ago is None
                           else NOW - timedelta(seconds=case.last_out_ago)),
        schedule_checked_at=NOW - timedelta(seconds=10))
    result = decide(state, {f"s{i}": v for i, v in case.cpu.items()}, NOW)
    assert (result.desired, result.rule) == (case.expect, case.rule), result.reasons


def test_a_decision_explains_itself_with_the_metric_values() -> None:
    state = GroupState(min_size=1, max_size=10, desired=2, members=members(2), policy=POLICY)
    result = decide(state, {"s0": 80.0, "s1": 40.0}, NOW)
    assert result.details["observed"] == 60.0
    assert result.details["values"] == {"s0": 80.0, "s1": 40.0}
    assert "ceil(2 ready x 60.0 / 50) = 3" in result.reasons
    assert result.last_scale_out_at == NOW  # starts the cooldown
    assert result.recommendations == ((NOW, 3),)


def test_the_stabilisation_window_keeps_proposals_of_its_length_only() -> None:
    # Proposals 400 s (outside) and 100 s (inside) ago; the new one is appended.
    state = GroupState(min_size=1, max_size=10, desired=2, members=members(2), policy=POLICY,
                       recommendations=[(NOW - timedelta(seconds=400), 9),
                                        (NOW - timedelta(seconds=100), 2)])
    result = decide(state, {"s0": 50.0, "s1": 50.0}, NOW)
    assert result.recommendations == ((NOW - timedelta(seconds=100), 2), (NOW, 2))


SCHEDULE_CASES = [
    # 09:00 fired between the check (08:59:30) and now (09:00:10): desired 5, min 3
    ("fires in the interval", "0 9 * * *", datetime(2026, 1, 5, 8, 59, 30, tzinfo=UTC),
     datetime(2026, 1, 5, 9, 0, 10, tzinfo=UTC), (3, 10, 5), "schedule"),
    # checked at 09:00:05, the 09:00 firing was already applied: nothing changes
    ("fires once", "0 9 * * *", datetime(2026, 1, 5, 9, 0, 5, tzinfo=UTC),
     datetime(2026, 1, 5, 9, 0, 15, tzinfo=UTC), (1, 10, 2), "hold"),
    # a leader down from 08:00 to 11:00 applies the missed 09:00 firing once on return
    ("a missed firing is applied once", "0 9 * * *", datetime(2026, 1, 5, 8, 0, tzinfo=UTC),
     datetime(2026, 1, 5, 11, 0, tzinfo=UTC), (3, 10, 5), "schedule"),
    # weekdays only: 2026-01-04 is a Sunday, nothing fires
    ("weekday schedule on a Sunday", "0 9 * * 1-5", datetime(2026, 1, 4, 8, 59, tzinfo=UTC),
     datetime(2026, 1, 4, 9, 1, tzinfo=UTC), (1, 10, 2), "hold"),
]


@pytest.mark.parametrize("name,cron,checked,now,expect,rule", SCHEDULE_CASES,
                         ids=[c[0] for c in SCHEDULE_CASES])
def test_scheduled_actions(name: str, cron: str, checked: datetime, now: datetime,
                           expect: tuple[int, int, int], rule: str) -> None:
    state = GroupState(min_size=1, max_size=10, desired=2,
                       schedules=[ScheduledAction("morning", cron, min_size=3, desired=5)],
                       schedule_checked_at=checked)
    result = decide(state, {}, now)
    assert (result.min_size, result.max_size, result.desired) == expect
    assert result.rule == rule
    assert result.schedule_checked_at == now


def test_a_new_group_fires_nothing_on_its_first_pass() -> None:
    state = GroupState(min_size=1, max_size=10, desired=2,
                       schedules=[ScheduledAction("always", "* * * * *", desired=7)])
    result = decide(state, {}, NOW)
    assert result.desired == 2
    assert result.schedule_checked_at == NOW


def test_schedules_apply_in_firing_order_and_a_raised_min_lifts_max() -> None:
    # 08:00 sets max 4; 09:00 sets min 6, which lifts max to 6; desired 2 clamps up to 6.
    state = GroupState(min_size=1, max_size=10, desired=2, schedules=[
        ScheduledAction("late", "0 9 * * *", min_size=6),
        ScheduledAction("early", "0 8 * * *", max_size=4)],
        schedule_checked_at=datetime(2026, 1, 5, 7, 0, tzinfo=UTC))
    result = decide(state, {}, datetime(2026, 1, 5, 9, 30, tzinfo=UTC))
    assert (result.min_size, result.max_size, result.desired) == (6, 6, 6)
    assert result.rule == "clamp_min"


def test_target_tracking_runs_on_the_desired_a_schedule_set() -> None:
    # the schedule sets desired 4 (4 members exist); ceil(4 x 100 / 50) = 8
    state = GroupState(min_size=1, max_size=10, desired=2, members=members(4), policy=POLICY,
                       schedules=[ScheduledAction("s", "0 9 * * *", desired=4)],
                       schedule_checked_at=datetime(2026, 1, 5, 8, 59, tzinfo=UTC))
    now = datetime(2026, 1, 5, 9, 0, 30, tzinfo=UTC)
    cpu = {f"s{i}": 100.0 for i in range(4)}
    aged = [Member(m.server_id, m.seq, now - timedelta(hours=1)) for m in state.members]
    result = decide(GroupState(**{**state.__dict__, "members": aged}), cpu, now)
    assert result.desired == 8


VICTIM_CASES = [
    # oldest first: s0 (08:00) then s1 (08:01)
    ("oldest first", 4, (), "oldest_first", 2, ["s0", "s1"]),
    ("newest first", 4, (), "newest_first", 2, ["s3", "s2"]),
    # s0 protected: the next oldest instead
    ("protected members are skipped", 4, (0,), "oldest_first", 2, ["s1", "s2"]),
    # 3 of 4 protected: only s3 can go, fewer than asked
    ("never a protected member, even if fewer", 4, (0, 1, 2), "oldest_first", 2, ["s3"]),
]


@pytest.mark.parametrize("name,count,protected,policy,remove,expect", VICTIM_CASES,
                         ids=[c[0] for c in VICTIM_CASES])
def test_scale_in_victims(name: str, count: int, protected: tuple[int, ...], policy: str,
                          remove: int, expect: list[str]) -> None:
    chosen = scale_in_victims(members(count, protected=protected), remove,
                              "newest_first" if policy == "newest_first" else "oldest_first")
    assert [m.server_id for m in chosen] == expect


@pytest.mark.parametrize("expression,ok", [("0 9 * * 1-5", True), ("*/5 * * * *", True),
                                           ("0 9 * *", False), ("61 * * * *", False),
                                           ("0 9 * * * *", False), ("banana", False)])
def test_cron_expressions(expression: str, ok: bool) -> None:
    assert valid_cron(expression) is ok


def test_a_schedule_that_moves_only_a_bound_is_the_rule_when_the_policy_holds() -> None:
    # min 1 -> 2 at 08:00; 2 ready members at 50 %: inside the band, desired stays 2.
    state = GroupState(min_size=1, max_size=10, desired=2, members=members(2), policy=POLICY,
                       schedules=[ScheduledAction("office", "0 8 * * *", min_size=2)],
                       schedule_checked_at=datetime(2026, 1, 5, 7, 59, tzinfo=UTC))
    result = decide(state, {"s0": 50.0, "s1": 50.0}, datetime(2026, 1, 5, 8, 0, 5, tzinfo=UTC))
    assert (result.min_size, result.desired, result.rule) == (2, 2, "schedule")
