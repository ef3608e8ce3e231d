"""Guest metrics through HTTP: agents' batches in, rates out, one project's servers only."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from sqlalchemy import func, select

from api.config import Settings
from api.guest_metrics.service import recent_average
from api.main import create_app
from api.models import GuestMetricRollup
from tests.agent_factories import EnrolledHost, db, enroll_host, make_server
from tests.factories import Account, make_account

GIB = 1024**3


def _batch(at: datetime, *samples: dict[str, Any]) -> dict[str, Any]:
    return {"at": at.isoformat(), "samples": list(samples)}


def _sample(server_id: str, cpu_s: float = 0, **counters: int) -> dict[str, Any]:
    return {"server_id": server_id, "cpu_time_ns": int(cpu_s * 1e9)} | counters


def _report(client: TestClient, host: EnrolledHost, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/agent/guest-metrics", headers=host.headers, json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def _setup(client: TestClient, admin: dict[str, str],
           vcpus: int = 2) -> tuple[Account, EnrolledHost, str]:
    owner = make_account(client, admin)
    host = enroll_host(client, admin)
    server = make_server(client, owner.project_id, host.id, status="ACTIVE", task_state=None,
                         vcpus=vcpus)
    return owner, host, server


def _base() -> datetime:
    # Samples in the recent past, on a 60 s boundary so every level's buckets line up.
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    return now - timedelta(seconds=now.second)


def test_rates_come_from_consecutive_counters_per_vcpu(client: TestClient,
                                                       admin: dict[str, str]) -> None:
    owner, host, server = _setup(client, admin, vcpus=2)
    t0 = _base()
    # The first batch only sets the baseline; then 10 s with 15 s of CPU on 2 vCPUs:
    # 15 / (10 x 2) = 75 %; 20 MB read in 10 s = 2 MB/s; memory 1 GiB - 256 MiB unused.
    assert _report(client, host, _batch(t0, _sample(server, 100)))["accepted"] == 1
    _report(client, host, _batch(t0 + timedelta(seconds=10), _sample(
        server, 115, disk_read_bytes=20_000_000, net_tx_bytes=5_000,
        memory_kib=1024 * 1024, memory_unused_kib=256 * 1024)))
    r = client.get(f"/v1/servers/{server}/metrics", headers=owner.headers, params={
        "name": "cpu_util", "start": t0.isoformat(),
        "end": (t0 + timedelta(seconds=60)).isoformat(), "step": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unit"] == "%" and body["step"] == 10
    assert [(p["value"], p["samples"]) for p in body["points"]] == [(75.0, 1)]
    assert body["points"][0]["at"].startswith((t0 + timedelta(seconds=10)).strftime(
        "%Y-%m-%dT%H:%M:%S"))
    for name, value in (("disk_read_bps", 2_000_000.0), ("net_tx_bps", 500.0),
                        ("memory_used_mb", 768.0), ("disk_write_bps", 0.0)):
        r = client.get(f"/v1/servers/{server}/metrics", headers=owner.headers,
                       params={"name": name, "start": t0.isoformat()})
        assert [p["value"] for p in r.json()["points"]] == [value], name


def test_recent_average_is_per_server_and_skips_servers_without_samples(
        client: TestClient, admin: dict[str, str]) -> None:
    owner, host, busy = _setup(client, admin, vcpus=1)
    idle = make_server(client, owner.project_id, host.id, status="ACTIVE", task_state=None)
    silent = make_server(client, owner.project_id, host.id, status="ACTIVE", task_state=None)
    t0 = datetime.now(UTC) - timedelta(seconds=40)
    # busy: 9 s of CPU per 10 s on 1 vCPU = 90 %, then 5 s per 10 s = 50 %: average 70 %.
    for i, cpu in enumerate((0, 9, 14)):
        _report(client, host, _batch(t0 + timedelta(seconds=10 * i), _sample(busy, cpu),
                                     _sample(idle, 0)))
    now = datetime.now(UTC)
    with db(client) as session:
        found = recent_average(session, [busy, idle, silent], "cpu_util", 120, now)
    assert found == {busy: 70.0, idle: 0.0}


def test_batches_refuse_other_hosts_servers_per_server(client: TestClient,
                                                       admin: dict[str, str]) -> None:
    owner, host, mine = _setup(client, admin)
    other_host = enroll_host(client, admin)
    theirs = make_server(client, owner.project_id, other_host.id, status="ACTIVE",
                         task_state=None)
    t0 = _base()
    for i in range(2):
        out = _report(client, host, _batch(t0 + timedelta(seconds=10 * i),
                                           _sample(mine, 5 * i), _sample(theirs, 8 * i),
                                           _sample("no-such-server", 1)))
        assert out == {"accepted": 1, "ignored": sorted([theirs, "no-such-server"])}
    with db(client) as session:
        found = recent_average(session, [mine, theirs], "cpu_util", 3600,
                               datetime.now(UTC))
    assert list(found) == [mine]  # the other host's server got nothing


def test_a_repeated_or_older_batch_adds_no_sample(client: TestClient,
                                                  admin: dict[str, str]) -> None:
    owner, host, server = _setup(client, admin, vcpus=1)
    t0 = _base()
    _report(client, host, _batch(t0, _sample(server, 0)))
    second = _batch(t0 + timedelta(seconds=10), _sample(server, 2))
    _report(client, host, second)
    _report(client, host, second)  # a retry of the same batch
    _report(client, host, _batch(t0 + timedelta(seconds=5), _sample(server, 1)))
    r = client.get(f"/v1/servers/{server}/metrics", headers=owner.headers,
                   params={"start": t0.isoformat(), "step": 60})
    assert [(p["value"], p["samples"]) for p in r.json()["points"]] == [(20.0, 1)]


def test_another_projects_server_metrics_are_not_found(client: TestClient,
                                                       admin: dict[str, str]) -> None:
    _, _, server = _setup(client, admin)
    stranger = make_account(client, admin)
    r = client.get(f"/v1/servers/{server}/metrics", headers=stranger.headers)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "server_not_found"
    assert client.get(f"/v1/servers/{server}/metrics", headers=admin).status_code == 200


def test_unknown_metric_and_bad_ranges_are_explained(client: TestClient,
                                                     admin: dict[str, str]) -> None:
    owner, _, server = _setup(client, admin)
    url = f"/v1/servers/{server}/metrics"
    r = client.get(url, headers=owner.headers, params={"name": "cpu_temperature"})
    assert r.status_code == 422 and r.json()["code"] == "unknown_metric"
    assert "cpu_util" in r.json()["names"]
    now = datetime.now(UTC)
    for params in ({"start": now.isoformat(), "end": (now - timedelta(hours=1)).isoformat()},
                   {"start": (now - timedelta(days=60)).isoformat(), "step": 3600}):
        r = client.get(url, headers=owner.headers, params=params)
        assert r.status_code == 422, params
        assert r.json()["code"] == "invalid_metric_range"
    r = client.get(url, headers=owner.headers, params={"step": 0})
    assert r.status_code == 422 and r.json()["code"] == "invalid_input"


def test_a_batch_with_bad_fields_is_refused_whole(client: TestClient,
                                                  admin: dict[str, str]) -> None:
    _, host, server = _setup(client, admin)
    for body in ({"at": "2026-01-01T00:00:00", "samples": []},  # no time zone
                 _batch(_base(), {"server_id": server, "cpu_time_ns": -1}),
                 _batch(_base(), {"server_id": server, "gpu": 1})):
        r = client.post("/v1/agent/guest-metrics", headers=host.headers, json=body)
        assert r.status_code == 422, body
    r = client.post("/v1/agent/guest-metrics", json=_batch(_base()))
    assert r.status_code == 401


# ------------------------------------------------------------------ rollups and retention

# One server's report: (ms since the previous report, CPU ms used, bytes read meanwhile).
_steps = st.lists(st.tuples(st.integers(1, 95_000), st.integers(0, 200_000),
                            st.integers(0, 10**9)), min_size=1, max_size=15)


@pytest.fixture(scope="module")
def tenant_host(client: TestClient, admin: dict[str, str]) -> tuple[Account, EnrolledHost]:
    return make_account(client, admin), enroll_host(client, admin)


@given(steps=_steps, restart_at=st.integers(0, 20))
@examples(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_rollup_level_averages_exactly_the_raw_samples(
        client: TestClient, tenant_host: tuple[Account, EnrolledHost],
        steps: list[tuple[int, int, int]], restart_at: int) -> None:
    owner, host = tenant_host
    server = make_server(client, owner.project_id, host.id, status="ACTIVE", task_state=None,
                         vcpus=2)
    # Reports end at most a few seconds before now, so every level still keeps them all.
    span = sum(gap for gap, _, _ in steps)
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(milliseconds=span + 5_000)
    cpu_ns, read, expected = 0, 0, []
    _report(client, host, _batch(t, _sample(server)))
    for i, (gap_ms, cpu_ms, read_bytes) in enumerate(steps):
        t += timedelta(milliseconds=gap_ms)
        if i == restart_at and (cpu_ns or read):
            # The domain restarted: its counters start again from zero, which gives no
            # sample (a counter went backwards) but the next baseline.
            cpu_ns, read = 0, 0
        else:
            cpu_ns, read = cpu_ns + cpu_ms * 10**6, read + read_bytes
            # The raw sample: CPU over elapsed time x 2 vCPUs (capped at 100 %), bytes/s.
            util = min(100.0, cpu_ms * 10**6 / (gap_ms * 10**6 * 2) * 100)
            expected.append((t, util, read_bytes / (gap_ms / 1000)))
        _report(client, host, _batch(t, _sample(server, cpu_time_ns=cpu_ns,
                                                disk_read_bytes=read)))
    start = t - timedelta(milliseconds=span + 1000)
    for step in (10, 60, 3600):
        buckets: dict[int, list[tuple[float, float]]] = {}
        for at, util, bps in expected:
            epoch = int(at.timestamp())
            buckets.setdefault(epoch - epoch % step, []).append((util, bps))
        for name, index in (("cpu_util", 0), ("disk_read_bps", 1)):
            r = client.get(f"/v1/servers/{server}/metrics", headers=owner.headers, params={
                "name": name, "step": step, "start": start.isoformat(),
                "end": (t + timedelta(seconds=1)).isoformat()})
            assert r.status_code == 200, r.text
            assert r.json()["step"] == step
            got = [(p["at"], p["samples"], p["value"]) for p in r.json()["points"]]
            want = [(datetime.fromtimestamp(b, UTC).isoformat().replace("+00:00", "Z"),
                     len(v), sum(x[index] for x in v) / len(v))
                    for b, v in sorted(buckets.items())]
            assert [g[:2] for g in got] == [w[:2] for w in want], (name, step)
            for g, w in zip(got, want, strict=True):
                assert math.isclose(g[2], w[2], rel_tol=1e-9, abs_tol=1e-9), (name, step, g, w)


def _rollup_rows(client: TestClient, server_ids: list[str]) -> dict[tuple[str, int], int]:
    with db(client) as session:
        rows = session.execute(
            select(GuestMetricRollup.server_id, GuestMetricRollup.step, func.count())
            .where(GuestMetricRollup.server_id.in_(server_ids))
            .group_by(GuestMetricRollup.server_id, GuestMetricRollup.step))
        return {(sid, step): n for sid, step, n in rows}


def test_retention_bounds_the_rollups_whatever_was_reported(settings: Settings,
                                                            admin: dict[str, str]) -> None:
    # Levels of 1 s kept 20 s and 5 s kept 60 s, pruned on every batch: after 150 s of
    # reports each server holds at most 20 (+1 partial) and 12 (+1) buckets.
    short = settings.model_copy(update={"guest_metrics_levels": [(1, 20), (5, 60)],
                                        "guest_metrics_prune_interval_seconds": 1e-9})
    with TestClient(create_app(short)) as small:
        owner, host, first = _setup(small, admin, vcpus=1)
        second = make_server(small, owner.project_id, host.id, status="ACTIVE",
                             task_state=None)
        end = datetime.now(UTC).replace(microsecond=0)
        for i in range(150, -1, -1):
            _report(small, host, _batch(end - timedelta(seconds=i), _sample(first, 150 - i),
                                        _sample(second, (150 - i) / 2)))
        rows = _rollup_rows(small, [first, second])
        assert {key: n <= (21 if key[1] == 1 else 13) for key, n in rows.items()} == {
            (sid, step): True for sid in (first, second) for step in (1, 5)}
        # What is kept is the recent end: the last 10 s, at 1 and 1/2 s of CPU per second.
        with db(small) as session:
            recent = recent_average(session, [first, second], "cpu_util", 10, end,
                                    settings=short)
        assert recent == {first: 100.0, second: 50.0}


def _series(exposition: str, family: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in exposition.splitlines() if line.startswith(family + "{")}


def test_admins_see_per_server_gauges_capped_in_number(settings: Settings, client: TestClient,
                                                       admin: dict[str, str]) -> None:
    owner, host, half = _setup(client, admin, vcpus=1)
    full = make_server(client, owner.project_id, host.id, status="ACTIVE", task_state=None)
    # A sample every 2 s over the last 30 s: whichever 10 s bucket is the last complete one
    # when /metrics is read, both servers have samples there (1/2 and 1 s of CPU per s).
    end = datetime.now(UTC)
    for i in range(15, -1, -1):
        _report(client, host, _batch(end - timedelta(seconds=2 * i),
                                     _sample(half, 15 - i), _sample(full, 2 * (15 - i))))
    r = client.get("/metrics", headers=admin)
    assert r.status_code == 200
    cpu = _series(r.text, "minicloud_guest_cpu_util")
    labels = 'minicloud_guest_cpu_util{{project_id="{}",server_id="{}"}}'
    assert cpu[labels.format(owner.project_id, half)] == 50.0
    assert cpu[labels.format(owner.project_id, full)] == 100.0
    assert client.get("/metrics", headers=owner.headers).status_code == 403
    capped = settings.model_copy(update={"guest_metrics_exposed_servers": 1})
    with TestClient(create_app(capped)) as small:
        text = small.get("/metrics", headers=admin).text
    assert len(_series(text, "minicloud_guest_cpu_util")) == 1
    assert len(_series(text, "minicloud_guest_net_rx_bps")) == 1
    reporting = [line for line in text.splitlines()
                 if line.startswith("minicloud_guest_servers_reporting ")]
    assert float(reporting[0].split()[1]) >= 2


def test_ranges_at_the_ends_of_time_are_refused_not_crashed(client: TestClient,
                                                            admin: dict[str, str]) -> None:
    owner, _, server = _setup(client, admin)
    url = f"/v1/servers/{server}/metrics"
    for params in ({"end": "0001-01-01T00:00:00Z"},
                   {"start": "0001-01-01T00:00:00Z", "end": "9999-12-31T23:59:59Z"},
                   {"start": "9999-12-31T23:59:58Z", "end": "9999-12-31T23:59:59Z",
                    "step": 3600}):
        r = client.get(url, headers=owner.headers, params=params)
        assert r.status_code in (200, 422), (params, r.text)
        if r.status_code == 422:
            assert r.json()["code"] == "invalid_metric_range"
    r = client.get(url, headers=owner.headers, params={"start": "9999-12-31T23:59:58Z",
                                                       "end": "9999-12-31T23:59:59Z"})
    assert r.status_code == 200 and r.json()["points"] == []


def test_a_pruning_backlog_is_deleted_in_bounded_steps(settings: Settings,
                                                       admin: dict[str, str]) -> None:
    # Reported under a long retention, then pruned under a short one with at most 7 rows per
    # statement: each batch deletes 7 old buckets, until the bound holds again.
    long = settings.model_copy(update={"guest_metrics_levels": [(1, 1000), (5, 1000)]})
    short = settings.model_copy(update={"guest_metrics_levels": [(1, 20), (5, 60)],
                                        "guest_metrics_prune_interval_seconds": 1e-9,
                                        "guest_metrics_prune_batch": 7})
    end = datetime.now(UTC).replace(microsecond=0)
    with TestClient(create_app(long)) as before:
        _, host, server = _setup(before, admin, vcpus=1)
        for i in range(100, 29, -1):
            _report(before, host, _batch(end - timedelta(seconds=i), _sample(server, 100 - i)))
        levels = _rollup_rows(before, [server])
    backlog = levels[(server, 1)]
    assert backlog == 70
    with TestClient(create_app(short)) as after:
        _report(after, host, _batch(end - timedelta(seconds=29), _sample(server, 71)))
        # One report prunes one bounded batch: at most 7 rows per level (one statement each;
        # how many of each level are past retention by now depends on the clock), and some.
        # The report added one row per level or none (a bucket that already existed), so
        # before + 1 - after is the rows deleted, or one more.
        now_rows = _rollup_rows(after, [server])
        pruned = {step: levels[(server, step)] + 1 - now_rows[(server, step)]
                  for step in (1, 5)}
        assert all(0 <= n <= 7 + 1 for n in pruned.values()), pruned
        assert sum(pruned.values()) >= 1, pruned
        for i in range(28, -1, -1):
            _report(after, host, _batch(end - timedelta(seconds=i), _sample(server, 100 - i)))
        rows = _rollup_rows(after, [server])
    assert rows[(server, 1)] <= 21 and rows[(server, 5)] <= 13, rows
