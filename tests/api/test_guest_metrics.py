"""Guest metrics through HTTP: agents' batches in, rates out, one project's servers only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from api.guest_metrics.service import recent_average
from tests.agent_factories import EnrolledHost, db, enroll_host, make_server
from tests.factories import Account, make_account

GIB = 1024**3


def _batch(at: datetime, *samples: dict[str, Any]) -> dict[str, Any]:
    return {"at": at.isoformat(), "samples": list(samples)}


def _sample(server_id: str, cpu_s: float = 0, **counters: int) -> dict[str, Any]:
    return {"server_id": server_id, "cpu_time_ns": int(cpu_s * 1e9), **counters}


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
