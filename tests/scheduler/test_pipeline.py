"""The pipeline: filter order, refusal counts, seeded tie-break, recorded decision."""

from __future__ import annotations

from scheduler.pipeline import FILTERS, decide
from tests.scheduler.builders import NOW, host, inv, request, snapshot


def test_filters_run_in_the_documented_order() -> None:
    assert [f.name for f in FILTERS] == ["status", "resources", "availability_zone",
                                         "server_group", "image", "aggregates"]


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
