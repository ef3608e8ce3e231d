"""The pipeline: filter order, refusal counts, seeded tie-break, recorded decision."""

from __future__ import annotations

import heapq
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.filters.resources import ResourcesCheck, ResourcesFilter
from scheduler.framework import MEMORY_MB, HostState
from scheduler.pipeline import FILTERS, decide, largest
from tests.scheduler.builders import NOW, host, inv, request, snapshot


def test_filters_run_in_the_documented_order() -> None:
    assert [f.name for f in FILTERS] == ["status", "progress", "resources",
                                         "availability_zone", "server_group", "image",
                                         "aggregates"]


def test_refusals_add_up_per_filter_and_the_first_refusing_filter_counts() -> None:
    hosts = [
        *(host(f"full{i}", ram=inv(2048, 2048)) for i in range(7)),     # not_enough_MEMORY_MB
        *(host(f"off{i}", enabled=False, ram=inv(512)) for i in range(3)),  # disabled, not RAM
        *(host(f"mem{i}") for i in range(2)),                            # anti_affinity
    ]
    spec = request(group=("anti-affinity", {"id-mem0": 1, "id-mem1": 1}))
    decision = decide(spec, snapshot(*hosts))
    assert decision.host is None
    assert (decision.hosts, decision.candidates) == (12, 0)
    assert decision.refusals == {"not_enough_MEMORY_MB": 7, "disabled": 3, "anti_affinity": 2}
    assert decision.refused["id-off0"] == "disabled"
    # By plugin: status took the 3 disabled first, resources the 7 full, server_group the 2.
    assert decision.refusals_by_filter == {"status": 3, "resources": 7, "server_group": 2}
    assert decision.summary()["refusals_by_filter"] == {"status": 3, "resources": 7,
                                                        "server_group": 2}


# (case, hosts, request options, refusals by filter plugin name)
BY_FILTER: list[tuple[str, list[HostState], dict[str, Any], dict[str, int]]] = [
    # 2 silent (down) + 1 disabled -> status 3; the fresh one fits -> nothing else refused
    ("status only", [host("d1", last_heartbeat=NOW - 600), host("d2", last_heartbeat=None),
                     host("off", enabled=False), host("ok")], {}, {"status": 3}),
    # 8 vCPU x 4.0 = 32 < 40 -> not_enough_VCPU; a host with max_unit 16 < 40 -> unit limit;
    # both are the resources filter
    ("resources, both reasons", [host("small"), host("capped", vcpu=inv(64, max_unit=16))],
     {"vcpus": 40}, {"resources": 2}),
    # zone "az2" requested: a host in "nova" is the availability_zone filter's
    ("zone", [host("n1"), host("z", availability_zone="az2")], {"availability_zone": "az2"},
     {"availability_zone": 1}),
    # image needs aarch64: the x86_64 host is the image filter's; a missing tag is aggregates'
    ("image then aggregates", [host("x86"), host("arm", architecture="aarch64"),
                               host("arm-ssd", architecture="aarch64", aggregates={"ssd": "1"})],
     {"image_architecture": "aarch64", "extra_specs": {"ssd": "1"}},
     {"image": 1, "aggregates": 1}),
]


@pytest.mark.parametrize(("case", "hosts", "options", "expected"), BY_FILTER,
                         ids=[c[0] for c in BY_FILTER])
def test_refusals_are_counted_per_filter_plugin(case: str, hosts: list[HostState],
                                                options: dict[str, Any],
                                                expected: dict[str, int]) -> None:
    decision = decide(request(**options), snapshot(*hosts))
    assert dict(decision.refusals_by_filter) == expected, case
    # Every refused host is counted once, for the first filter that refused it.
    assert sum(decision.refusals_by_filter.values()) == len(decision.refused)
    assert set(decision.refusals_by_filter) <= {f.name for f in FILTERS}


def test_tie_break_is_seeded_by_the_request_id() -> None:
    hosts = [host(f"h{i}") for i in range(20)]  # identical: every total is 0
    picks = {rid: decide(request(request_id=rid), snapshot(*hosts)).host for rid in "abcdefgh"}
    again = {rid: decide(request(request_id=rid), snapshot(*reversed(hosts))).host
             for rid in "abcdefgh"}
    assert picks == again                     # replayable, whatever the snapshot order
    assert len({h.id for h in picks.values() if h}) > 1  # and not always the same host


def test_decision_record_lists_the_top_hosts_with_their_breakdown() -> None:
    # free RAM 16384, 12288, 8192, 4096 -> ram weights 1, 2/3, 1/3, 0; vCPU all equal -> 0
    hosts = [host(f"h{i}", ram=inv(16384, 4096 * i)) for i in range(4)]
    record = decide(request(), snapshot(*hosts)).summary()
    assert record["host_id"] == "id-h0"
    assert [t["host"] for t in record["top"]] == ["h0", "h1", "h2", "h3"]
    assert [t["ram"] for t in record["top"]] == [1.0, 0.666667, 0.333333, 0.0]
    assert record["top"][0] == {"host_id": "id-h0", "host": "h0", "total": 1.0, "ram": 1.0,
                                "cpu": 0.0}


def test_stale_hosts_are_down_relative_to_the_snapshot_clock() -> None:
    decision = decide(request(), snapshot(host("old", last_heartbeat=NOW - 120), down_after=60))
    assert decision.refusals == {"down": 1}


@settings(max_examples=200, deadline=None)
@given(totals=st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 2.0]) | st.floats(0, 2),
                       min_size=1, max_size=40),
       count=st.integers(1, 8))
def test_largest_is_nlargest_of_total_and_index(totals: list[float], count: int) -> None:
    # The ranking the tie-break and the runners-up come from: the highest totals first, equal
    # totals by the higher index first (many hosts tie in an evenly filled pool).
    assert largest(totals, count) == heapq.nlargest(
        count, zip(totals, range(len(totals)), strict=True))


def test_a_host_that_changed_between_decisions_is_checked_again() -> None:
    # The resources filter remembers the verdicts of the last host list (per request shape);
    # a host whose inventory moved in between, replaced or refreshed in place, is re-tested.
    hosts = [host(f"h{i}", ram=inv(16384, 1024 * i)) for i in range(12)]
    first = decide(request(ram_mb=8192), snapshot(*hosts))
    assert first.candidates == 9  # h9..h11: 9216 + 8192 > 16384
    hosts[0] = replace(hosts[0], inventories={**hosts[0].inventories,
                                              MEMORY_MB: inv(16384, 16000)})
    hosts[1].inventories[MEMORY_MB] = inv(16384, 12000)
    hosts[1].refresh()
    hosts[11].inventories[MEMORY_MB] = inv(16384, 0)
    hosts[11].refresh()
    again = decide(request(ram_mb=8192), snapshot(*hosts))
    assert again.refused == {"id-h0": "not_enough_MEMORY_MB", "id-h1": "not_enough_MEMORY_MB",
                             "id-h9": "not_enough_MEMORY_MB", "id-h10": "not_enough_MEMORY_MB"}
    assert again.host is not None and again.host.id == "id-h11"  # now the emptiest


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 16384),
                                st.sampled_from([512, 2048, 8192])), min_size=1, max_size=12))
def test_remembered_verdicts_equal_a_fresh_check(steps: list[tuple[int, int, int]]) -> None:
    hosts = [host(f"h{i}", ram=inv(16384, 2048 * i)) for i in range(8)]
    for index, used, ram in steps:
        hosts[index] = replace(hosts[index], inventories={**hosts[index].inventories,
                                                          MEMORY_MB: inv(16384, used)})
        check = ResourcesFilter().prepare(request(ram_mb=ram), snapshot(*hosts))
        assert isinstance(check, ResourcesCheck)
        assert check.many(hosts) == [check(h) for h in hosts]
