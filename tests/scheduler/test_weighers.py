"""Every weigher and the normalization, table-driven, with the arithmetic in comments."""

from __future__ import annotations

import re

import pytest

from scheduler.framework import HostState, RequestSpec, Weigher
from scheduler.pipeline import WEIGHER_NAMES, Multipliers, UnknownWeigher, decide, normalize
from scheduler.weighers.resources import cpu_weigher, ram_weigher
from scheduler.weighers.server_group import SoftAffinityWeigher, SoftAntiAffinityWeigher
from tests.scheduler.builders import host, inv, request, snapshot

RAW: list[tuple[str, Weigher, HostState, RequestSpec, float]] = [
    # free RAM = 16384 * 1.0 - 4096
    ("ram: free MB", ram_weigher(), host("a", ram=inv(16384, 4096)), request(), 12288.0),
    # free RAM = (16384 - 1024) * 1.5 - 0
    ("ram: reserved and ratio", ram_weigher(),
     host("a", ram=inv(16384, reserved=1024, ratio=1.5)), request(), 23040.0),
    # free vCPU = 8 * 4.0 - 10
    ("cpu: free vCPU", cpu_weigher(), host("a", vcpu=inv(8, 10, ratio=4.0)), request(), 22.0),
    # 2 members on this host
    ("soft affinity: members here", SoftAffinityWeigher(), host("a"),
     request(group=("soft-affinity", {"id-a": 2})), 2.0),
    # minus 3 members on this host
    ("soft anti-affinity: minus members here", SoftAntiAffinityWeigher(), host("a"),
     request(group=("soft-anti-affinity", {"id-a": 3})), -3.0),
    ("soft anti-affinity: none here", SoftAntiAffinityWeigher(), host("b"),
     request(group=("soft-anti-affinity", {"id-a": 3})), 0.0),
]


@pytest.mark.parametrize(("case", "weigher", "h", "spec", "expected"), RAW,
                         ids=[c[0] for c in RAW])
def test_raw_score(case: str, weigher: Weigher, h: HostState, spec: RequestSpec,
                   expected: float) -> None:
    score = weigher.prepare(spec)
    assert score is not None
    assert score(h) == pytest.approx(expected), case


def test_group_weighers_apply_only_to_their_policy() -> None:
    assert SoftAffinityWeigher().prepare(request()) is None
    assert SoftAffinityWeigher().prepare(request(group=("soft-anti-affinity", {}))) is None
    assert SoftAntiAffinityWeigher().prepare(request(group=("anti-affinity", {}))) is None


@pytest.mark.parametrize(("values", "expected"), [
    # (v - min) / (max - min): min 0, max 4096
    ([0.0, 1024.0, 4096.0], [0.0, 0.25, 1.0]),
    # negative raw scores: min -3, max 0 -> (-3+3)/3, (-1+3)/3, (0+3)/3
    ([-3.0, -1.0, 0.0], [0.0, 2 / 3, 1.0]),
    # all equal: no opinion
    ([7.0, 7.0], [0.0, 0.0]),
])
def test_normalize(values: list[float], expected: list[float]) -> None:
    assert normalize(values) == pytest.approx(expected)


# Two hosts; a: 12288 MB free, 30 vCPU free; b: 4096 MB free, 32 vCPU free.
A = host("a", ram=inv(16384, 4096), vcpu=inv(8, 2, ratio=4.0))
B = host("b", ram=inv(16384, 12288), vcpu=inv(8, 0, ratio=4.0))

COMBINED: list[tuple[str, Multipliers, str, dict[str, float]]] = [
    # ram normalized a=1, b=0; cpu a=0, b=1. ram 1.0 + cpu 0.5: a = 1.0, b = 0.5
    ("spread, RAM first", Multipliers({"ram": 1.0, "cpu": 0.5}), "a", {"a": 1.0, "b": 0.5}),
    # ram 0.5 + cpu 1.0: a = 0.5, b = 1.0
    ("spread, vCPU first", Multipliers({"ram": 0.5, "cpu": 1.0}), "b", {"a": 0.5, "b": 1.0}),
    # pack: ram -1.0, cpu 0: a = -1.0, b = 0.0 -> the fuller host b
    ("pack by RAM", Multipliers({"ram": -1.0, "cpu": 0.0}), "b", {"a": -1.0, "b": 0.0}),
]


@pytest.mark.parametrize(("case", "mult", "winner", "totals"), COMBINED,
                         ids=[c[0] for c in COMBINED])
def test_weights_combine_with_multipliers(case: str, mult: Multipliers, winner: str,
                                          totals: dict[str, float]) -> None:
    decision = decide(request(), snapshot(A, B), mult)
    assert decision.host is not None and decision.host.name == winner, case
    assert {h.name: decision.scores[h.id]["total"] for h in decision.ranked} == \
        pytest.approx(totals)


def test_soft_anti_affinity_outweighs_free_ram_when_multiplied() -> None:
    # a has more free RAM (ram: a=1, b=0) but a member (soft anti: a=0, b=1).
    # ram 1.0 + soft_anti 2.0: a = 1.0, b = 2.0 -> b
    spec = request(group=("soft-anti-affinity", {"id-a": 1}))
    decision = decide(spec, snapshot(A, B),
                      Multipliers({"ram": 1.0, "cpu": 0.0, "soft_anti_affinity": 2.0}))
    assert decision.host is not None and decision.host.name == "b"


def test_soft_affinity_prefers_the_members_host() -> None:
    # a has more free RAM (ram: a=1, b=0); b has 2 members (soft: a=0, b=1).
    # ram 1.0 + soft 2.0: a = 1.0, b = 2.0 -> b
    spec = request(group=("soft-affinity", {"id-b": 2}))
    decision = decide(spec, snapshot(A, B),
                      Multipliers({"ram": 1.0, "cpu": 0.0, "soft_affinity": 2.0}))
    assert decision.host is not None and decision.host.name == "b"


# (case, multipliers given, default, the error names...) for a configuration that must fail
BAD_MULTIPLIERS: list[tuple[str, dict[str, float], float | None, str]] = [
    # a typo: "rma" is no weigher, whatever the default
    ("unknown name", {"rma": 2.0}, 1.0, "unknown weigher(s) rma"),
    # no default: every weigher needs its own multiplier; cpu and the group ones are missing
    ("no default, some missing", {"ram": 1.0}, None,
     "no multiplier for weigher(s) cpu, soft_affinity, soft_anti_affinity"),
]


@pytest.mark.parametrize(("case", "given", "default", "message"), BAD_MULTIPLIERS,
                         ids=[c[0] for c in BAD_MULTIPLIERS])
def test_multipliers_refuse_unknown_or_missing_weighers(case: str, given: dict[str, float],
                                                        default: float | None,
                                                        message: str) -> None:
    with pytest.raises(UnknownWeigher, match=re.escape(message)):
        Multipliers(given, default=default)


def test_multipliers_default_fills_the_weighers_not_named() -> None:
    # ram named 2.0; cpu, soft_affinity, soft_anti_affinity take the default 0.5
    mult = Multipliers({"ram": 2.0}, default=0.5)
    assert mult.as_dict() == {"ram": 2.0, "cpu": 0.5, "soft_affinity": 0.5,
                              "soft_anti_affinity": 0.5}
    assert set(mult.as_dict()) == set(WEIGHER_NAMES)
    with pytest.raises(UnknownWeigher):
        mult.of("nope")
